"""hloc's HDF5 files (cvg/Hierarchical-Localization): read them as our stores, write them.

hloc's layout, as its ``extract_features``, ``match_features`` and ``pairs_from_retrieval``
write and read it (no root attributes, no schema version):

features    ``/<image name>/`` per image, nested on "/" (``a/b.jpg`` is group ``b.jpg`` in
            group ``a``): ``keypoints`` N×2 (float16 by default, pixel centre at integer
            coordinates, as ours), ``descriptors`` **D×N**, ``scores`` or
            ``keypoint_scores`` N, ``image_size`` (w, h); optional ``scales``/``oris``.
matches     ``/<name0 with "/" as "-">/<name1 likewise>/`` per pair (older files: one flat
            group ``<name0>_<name1>``, same replacement), in either order: ``matches0`` N0
            (int16 by default; the index of the matched keypoint of name1, -1 = unmatched)
            and ``matching_scores0`` N0.
global      ``/<image name>/global_descriptor`` D per image.

The layout is detected from a file's structure (no sfmfeat root attributes, and the
dataset names above), never from its name. The store's readers (``FeatureReader``,
``MatchReader``, ``GlobalDescriptorReader``) open an hloc file as one of the adapters here,
so every command that reads those files reads hloc's too. Conversions on read:

- descriptors are transposed to N×D. The orientation is known by the format: hloc always
  stores D×N, so an array whose second axis has the keypoint count is D×N, also when
  N == D. An array N×D (first axis N, second not) was not written in hloc's layout and is
  refused, never transposed by guess.
- float16 keypoints are widened to float32, with one logged note per file giving the
  rounding step hloc's half precision left (up to 1 px for coordinates of 1024-2047 px).
- ``matches0`` becomes K×2 index pairs (column 0 indexes the first name's keypoints); a
  value below -1 is refused as corrupt. A pair is found under both orders and both
  separators, as hloc's ``find_pair`` does.
- missing scores read as ones; ``scales``/``oris`` are not read (their meaning varies by
  hloc extractor and differs from ours: OpenCV keypoint size, degrees).

hloc files carry no config. Each is a foreign, fixed config: method ``hloc``, config hash
the BLAKE2b of the file's bytes, so a file changed since (another hloc run appending to it)
never passes for the one matches were made from. Our writers never add records to a
foreign file: they refuse it (``--overwrite`` replaces it).

Writing (``export_features``, ``export_matches``, ``export_global_descriptors``) gives the
layout above, atomically (temporary file, then rename), with float32 keypoints and
descriptors and int32 ``matches0`` unless asked for hloc's half precision / int16; int16
is refused, naming the pair, when a keypoint index exceeds 32767.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import StoreError
from .features import Features
from .localization.retrieval import GlobalDescriptorReader
from .pairs import unique_pairs
from .store import (FeatureReader, FeatureStores, MatchReader, StoreReader, _open_h5,
                    check_matches_lineage, image_fingerprint, keypoints_digest)

logger = logging.getLogger(__name__)

METHOD = "hloc"
FEATURES, MATCHES, GLOBAL = "features", "matches", "global_descriptors"
# the datasets that make a group an item of each kind of hloc file
ITEM_DATASETS = {FEATURES: "keypoints", MATCHES: "matches0", GLOBAL: "global_descriptor"}
_SCORE_DATASETS = ("scores", "keypoint_scores")
INT16_MAX = np.iinfo(np.int16).max


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's key of a pair: both names with "/" replaced by "-", joined by ``separator``
    ("/" today, "_" in older files)."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def layout_kinds(handle: h5py.File) -> frozenset[str]:
    """The kinds of hloc file ``handle`` is (empty: it is not in hloc's layout). A file made
    by sfmfeat (root attribute ``kind``) is never hloc's."""
    if "kind" in handle.attrs or "schema_version" in handle.attrs:
        return frozenset()
    found: set[str] = set()

    def visit(_: str, obj: Any) -> bool | None:
        if isinstance(obj, h5py.Group):
            found.update(kind for kind, dataset in ITEM_DATASETS.items()
                         if isinstance(obj.get(dataset), h5py.Dataset))
        return True if found else None   # the first item decides

    handle.visititems(visit)
    return frozenset(found)


def detect(path: str | Path) -> frozenset[str]:
    """The hloc kinds of the file at ``path`` (empty when it is not an hloc file or not a
    readable HDF5 file: the store's reader then reports why)."""
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return frozenset()
    try:
        with h5py.File(path, "r") as handle:
            return layout_kinds(handle)
    except OSError:
        return frozenset()


def file_kind(path: str | Path) -> tuple[str, bool]:
    """(kind, is_hloc) of a features, matches or global-descriptor file of either layout
    (an hloc file holding local and global features counts as features)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist")
    kinds = detect(path)
    if kinds:
        return next(k for k in ITEM_DATASETS if k in kinds), True
    with _open_h5(path) as handle:
        kind = handle.attrs.get("kind")
    if kind is None:
        raise StoreError(f"{path} is neither an sfmfeat store (no 'kind' attribute) nor an "
                         "hloc-layout file (no group holding 'keypoints', 'matches0' or "
                         "'global_descriptor')")
    return str(kind), False


def reader_class(base: type[StoreReader], path: str | Path) -> type[StoreReader] | None:
    """The hloc adapter to open ``path`` with in place of ``base`` (None: not an hloc file).
    A file of another hloc kind is refused, naming both kinds."""
    kinds = detect(path)
    if not kinds:
        return None
    adapters = {FEATURES: (FeatureReader, HlocFeatureReader),
                MATCHES: (MatchReader, HlocMatchReader),
                GLOBAL: (GlobalDescriptorReader, HlocGlobalDescriptorReader)}
    for kind, (ours, adapter) in adapters.items():
        if issubclass(base, ours):
            if kind not in kinds:
                raise StoreError(f"{path} is an hloc {' and '.join(sorted(kinds))} file, not "
                                 f"{kind.replace('_', ' ')}")
            return adapter
    return None


def foreign_file_error(path: Path) -> StoreError:
    return StoreError(f"{path} is an hloc-layout file: sfmfeat never adds its records to a "
                      "file another tool wrote. Write to a new file, or pass --overwrite to "
                      "replace it (convert with `sfmfeat export hloc` when hloc must read ours)")


class _HlocFile:
    """What the three adapters share: the open file, its identity and its item groups."""

    path: Path
    kind: str

    def _open(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle = _open_h5(self.path)
        self.method = METHOD
        self.spec = None
        self.config = {"layout": "hloc", "file": str(self.path)}
        self._config_hash: str | None = None
        self._items: set[str] | None = None

    @property
    def config_hash(self) -> str:   # type: ignore[override]
        """hloc files carry no config: the BLAKE2b of the file stands in for one."""
        if self._config_hash is None:
            self._config_hash = f"hloc-{image_fingerprint(self.path)['blake2b']}"
        return self._config_hash

    def _item_groups(self) -> set[str]:
        """The HDF5 paths of the groups holding this kind's item dataset (for features and
        global descriptors: the image names)."""
        if self._items is None:
            dataset = ITEM_DATASETS[self.kind]
            items: set[str] = set()

            def visit(name: str, obj: Any) -> None:
                group, _, leaf = name.rpartition("/")
                if group and leaf == dataset and isinstance(obj, h5py.Dataset):
                    items.add(group)
            self._handle.visititems(visit)
            self._items = items
        return self._items

    def _read(self, group_path: str, field: str, what: str) -> np.ndarray:
        try:
            return self._handle[group_path][field][()]
        except (OSError, KeyError) as err:
            raise StoreError(f"hloc file {self.path}: the {field} of {what} are unreadable "
                             f"({err}); the file may be truncated or an hloc run was "
                             "interrupted while writing it: rerun hloc on it") from None

    def close(self) -> None:
        self._handle.close()


class HlocFeatureReader(_HlocFile, FeatureReader):
    """An hloc features file read as our features store (see the module doc)."""

    kind = FEATURES

    def __init__(self, path: str | Path) -> None:
        self._open(path)
        self._noted_half = False

    def names(self) -> list[str]:
        return sorted(self._item_groups())

    def __contains__(self, name: str) -> bool:
        return name in self._item_groups()

    def _group_path(self, name: str) -> str:
        if name not in self._item_groups():
            raise StoreError(f"hloc file {self.path} has no features for image {name!r}")
        return name

    def keypoints(self, name: str) -> np.ndarray:
        raw = self._read(self._group_path(name), "keypoints", repr(name))
        if raw.ndim != 2 or raw.shape[1] != 2:
            raise StoreError(f"hloc file {self.path}: the keypoints of {name!r} have shape "
                             f"{raw.shape}, not N×2")
        if raw.dtype == np.float16 and not self._noted_half:
            self._noted_half = True
            step = float(np.spacing(np.abs(raw).max())) if len(raw) else 0.0
            logger.info("%s: hloc stored the keypoints in float16 (half precision, the "
                        "default of its extract_features); widened to float32, they keep "
                        "hloc's rounding: steps of %.3g px at the largest coordinate of %s",
                        self.path, step, name)
        return raw.astype(np.float32)

    def read(self, name: str) -> Features:
        group = self._group_path(name)
        keypoints = self.keypoints(name)
        present = self._handle[group]
        if "descriptors" not in present:
            raise StoreError(f"hloc file {self.path}: image {name!r} has keypoints but no "
                             "descriptors (a keypoints-only file, e.g. from hloc's "
                             "match_dense): it can be imported into a database, not matched")
        descriptors = self._read(group, "descriptors", repr(name))
        count = len(keypoints)
        if descriptors.ndim != 2:
            raise StoreError(f"hloc file {self.path}: the descriptors of {name!r} have shape "
                             f"{descriptors.shape}, not D×N")
        if descriptors.shape[1] == count:   # D×N by format, also when D == N
            descriptors = descriptors.T
        elif descriptors.shape[0] == count:
            raise StoreError(
                f"hloc file {self.path}: the descriptors of {name!r} are {count}×"
                f"{descriptors.shape[1]} (N×D) but hloc's layout stores them D×N: the file "
                "was not written in hloc's layout; transpose them (D×N) or write our store")
        else:
            raise StoreError(f"hloc file {self.path}: {count} keypoints but descriptors of "
                             f"shape {descriptors.shape} for {name!r}")
        score_field = next((f for f in _SCORE_DATASETS if f in present), None)
        scores = (self._read(group, score_field, repr(name)) if score_field
                  else np.ones(count, np.float32))
        return Features(keypoints=keypoints, scores=scores,
                        descriptors=descriptors.astype(np.float32),
                        image_size=self.image_size(name))

    def image_size(self, name: str) -> tuple[int, int]:
        group = self._group_path(name)
        if "image_size" not in self._handle[group]:
            raise StoreError(f"hloc file {self.path}: image {name!r} has no image_size")
        width, height = np.asarray(self._read(group, "image_size", repr(name))).reshape(-1)[:2]
        return int(width), int(height)

    def keypoints_digest(self, name: str) -> str:
        return keypoints_digest(self.keypoints(name))

    def fingerprint(self, name: str) -> dict[str, Any] | None:
        return None   # hloc records no image content


class HlocMatchReader(_HlocFile, MatchReader):
    """An hloc matches file read as our matches store (see the module doc)."""

    kind = MATCHES

    def __init__(self, path: str | Path) -> None:
        self._open(path)
        self.features_config_hash = None   # hloc does not record which features it matched

    def pairs(self) -> list[tuple[str, str]]:
        """The pairs under today's nested keys, as stored: names with "/" as "-" (hloc's
        keys lose the folders; look pairs up by their real names with ``read``)."""
        return sorted(tuple(group.split("/")) for group in self._item_groups()
                      if group.count("/") == 1)

    def _find(self, name0: str, name1: str) -> tuple[str, bool] | None:
        groups = self._item_groups()
        for separator in ("/", "_"):
            for first, second, swapped in ((name0, name1, False), (name1, name0, True)):
                key = names_to_pair(first, second, separator)
                if key in groups:
                    return key, swapped
        return None

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return self._find(*pair) is not None

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        found = self._find(name0, name1)
        if found is None:
            raise StoreError(f"hloc file {self.path} has no matches for {name0!r} - {name1!r} "
                             f"(looked for {names_to_pair(name0, name1)!r} in both orders and "
                             "with hloc's old '_' separator)")
        key, swapped = found
        what = f"{name0!r} - {name1!r}"
        matches0 = np.asarray(self._read(key, "matches0", what)).reshape(-1)
        if not np.issubdtype(matches0.dtype, np.integer):
            raise StoreError(f"hloc file {self.path}: matches0 of {what} is {matches0.dtype}, "
                             "not integers")
        if len(matches0) and matches0.min() < -1:
            raise StoreError(f"hloc file {self.path}: matches0 of {what} holds {matches0.min()}"
                             " (only -1 marks an unmatched keypoint): the file is corrupt")
        index0 = np.flatnonzero(matches0 != -1)
        matches = np.stack([index0, matches0[index0]], axis=-1).astype(np.int32)
        if "matching_scores0" in self._handle[key]:
            scores0 = np.asarray(self._read(key, "matching_scores0", what)).reshape(-1)
            if len(scores0) != len(matches0):
                raise StoreError(f"hloc file {self.path}: {len(matches0)} matches0 but "
                                 f"{len(scores0)} matching_scores0 for {what}")
            scores = scores0[index0].astype(np.float32)
        else:
            scores = np.ones(len(matches), np.float32)
        if swapped:
            matches = np.ascontiguousarray(matches[:, ::-1])
        return matches, scores

    def features_digests(self, name0: str, name1: str) -> tuple[str, str] | None:
        return None   # the lineage check falls back to the index bounds


class HlocGlobalDescriptorReader(_HlocFile, GlobalDescriptorReader):
    """An hloc global-descriptor file (``global_descriptor`` per image) read as ours."""

    kind = GLOBAL

    def __init__(self, path: str | Path) -> None:
        self._open(path)

    def names(self) -> list[str]:
        return sorted(self._item_groups())

    def __contains__(self, name: str) -> bool:
        return name in self._item_groups()

    def read(self, name: str) -> np.ndarray:
        if name not in self._item_groups():
            raise StoreError(f"hloc file {self.path} has no global descriptor for image "
                             f"{name!r}")
        return np.asarray(self._read(name, "global_descriptor", repr(name)),
                          np.float32).reshape(-1)

    def read_many(self, names: Sequence[str]) -> np.ndarray:
        out = np.empty((len(names), self.dim if len(names) else 0), np.float32)
        for row, name in enumerate(names):
            value = self.read(name)
            if value.shape != (out.shape[1],):
                raise StoreError(f"hloc file {self.path}: descriptor of {name!r} has shape "
                                 f"{value.shape}, the others ({out.shape[1]},)")
            out[row] = value
        return out

    @property
    def dim(self) -> int:
        if getattr(self, "_dim", None) is None:
            first = next(iter(self._item_groups()), None)
            if first is None:
                raise StoreError(f"hloc file {self.path} holds no descriptor")
            self._dim = len(self.read(first))
        return self._dim


# ------------------------------------------------------------------------------ writing

class _AtomicH5:
    """An HDF5 file written under a temporary name and renamed over ``path`` on success."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give the path of an .h5 file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> h5py.File:
        self.handle = h5py.File(self.tmp, "w")
        return self.handle

    def __exit__(self, exc_type, *exc: Any) -> None:
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _float_dtype(half: bool) -> type:
    return np.float16 if half else np.float32


def _item_group(out: h5py.File, key: str, path: Path) -> h5py.Group:
    if key in out:
        raise StoreError(f"{path}: two items map to hloc's key {key!r} (hloc replaces '/' by "
                         "'-' in pair keys); rename one of the images")
    return out.create_group(key)


def export_features(features: FeatureReader, output: str | Path,
                    names: Iterable[str] | None = None, half: bool = False) -> int:
    """Write ``features`` (any features store) in hloc's layout; returns the image count.
    ``half``: float16 keypoints, descriptors and scores, as hloc's default ``as_half``."""
    dtype = _float_dtype(half)
    names = list(features.names() if names is None else names)
    with _AtomicH5(output) as out:
        for name in names:
            record = features.read(name)
            group = out.create_group(name)
            group.create_dataset("keypoints", data=record.keypoints.astype(dtype))
            group.create_dataset("descriptors", data=np.ascontiguousarray(
                record.descriptors.T.astype(dtype)))
            group.create_dataset("scores", data=record.scores.astype(dtype))
            group.create_dataset("image_size", data=np.asarray(features.image_size(name),
                                                               np.int64))
    return len(names)


def export_matches(matches: MatchReader, features: FeatureReader | Sequence[FeatureReader],
                   output: str | Path, pairs: Iterable[tuple[str, str]] | None = None,
                   int16: bool = False, half: bool = False) -> int:
    """Write the ``pairs`` of ``matches`` (all stored pairs by default) in hloc's layout;
    ``features`` (one store, or several: e.g. query and database features) gives each
    image's keypoint count (``matches0`` has one entry per keypoint) and must hold the
    features the matches were made from. Returns the pair count.

    ``matches0`` maps each keypoint of the first image to at most one keypoint of the
    second: a pair whose first image's keypoints are matched more than once is written in
    the other order (hloc finds pairs in both orders); one that is many-to-many in both
    directions cannot be written in hloc's layout and is refused."""
    pairs = unique_pairs(matches.pairs() if pairs is None else pairs)
    features = FeatureStores([features] if isinstance(features, FeatureReader) else features)
    check_matches_lineage(matches, features, pairs)
    index_dtype = np.int16 if int16 else np.int32
    counts: dict[str, int] = {}
    with _AtomicH5(output) as out:
        for name0, name1 in pairs:
            pair_matches, scores = matches.read(name0, name1)
            if len(np.unique(pair_matches[:, 0])) < len(pair_matches):
                if len(np.unique(pair_matches[:, 1])) < len(pair_matches):
                    raise StoreError(
                        f"pair {name0!r} - {name1!r} matches keypoints of both images more "
                        "than once: hloc's matches0 holds one match per keypoint")
                name0, name1, pair_matches = name1, name0, pair_matches[:, ::-1]
            if int16 and len(pair_matches) and pair_matches[:, 1].max() > INT16_MAX:
                raise StoreError(
                    f"pair {name0!r} - {name1!r}: keypoint index {pair_matches[:, 1].max()} "
                    f"exceeds int16 ({INT16_MAX}), hloc's default for matches0; export without "
                    "--int16 (hloc reads int32 matches0 too)")
            if name0 not in counts:
                counts[name0] = len(features.keypoints(name0))
            matches0 = np.full(counts[name0], -1, index_dtype)
            scores0 = np.zeros(counts[name0], _float_dtype(half))
            matches0[pair_matches[:, 0]] = pair_matches[:, 1]
            scores0[pair_matches[:, 0]] = scores
            group = _item_group(out, names_to_pair(name0, name1), Path(output))
            group.create_dataset("matches0", data=matches0)
            group.create_dataset("matching_scores0", data=scores0)
    return len(pairs)


def export_global_descriptors(reader: Any, output: str | Path, half: bool = False) -> int:
    """Write a global-descriptor store (``GlobalDescriptorReader``) in hloc's layout."""
    names = reader.names()
    with _AtomicH5(output) as out:
        for name in names:
            out.create_group(name).create_dataset(
                "global_descriptor", data=reader.read(name).astype(_float_dtype(half)))
    return len(names)
