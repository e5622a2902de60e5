"""The HDF5 feature and match store: the only code that knows the file layout.

Schema (version 1)
------------------
Both files carry root attributes ``schema_version``, ``kind`` ("features" | "matches"),
``method`` (preset name), ``config_hash``, ``config`` (JSON) and ``sfmfeat_version``.

features.h5: ``/images/<key>/`` per image, where ``<key>`` is the image name with "%" and
"/" percent-escaped (one HDF5 component per image, so names with subfolders, spaces or
non-ASCII characters round-trip). Datasets: ``keypoints`` N×2 float32 (pixel centre at
integer coordinates), ``scores`` N float32, ``descriptors`` N×D float32, optional
``scales`` and ``orientations`` N float32. Attributes: ``name``, ``image_size`` (w, h),
``fingerprint`` (JSON: bytes, mtime_ns and BLAKE2b of the image file the record came from)
and ``keypoints_digest`` (BLAKE2b of the keypoint array: the record's identity for lineage).

matches.h5: ``/pairs/<key_a>/<key_b>/`` with name_a < name_b (order-invariant): datasets
``matches`` K×2 int32 (column 0 indexes name_a's keypoints) and ``scores`` K float32. The
root also records ``features_config_hash`` of the features the matches were made from, and
each pair the attribute ``features_digests`` (the ``keypoints_digest`` of name_a's and
name_b's feature records), so matches made from other keypoints are recomputed or refused.

Crash safety and resumption
---------------------------
Every record carries the CRC-32 of each of its datasets (attribute ``crc32``, JSON): a
file corrupted in place fails to read (a StoreError naming it) instead of returning other
numbers. (Not HDF5's Fletcher-32 filter: its chunked writes crash h5py on a full disk.)

Writers never modify the final file in place. New results are buffered and flushed into
shard files ``<file>.partial/shard-*.h5``, each written to a temporary name and renamed,
so a shard is either whole or absent. Closing the writer merges the final file and the
shards into a temporary file that replaces the final file atomically. A killed run leaves
the final file untouched and its flushed shards; the next run with the same config picks
them up and skips their items. A different config for the same file is refused.
A feature record whose image file has changed (other content hash) is re-extracted, and a
match record whose feature digests differ from the current features' is re-matched.

Files in hloc's layout open as the adapters of ``sfmfeat.hloc`` (``StoreReader.__new__``);
writers refuse to add records to them.

Each writer holds an advisory lock (``.<file>.lock`` beside it, holding the writer's pid)
for its lifetime: a second writer of the same file fails at once, naming that pid.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from . import __version__
from .atomic import atomic_path
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


def record_path(key: tuple[str, ...]) -> str:
    """The HDF5 group of a record: ``images/<name>`` for a per-image key ``(name,)``,
    ``pairs/<name_a>/<name_b>`` for a per-pair key (already ordered, see ``pair_key``).
    The same for every kind of store (features, matches, global descriptors, ...)."""
    if len(key) not in (1, 2):
        raise StoreError(f"a record key names one image or a pair, got {key!r}")
    return "/".join(["images" if len(key) == 1 else "pairs", *(escape_name(k) for k in key)])


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


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """An HDF5 file, or a StoreError saying what to do when it is a folder or unreadable."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not an HDF5 file; give a file path")
    try:
        return h5py.File(path, mode)
    except OSError as err:
        raise StoreError(f"{path}: unreadable HDF5 file ({err}); delete it and rerun") from err


_open_h5 = open_h5   # the name sfmfeat.hloc imports


def record_keys(handle: h5py.File) -> Iterator[tuple[str, ...]]:
    """The keys of every record in an open store file: ``(name,)`` per image record,
    ``(name_a, name_b)`` per pair record."""
    for key in handle.get("images", ()):
        yield (unescape_name(key),)
    pairs = handle.get("pairs", {})
    for key_a in pairs:
        for key_b in pairs[key_a]:
            yield (unescape_name(key_a), unescape_name(key_b))


# ------------------------------------------------------ content fingerprints and lineage

def image_fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies an image file's content: size in bytes, mtime and a BLAKE2b hash."""
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blake2b": digest.hexdigest()}


def same_image_content(stored: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Whether a record's fingerprint names the same content as ``current``'s. A record
    without one (an older store) counts as changed; a touched but identical file does not."""
    if not stored:
        return False
    return (stored.get("bytes"), stored.get("blake2b")) == (current["bytes"],
                                                           current["blake2b"])


def keypoints_digest(keypoints: np.ndarray) -> str:
    """The identity of a feature record for the matches made from it."""
    keypoints = np.ascontiguousarray(keypoints, dtype=np.float32)
    digest = hashlib.blake2b(str(keypoints.shape).encode(), digest_size=8)
    digest.update(keypoints.tobytes())
    return digest.hexdigest()


# -------------------------------------------------------------------------------- locks

class StoreLock:
    """An advisory exclusive lock on ``target`` (a store file or an output folder).

    The lock file ``.<name>.lock`` beside the file (or inside the folder) holds the pid of
    its holder; a second holder fails at once with a StoreError naming it."""

    def __init__(self, target: str | Path, inside: bool = False) -> None:
        self._fd: int | None = None
        target = Path(target)
        self.target = target
        self.path = (target / ".sfmfeat.lock" if inside
                     else target.with_name(f".{target.name}.lock"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = self._holder()
            raise StoreError(f"{target} is being written by another sfmfeat process (pid "
                             f"{holder}); wait for it to finish or write elsewhere") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class RecordWriter:
    """Buffered, crash-safe, resumable writer of per-image or per-pair records of one kind
    (the base of every store writer: features, matches, global descriptors).

    ``add(key, datasets, attrs)`` buffers a record (``key``: see ``record_path``);
    ``key in writer.done`` tells what is stored already (this run or a resumed one)."""

    # per-item attributes read back from stored records (``self.stored_attrs``)
    tracked_attrs: ClassVar[tuple[str, ...]] = ()

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
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give the path of an .h5 file")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise StoreError(f"{parent} is a file, not a folder: cannot write "
                                     f"{self.path}")
                break
        self._lock = StoreLock(self.path)
        try:
            self._resume(overwrite)
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def shard_sink(cls, path: str | Path, info: StoreInfo) -> "RecordWriter":
        """A writer for a worker process of a run whose driver holds ``path``'s writer: it
        only adds shards (on ``flush``), takes no lock, resumes nothing and never merges;
        the driver's writer merges the shards when it closes."""
        sink = cls.__new__(cls)
        sink.path, sink.info = Path(path), info
        sink.shard_dir = sink.path.with_name(sink.path.name + ".partial")
        sink.flush_items, sink.flush_seconds = 1 << 62, float("inf")
        sink._buffer, sink._last_flush, sink._closed = [], time.monotonic(), False
        sink.done, sink.stored_attrs, sink._lock = set(), {}, None
        return sink

    def _resume(self, overwrite: bool) -> None:
        if overwrite:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.shard_dir, ignore_errors=True)
        self.done: set[tuple[str, ...]] = set()
        self.stored_attrs: dict[tuple[str, ...], dict[str, Any]] = {}
        for source in ([self.path] if self.path.exists() else []) + self._shards():
            with open_h5(source) as handle:
                self._refuse_foreign(handle, source)
                self.info.check(handle, source)
                keys = list(record_keys(handle))
                self.done.update(keys)
                if self.tracked_attrs:
                    for key in keys:  # a later shard overrides, as in close()
                        attrs = handle[record_path(key)].attrs
                        self.stored_attrs[key] = {a: attrs[a] for a in self.tracked_attrs
                                                  if a in attrs}
        if self.done:
            logger.info("%s: %d items already stored, resuming", self.path, len(self.done))

    @staticmethod
    def _refuse_foreign(handle: h5py.File, path: Path) -> None:
        from .hloc import foreign_file_error, layout_kinds

        if layout_kinds(handle):
            raise foreign_file_error(path)

    def _shards(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        for stale in self.shard_dir.glob(".shard-*"):   # a shard killed while written
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
        with atomic_path(self.shard_dir / name) as tmp, h5py.File(tmp, "w") as handle:
            self.info.write_attrs(handle)
            for key, datasets, attrs in self._buffer:
                group = handle.create_group(record_path(key))
                for field, value in datasets.items():
                    group.create_dataset(field, data=value)
                group.attrs["crc32"] = json.dumps(
                    {field: _crc32(value) for field, value in datasets.items()},
                    sort_keys=True)
                for attr, value in attrs.items():
                    group.attrs[attr] = value
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and merge everything into the final file (atomic replace); a
        ``shard_sink`` only flushes."""
        if self._lock is None:
            self.flush()
            return
        try:
            self._merge()
        finally:
            self._lock.release()

    def _merge(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        shards = self._shards()
        if not shards and self.path.exists():
            return
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as out:
            self.info.write_attrs(out)
            for source in ([self.path] if self.path.exists() else []) + shards:
                with open_h5(source) as handle:
                    for key in record_keys(handle):
                        item = record_path(key)
                        if item in out:
                            del out[item]  # a later shard wins (rewritten item)
                        parent = item.rsplit("/", 1)[0]
                        out.require_group(parent)
                        handle.copy(handle[item], out[parent], name=item.rsplit("/", 1)[1])
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what was flushed; the rerun resumes from it
            self.flush()
        except OSError as err:  # the error being raised already says why (often the same)
            logger.debug("could not flush %s: %s", self.path, err)
        finally:
            self._lock.release()


def _crc32(value: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(value).view(np.uint8))


def _read_checked(group: h5py.Group, field: str, path: Path, what: str) -> np.ndarray:
    """``group[field]`` verified against the record's checksum (when it has one)."""
    try:
        value = group[field][()]
        checksums = group.attrs.get("crc32")
    except (OSError, KeyError) as err:
        raise StoreError(f"{path}: the {field} of {what} are unreadable ({err}); delete the "
                         "file and rerun") from err
    if checksums is not None and json.loads(checksums).get(field) not in (None, _crc32(value)):
        raise StoreError(f"{path}: the {field} of {what} are corrupt (checksum mismatch); "
                         "delete the file and rerun")
    return value


class StoreReader:
    """Read access to a finished store file of one ``kind`` (kept open; a context manager).

    Checks the kind and schema version and exposes the method, config hash and config."""

    kind: ClassVar[str]
    missing_hint: ClassVar[str]

    def __new__(cls, path: str | Path, *args: Any, **kwargs: Any) -> "StoreReader":
        from .hloc import reader_class   # a file in hloc's layout opens as its adapter

        return super().__new__(reader_class(cls, path) or cls)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.kind.replace('_', ' ')} file {self.path} does not exist; "
                             f"{self.missing_hint}")
        self._handle = open_h5(self.path)
        attrs = self._handle.attrs
        if "kind" not in attrs:
            from .hloc import ITEM_DATASETS

            self._handle.close()
            raise StoreError(
                f"{self.path} is neither an sfmfeat {self.kind.replace('_', ' ')} store (no "
                "'kind' attribute) nor an hloc-layout file (no group holding "
                f"{ITEM_DATASETS[self.kind]!r}); pass a file sfmfeat or hloc wrote")
        if attrs.get("kind") != self.kind:
            self._handle.close()
            raise StoreError(f"{self.path} holds {attrs.get('kind')}, not {self.kind}")
        check_schema(attrs, self.path)
        self.method = str(attrs["method"])
        self.config_hash = str(attrs["config_hash"])
        self.config = json.loads(attrs["config"])
        # {"preset": name, "overrides": {...}} of the extractor that made the file
        self.spec = json.loads(attrs["spec"]) if "spec" in attrs else None

    def keys(self) -> list[tuple[str, ...]]:
        """The key of every record (see ``record_keys``)."""
        return list(record_keys(self._handle))

    def has(self, key: tuple[str, ...]) -> bool:
        return record_path(key) in self._handle

    def record(self, key: tuple[str, ...]) -> h5py.Group | None:
        """The group of a record, None when the file has none for ``key``."""
        return self._handle.get(record_path(key))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- features

class FeatureWriter(RecordWriter):
    """Writes features.h5; ``name in writer`` tells whether an image is already done."""

    tracked_attrs = ("fingerprint",)

    def __init__(self, path: str | Path, method: str, config_hash: str,
                 config: dict[str, Any], overwrite: bool = False,
                 spec: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(path, StoreInfo("features", method, config_hash, config, spec=spec),
                         overwrite=overwrite, **kwargs)

    def __contains__(self, name: str) -> bool:
        return (name,) in self.done

    def stored_fingerprint(self, name: str) -> dict[str, Any] | None:
        """The fingerprint of the image file a stored record came from (None: unknown)."""
        value = self.stored_attrs.get((name,), {}).get("fingerprint")
        return json.loads(value) if value else None

    def write(self, name: str, features: Features, image_size: tuple[int, int],
              fingerprint: dict[str, Any] | None = None) -> None:
        datasets = {f: getattr(features, f) for f in _FEATURE_FIELDS
                    if getattr(features, f) is not None}
        attrs = {"name": name, "image_size": np.asarray(image_size, np.int64),
                 "keypoints_digest": keypoints_digest(features.keypoints)}
        if fingerprint is not None:
            attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        self.add((name,), datasets, attrs)


class ImageRecordReader(StoreReader):
    """A store of one record per image: ``names()`` and ``name in reader``."""

    def names(self) -> list[str]:
        return [key[0] for key in self.keys()]

    def __contains__(self, name: str) -> bool:
        return self.has((name,))


class FeatureReader(ImageRecordReader):
    """Read access to a finished features.h5."""

    kind = "features"
    missing_hint = "run `sfmfeat extract` first"

    def _group(self, name: str) -> h5py.Group:
        path = record_path((name,))
        if path not in self._handle:
            raise StoreError(f"{self.path} has no features for image {name!r}")
        return self._handle[path]

    def read(self, name: str) -> Features:
        group = self._group(name)
        values = {f: self._dataset(group, name, f) for f in _FEATURE_FIELDS if f in group}
        width, height = group.attrs["image_size"]
        return Features(**values, image_size=(int(width), int(height)))

    def keypoints(self, name: str) -> np.ndarray:
        return self._dataset(self._group(name), name, "keypoints")

    def _dataset(self, group: h5py.Group, name: str, field: str) -> np.ndarray:
        return _read_checked(group, field, self.path, repr(name))

    def image_size(self, name: str) -> tuple[int, int]:
        width, height = self._group(name).attrs["image_size"]
        return int(width), int(height)

    def keypoints_digest(self, name: str) -> str:
        """The record's lineage identity (computed for records of older stores)."""
        group = self._group(name)
        stored = group.attrs.get("keypoints_digest")
        return str(stored) if stored is not None else keypoints_digest(group["keypoints"][()])

    def fingerprint(self, name: str) -> dict[str, Any] | None:
        value = self._group(name).attrs.get("fingerprint")
        return json.loads(value) if value else None


# ------------------------------------------------------------------------------ matches

class MatchWriter(RecordWriter):
    """Writes matches.h5 for pairs of images, under order-invariant keys."""

    def __init__(self, path: str | Path, method: str, config_hash: str,
                 config: dict[str, Any], features_config_hash: str,
                 overwrite: bool = False, **kwargs: Any) -> None:
        info = StoreInfo("matches", method, config_hash, config,
                         extra={"features_config_hash": features_config_hash})
        super().__init__(path, info, overwrite=overwrite, **kwargs)

    tracked_attrs = ("features_digests",)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        name_a, name_b, _ = pair_key(*pair)
        return (name_a, name_b) in self.done

    def stored_digests(self, name0: str, name1: str) -> tuple[str, str] | None:
        """The feature digests a stored pair was matched from, in (name0, name1) order."""
        name_a, name_b, swapped = pair_key(name0, name1)
        return _ordered_digests(
            self.stored_attrs.get((name_a, name_b), {}).get("features_digests"), swapped)

    def write(self, name0: str, name1: str, matches: np.ndarray, scores: np.ndarray,
              features_digests: tuple[str, str] | None = None) -> None:
        matches = np.asarray(matches, dtype=np.int32).reshape(-1, 2)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(matches):
            raise StoreError(f"{len(matches)} matches but {len(scores)} scores for "
                             f"{name0!r}-{name1!r}")
        name_a, name_b, swapped = pair_key(name0, name1)
        attrs = {}
        if features_digests is not None:
            attrs["features_digests"] = " ".join(features_digests[::-1] if swapped
                                                 else features_digests)
        if swapped:
            matches = matches[:, ::-1]
        self.add((name_a, name_b), {"matches": np.ascontiguousarray(matches), "scores": scores},
                 attrs)


class MatchReader(StoreReader):
    """Read access to a finished matches.h5."""

    kind = "matches"
    missing_hint = "run `sfmfeat match` first"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.features_config_hash = str(self._handle.attrs["features_config_hash"])

    def pairs(self) -> list[tuple[str, str]]:
        return self.keys()  # type: ignore[return-value]

    def __contains__(self, pair: tuple[str, str]) -> bool:
        name_a, name_b, _ = pair_key(*pair)
        return self.has((name_a, name_b))

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
        """K×2 int32 matches with column 0 indexing ``name0``'s keypoints, and K scores."""
        name_a, name_b, swapped = pair_key(name0, name1)
        path = record_path((name_a, name_b))
        if path not in self._handle:
            raise StoreError(f"{self.path} has no matches for {name0!r} - {name1!r}")
        group = self._handle[path]
        what = f"{name0!r} - {name1!r}"
        matches = _read_checked(group, "matches", self.path, what)
        scores = _read_checked(group, "scores", self.path, what)
        if swapped:
            matches = np.ascontiguousarray(matches[:, ::-1])
        return matches, scores

    def features_digests(self, name0: str, name1: str) -> tuple[str, str] | None:
        """The keypoints digests the pair was matched from, in (name0, name1) order."""
        name_a, name_b, swapped = pair_key(name0, name1)
        return _ordered_digests(self._handle[record_path((name_a, name_b))]
                                .attrs.get("features_digests"), swapped)


def _ordered_digests(value: Any, swapped: bool) -> tuple[str, str] | None:
    if value is None:
        return None
    digest_a, digest_b = str(value).split()
    return (digest_b, digest_a) if swapped else (digest_a, digest_b)


class FeatureStores:
    """Several open feature stores seen as one for lookups (a name is read from the first
    that holds it): e.g. query and database features, for ``check_matches_lineage``."""

    def __init__(self, readers: Iterable[FeatureReader]) -> None:
        self.readers = list(readers)
        self.path = ", ".join(str(r.path) for r in self.readers)

    def _reader(self, name: str) -> FeatureReader:
        for reader in self.readers:
            if name in reader:
                return reader
        raise StoreError(f"no features for image {name!r} in {self.path}")

    def __contains__(self, name: str) -> bool:
        return any(name in reader for reader in self.readers)

    def keypoints(self, name: str) -> np.ndarray:
        return self._reader(name).keypoints(name)

    def keypoints_digest(self, name: str) -> str:
        return self._reader(name).keypoints_digest(name)


def check_matches_lineage(matches: MatchReader, features: FeatureReader | FeatureStores,
                          pairs: Iterable[tuple[str, str]]) -> None:
    """Refuse (StoreError naming both files) when a pair's matches were made from other
    feature records than the FeatureReader ``features`` holds. Pairs of older stores, which
    carry no digests, get the cheap check: their indices are within the keypoint counts."""
    digests: dict[str, str] = {}
    for name0, name1 in pairs:
        if (name0, name1) not in matches:
            continue
        stored = matches.features_digests(name0, name1)
        if stored is None:
            pair_matches, _ = matches.read(name0, name1)
            counts = (len(features.keypoints(name0)), len(features.keypoints(name1)))
            if len(pair_matches) == 0 or (pair_matches.min() >= 0 and np.all(
                    pair_matches.max(axis=0) < counts)):
                continue
        else:
            for name in (name0, name1):
                if name not in digests:
                    digests[name] = features.keypoints_digest(name)
            if stored == (digests[name0], digests[name1]):
                continue
        raise StoreError(
            f"{matches.path} was not matched from the features in {features.path} (pair "
            f"{name0!r} - {name1!r} was matched from other keypoints); rerun `sfmfeat match` "
            "on these features")

