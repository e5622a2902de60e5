"""The HDF5 feature and match store: the only code that knows the file layout.

Schema (version 1)
------------------
Both files carry root attributes ``schema_version``, ``kind`` ("features" | "matches"),
``method`` (preset name), ``config_hash``, ``config`` (JSON) and ``sfmfeat_version``.

features.h5: ``/images/<key>/`` per image, where ``<key>`` is the image name with "%" and
"/" percent-escaped (one HDF5 component per image, so names with subfolders, spaces or
non-ASCII characters round-trip). Datasets: ``keypoints`` N×2 float32 (pixel centre at
integer coordinates), ``scores`` N float32, ``descriptors`` N×D float32, optional
``scales`` and ``orientations`` N float32. Attributes: ``name`` and ``image_size`` (w, h).

matches.h5: ``/pairs/<key_a>/<key_b>/`` with name_a < name_b (order-invariant): datasets
``matches`` K×2 int32 (column 0 indexes name_a's keypoints) and ``scores`` K float32. The
root also records ``features_config_hash`` of the features the matches were made from.

Crash safety and resumption
---------------------------
Writers never modify the final file in place. New results are buffered and flushed into
shard files ``<file>.partial/shard-*.h5``, each written to a temporary name and renamed,
so a shard is either whole or absent. Closing the writer merges the final file and the
shards into a temporary file that replaces the final file atomically. A killed run leaves
the final file untouched and its flushed shards; the next run with the same config picks
them up and skips their items. A different config for the same file is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from . import __version__
from .errors import StoreError
from .features import Features

logger = logging.getLogger(__name__)

# 2: hashes over the method's stable name and weights identity; the extractor spec
# (preset name + overrides) recorded
SCHEMA_VERSION = 2
_FEATURE_FIELDS = ("keypoints", "scores", "descriptors", "scales", "orientations")


def escape_name(name: str) -> str:
    """One HDF5 path component for an image name (reversible)."""
    if not name or name in (".", ".."):
        raise StoreError(f"invalid image name {name!r}")
    return name.replace("%", "%25").replace("/", "%2F")


def unescape_name(key: str) -> str:
    return key.replace("%2F", "/").replace("%25", "%")


def pair_key(name0: str, name1: str) -> tuple[str, str, bool]:
    """(name_a, name_b, swapped) with name_a < name_b; swapped when name0 is name_b."""
    if name0 == name1:
        raise StoreError(f"cannot pair image {name0!r} with itself")
    return (name0, name1, False) if name0 < name1 else (name1, name0, True)


# kinds whose items are single images (stored under /images/<key>); the others are pairs
_IMAGE_KINDS = ("features", "global_descriptors")


def _item_path(kind: str, key: tuple[str, ...]) -> str:
    group = "images" if kind in _IMAGE_KINDS else "pairs"
    return "/".join([group, *(escape_name(k) for k in key)])


class StoreInfo:
    """Identity of a store file: what made it and with which config."""

    def __init__(self, kind: str, method: str, config_hash: str, config: dict[str, Any],
                 extra: dict[str, str] | None = None,
                 spec: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.method = method
        self.config_hash = config_hash
        self.config = config
        self.extra = dict(extra or {})
        self.spec = spec   # how to rebuild the producer (recorded, not compared)

    def write_attrs(self, handle: h5py.File) -> None:
        handle.attrs["schema_version"] = SCHEMA_VERSION
        handle.attrs["kind"] = self.kind
        handle.attrs["method"] = self.method
        handle.attrs["config_hash"] = self.config_hash
        handle.attrs["config"] = json.dumps(self.config, sort_keys=True)
        handle.attrs["sfmfeat_version"] = __version__
        if self.spec is not None:
            handle.attrs["spec"] = json.dumps(self.spec, sort_keys=True)
        for key, value in self.extra.items():
            handle.attrs[key] = value

    def check(self, handle: h5py.File, path: Path) -> None:
        """Raise StoreError unless ``handle`` was made by this exact method and config."""
        attrs = handle.attrs
        check_schema(attrs, path)
        if attrs.get("kind") != self.kind:
            raise StoreError(f"{path} holds {attrs.get('kind')}, not {self.kind}")
        theirs = (attrs.get("method"), attrs.get("config_hash"))
        ours = (self.method, self.config_hash)
        mismatched = theirs != ours or any(attrs.get(k) != v for k, v in self.extra.items())
        if mismatched:
            extra = "".join(f", {k}={attrs.get(k)}" for k in self.extra)
            raise StoreError(
                f"{path} was made by {theirs[0]} with config {theirs[1]}{extra}; this run uses "
                f"{self.method} with config {self.config_hash}"
                + "".join(f", {k}={v}" for k, v in self.extra.items())
                + ". Results of different configs are never mixed: choose another output "
                "file or delete this one"
            )


def check_schema(attrs: Any, path: Path) -> None:
    """Refuse a file of another schema version, saying how to rebuild it."""
    version = attrs.get("schema_version")
    if version is None or int(version) != SCHEMA_VERSION:
        made_by = attrs.get("sfmfeat_version", "an unknown version")
        raise StoreError(
            f"{path}: schema version {version} (written by sfmfeat {made_by}); this sfmfeat "
            f"{__version__} reads version {SCHEMA_VERSION} only. Rebuild it: rerun the command "
            "that made it with --overwrite (or delete it), or write to a new file")


def _open_h5(path: Path, mode: str = "r") -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise StoreError(f"{path}: unreadable HDF5 file ({err}); delete it and rerun") from err


def _item_keys(handle: h5py.File, kind: str) -> Iterator[tuple[str, ...]]:
    group_name = "images" if kind in _IMAGE_KINDS else "pairs"
    if group_name not in handle:
        return
    group = handle[group_name]
    if kind in _IMAGE_KINDS:
        for key in group:
            yield (unescape_name(key),)
    else:
        for key_a in group:
            for key_b in group[key_a]:
                yield (unescape_name(key_a), unescape_name(key_b))


class _ShardedWriter:
    """Buffered, crash-safe writer shared by the feature and match stores."""

    def __init__(self, path: str | Path, info: StoreInfo, overwrite: bool = False,
                 flush_items: int = 64, flush_seconds: float = 20.0) -> None:
        self.path = Path(path)
        self.info = info
        self.shard_dir = self.path.with_name(self.path.name + ".partial")
        self.flush_items = flush_items
        self.flush_seconds = flush_seconds
        self._buffer: list[tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, Any]]] = []
        self._last_flush = time.monotonic()
        self._closed = False
        if overwrite:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.shard_dir, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[tuple[str, ...]] = set()
        if self.path.exists():
            with _open_h5(self.path) as handle:
                info.check(handle, self.path)
                self.done.update(_item_keys(handle, info.kind))
        for shard in self._shards():
            with _open_h5(shard) as handle:
                info.check(handle, shard)
                self.done.update(_item_keys(handle, info.kind))
        if self.done:
            logger.info("%s: %d items already stored, resuming", self.path, len(self.done))

    def _shards(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        for stale in self.shard_dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
        return sorted(self.shard_dir.glob("shard-*.h5"))

    def add(self, key: tuple[str, ...], datasets: dict[str, np.ndarray],
            attrs: dict[str, Any]) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: writer already closed")
        self._buffer.append((key, datasets, attrs))
        self.done.add(key)
        if (len(self._buffer) >= self.flush_items
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"
        tmp = self.shard_dir / f".tmp-{name}"
        with h5py.File(tmp, "w") as handle:
            self.info.write_attrs(handle)
            for key, datasets, attrs in self._buffer:
                group = handle.create_group(_item_path(self.info.kind, key))
                for field, value in datasets.items():
                    group.create_dataset(field, data=value)
                for attr, value in attrs.items():
                    group.attrs[attr] = value
        _fsync_file(tmp)
        os.replace(tmp, self.shard_dir / name)
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and merge everything into the final file (atomic replace)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        shards = self._shards()
        if not shards and self.path.exists():
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with h5py.File(tmp, "w") as out:
                self.info.write_attrs(out)
                for source in ([self.path] if self.path.exists() else []) + shards:
                    with _open_h5(source) as handle:
                        for key in _item_keys(handle, self.info.kind):
                            item = _item_path(self.info.kind, key)
                            if item in out:
                                del out[item]  # a later shard wins (rewritten item)
                            parent = item.rsplit("/", 1)[0]
                            out.require_group(parent)
                            handle.copy(handle[item], out[parent],
                                        name=item.rsplit("/", 1)[1])
            _fsync_file(tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    def __enter__(self) -> "_ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was flushed; the rerun resumes from it
            try:
                self.flush()
            except OSError:
                logger.exception("could not flush %s", self.path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreReader:
    """Read access to a finished store file of one ``kind`` (kept open; a context manager).

    Checks the kind and schema version and exposes the method, config hash and config."""

    kind: ClassVar[str]
    missing_hint: ClassVar[str]

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.kind.replace('_', ' ')} file {self.path} does not exist; "
                             f"{self.missing_hint}")
        self._handle = _open_h5(self.path)
        attrs = self._handle.attrs
        if attrs.get("kind") != self.kind:
            raise StoreError(f"{self.path} holds {attrs.get('kind')}, not {self.kind}")
        check_schema(attrs, self.path)
        self.method = str(attrs["method"])
        self.config_hash = str(attrs["config_hash"])
        self.config = json.loads(attrs["config"])
        # {"preset": name, "overrides": {...}} of the extractor that made the file
        self.spec = json.loads(attrs["spec"]) if "spec" in attrs else None

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- features

class FeatureWriter(_ShardedWriter):
    """Writes features.h5; ``name in writer`` tells whether an image is already done."""

    def __init__(self, path: str | Path, method: str, config_hash: str,
                 config: dict[str, Any], overwrite: bool = False,
                 spec: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(path, StoreInfo("features", method, config_hash, config, spec=spec),
                         overwrite=overwrite, **kwargs)

    def __contains__(self, name: str) -> bool:
        return (name,) in self.done

    def write(self, name: str, features: Features, image_size: tuple[int, int]) -> None:
        datasets = {f: getattr(features, f) for f in _FEATURE_FIELDS
                    if getattr(features, f) is not None}
        self.add((name,), datasets, {"name": name,
                                     "image_size": np.asarray(image_size, np.int64)})


class FeatureReader(StoreReader):
    """Read access to a finished features.h5."""

    kind = "features"
    missing_hint = "run `sfmfeat extract` first"

    def names(self) -> list[str]:
        return [key[0] for key in _item_keys(self._handle, "features")]

    def __contains__(self, name: str) -> bool:
        return _item_path("features", (name,)) in self._handle

    def _group(self, name: str) -> h5py.Group:
        path = _item_path("features", (name,))
        if path not in self._handle:
            raise StoreError(f"{self.path} has no features for image {name!r}")
        return self._handle[path]

    def read(self, name: str) -> Features:
        group = self._group(name)
        values = {f: group[f][()] for f in _FEATURE_FIELDS if f in group}
        return Features(**values)

    def keypoints(self, name: str) -> np.ndarray:
        return self._group(name)["keypoints"][()]

    def image_size(self, name: str) -> tuple[int, int]:
        width, height = self._group(name).attrs["image_size"]
        return int(width), int(height)


# ------------------------------------------------------------------------------ matches

class MatchWriter(_ShardedWriter):
    """Writes matches.h5 for pairs of images, under order-invariant keys."""

    def __init__(self, path: str | Path, method: str, config_hash: str,
                 config: dict[str, Any], features_config_hash: str,
                 overwrite: bool = False, **kwargs: Any) -> None:
        info = StoreInfo("matches", method, config_hash, config,
                         extra={"features_config_hash": features_config_hash})
        super().__init__(path, info, overwrite=overwrite, **kwargs)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        name_a, name_b, _ = pair_key(*pair)
        return (name_a, name_b) in self.done

    def write(self, name0: str, name1: str, matches: np.ndarray, scores: np.ndarray) -> None:
        matches = np.asarray(matches, dtype=np.int32).reshape(-1, 2)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(matches):
            raise StoreError(f"{len(matches)} matches but {len(scores)} scores for "
                             f"{name0!r}-{name1!r}")
        name_a, name_b, swapped = pair_key(name0, name1)
        if swapped:
            matches = matches[:, ::-1]
        self.add((name_a, name_b), {"matches": np.ascontiguousarray(matches), "scores": scores},
                 {})


class MatchReader(StoreReader):
    """Read access to a finished matches.h5."""

    kind = "matches"
    missing_hint = "run `sfmfeat match` first"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.features_config_hash = str(self._handle.attrs["features_config_hash"])

    def pairs(self) -> list[tuple[str, str]]:
        return list(_item_keys(self._handle, "matches"))  # type: ignore[arg-type]

    def __contains__(self, pair: tuple[str, str]) -> bool:
        name_a, name_b, _ = pair_key(*pair)
        return _item_path("matches", (name_a, name_b)) in self._handle

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        """K×2 int32 matches with column 0 indexing ``name0``'s keypoints, and K scores."""
        name_a, name_b, swapped = pair_key(name0, name1)
        path = _item_path("matches", (name_a, name_b))
        if path not in self._handle:
            raise StoreError(f"{self.path} has no matches for {name0!r} - {name1!r}")
        group = self._handle[path]
        matches = group["matches"][()]
        if swapped:
            matches = np.ascontiguousarray(matches[:, ::-1])
        return matches, group["scores"][()]


def missing(items: Iterable, done: Any) -> list:
    """The items not yet in ``done`` (a writer), order kept."""
    return [item for item in items if item not in done]
