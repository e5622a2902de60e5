"""The HDF5 feature and match store: the only code that knows the file layout.

Schema (version 3, packed)
--------------------------
Every store file carries root attributes ``schema_version``, ``kind`` ("features" |
"matches" | "global_descriptors"), ``method`` (preset name), ``config_hash``, ``config``
(JSON) and ``sfmfeat_version``; matches.h5 also ``features_config_hash`` of the features
the matches were made from.

A file holds records, one per image (features, global descriptors) or per pair (matches),
in a fixed number of datasets whatever the number of records:

``names``                 the image names, UTF-8, sorted (fixed-length bytes)
``records/key``           R int64 (per image) or R×2 (per pair: name_a < name_b, so the
                          key is order-invariant): indices into ``names``
``records/offset, count`` R int64: the record's rows ``[offset, offset + count)``
``records/crc32``         R×F uint32: CRC-32 of the record's rows of each field (attribute
                          ``fields``: their order); a file corrupted in place fails to read
                          (a StoreError naming it) instead of returning other numbers
``records/attrs/<name>``  one value per record (text fixed-length UTF-8; empty: none)
``rows/<field>``          the rows of every record, concatenated

features: fields ``keypoints`` N×2 float32 (pixel centre at integer coordinates),
``scores`` N, ``descriptors`` N×D, optional ``scales`` and ``orientations`` N; attributes
``image_size`` (w, h), ``keypoints_digest`` (BLAKE2b of the keypoints: the record's
identity for lineage) and ``fingerprint`` (JSON: bytes, mtime_ns and BLAKE2b of the image
file the record came from). matches: fields ``matches`` K×2 int32 (column 0 indexes
name_a's keypoints) and ``scores`` K float32; attribute ``features_digests`` (the
``keypoints_digest`` of name_a's and name_b's feature records), so matches made from other
keypoints are recomputed or refused. global descriptors: field ``global_descriptor``, one
row of D per image.

Why packed: schema 2 (hloc's shape: one HDF5 group per record) makes HDF5's own index and
metadata cache grow with the records, so a reader of 100k images used 2.4× the memory of
one of 10k (README, "Scale"). Here a reader holds the index in NumPy arrays (about 40 bytes
per record) and reads a record as one slice per field. Schema 2 files are still read
(``_GroupIndex``); writers refuse to extend them (rerun with --overwrite).

Crash safety and resumption
---------------------------
Writers never modify the final file in place. New results are buffered and flushed into
shard files ``<file>.partial/shard-*.h5`` (small files of the same layout), each written to
a temporary name and renamed, so a shard is either whole or absent. Closing the writer
merges the final file and the shards into a temporary file that replaces the final file
atomically (rows copied in blocks; a later shard's record replaces an earlier one of the
same key). A killed run leaves the final file untouched and its flushed shards; the next
run with the same config merges them first and skips their items. A different config for
the same file is refused. A feature record whose image file has changed (other content
hash) is re-extracted, and a match record whose feature digests differ from the current
features' is re-matched.

Files in hloc's layout open as the adapters of ``sfmfeat.hloc`` (``StoreReader.__new__``);
writers refuse to add records to them.

Each writer holds an advisory lock (``.<file>.lock`` beside it, holding the writer's pid)
for its lifetime: a second writer of the same file fails at once, naming that pid.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
import traceback
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
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
# (preset name + overrides) recorded. 3: the packed layout (module doc)
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (2, 3)
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
    """The HDF5 group of a record in a schema 2 file: ``images/<name>`` for a per-image key ``(name,)``,
    ``pairs/<name_a>/<name_b>`` for a per-pair key (already ordered, see ``pair_key``).
    The same for every kind of store (features, matches, global descriptors)."""
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


def check_schema(attrs: Any, path: Path,
                 readable: tuple[int, ...] = (SCHEMA_VERSION,)) -> int:
    """The file's schema version; refuse one not in ``readable``, saying how to rebuild."""
    version = attrs.get("schema_version")
    if version is None or int(version) not in readable:
        made_by = attrs.get("sfmfeat_version", "an unknown version")
        versions = " and ".join(map(str, readable))
        raise StoreError(
            f"{path}: schema version {version} (written by sfmfeat {made_by}); this sfmfeat "
            f"{__version__} {'reads' if len(readable) > 1 else 'extends'} version {versions} "
            "only. Rebuild it: rerun the command that made it with --overwrite (or delete "
            "it), or write to a new file")
    return int(version)


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
    """The keys of every record in an open schema 2 store file: ``(name,)`` per image record,
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


def _encode(name: str) -> bytes:
    # surrogateescape: a file name that is not valid UTF-8 still round-trips
    return name.encode("utf-8", "surrogateescape")


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _name_position(encoded_names: np.ndarray, name: str) -> int | None:
    """Where ``name`` is in the sorted byte array ``encoded_names`` (None: not there)."""
    encoded = _encode(name)
    position = int(np.searchsorted(encoded_names, encoded))
    found = position < len(encoded_names) and encoded_names[position] == encoded
    return position if found else None


class NameList(Sequence[str]):
    """The sorted image names of a store, decoded when read: a reader of 100k images then
    holds their names as one fixed-width byte array (2 MiB), not 100k Python strings
    (7.7 MiB). Compares equal to a list or tuple of the same names."""

    _BLOCK = 4096

    def __init__(self, encoded: np.ndarray) -> None:
        self._encoded = encoded

    def __len__(self) -> int:
        return len(self._encoded)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [_decode(name) for name in self._encoded[index].tolist()]
        return _decode(bytes(self._encoded[index]))

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._encoded), self._BLOCK):
            yield from map(_decode, self._encoded[start:start + self._BLOCK].tolist())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _name_position(self._encoded, name) is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (NameList, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None   # type: ignore[assignment]  # equal to lists, so unhashable like them

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self[:3]))
        return f"NameList([{head}{', ...' if len(self) > 3 else ''}], {len(self)} names)"


class KeySet:
    """The set of record keys a writer holds, 16 bytes per key (a 128-bit BLAKE2b of the
    key) instead of a Python tuple of strings: a million pairs take 16 MB, not 400."""

    # recent keys kept in a Python set (~80 bytes each) before they join the sorted arrays
    _FOLD = 1 << 12

    def __init__(self) -> None:
        # the digests' two 64-bit halves, sorted by the first (ties, 2^-64 apart, in any
        # order: a lookup scans every entry sharing its first half)
        self._high = np.empty(0, np.uint64)
        self._low = np.empty(0, np.uint64)
        self._recent: set[bytes] = set()

    @staticmethod
    def _digest(key: tuple[str, ...]) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for name in map(_encode, key):   # length-prefixed: no two keys read the same
            digest.update(len(name).to_bytes(4, "little") + name)
        return digest.digest()

    def add(self, key: tuple[str, ...]) -> None:
        digest = self._digest(key)
        if digest not in self:
            self._recent.add(digest)
            if len(self._recent) >= self._FOLD:
                self._fold()

    def update(self, keys: Iterable[tuple[str, ...]]) -> None:
        for key in keys:
            self.add(key)

    def _fold(self) -> None:
        halves = np.frombuffer(b"".join(self._recent), "<u8").reshape(-1, 2)
        halves = halves[np.argsort(halves[:, 0], kind="stable")]
        # merged in, not re-sorted: one pass over the arrays per fold
        where = np.searchsorted(self._high, halves[:, 0])
        self._high = np.insert(self._high, where, halves[:, 0])
        self._low = np.insert(self._low, where, halves[:, 1])
        self._recent.clear()

    def __contains__(self, key: tuple[str, ...] | bytes) -> bool:
        digest = key if isinstance(key, bytes) else self._digest(key)
        if digest in self._recent:
            return True
        high = int.from_bytes(digest[:8], "little")
        low = int.from_bytes(digest[8:], "little")
        index = int(np.searchsorted(self._high, np.uint64(high)))
        while index < len(self._high) and int(self._high[index]) == high:
            if int(self._low[index]) == low:
                return True
            index += 1
        return False

    def __len__(self) -> int:
        return len(self._high) + len(self._recent)


# ------------------------------------------------------------------ the packed layout (3)

_NAMES, _KEY, _OFFSET, _COUNT, _CRC = ("names", "records/key", "records/offset",
                                       "records/count", "records/crc32")
_ATTRS, _ROWS = "records/attrs", "rows"
_COPY_BYTES = 32 << 20   # rows copied per read when merging


def _names_array(names: Iterable[bytes]) -> np.ndarray:
    names = sorted(set(names))
    return np.array(names, dtype=f"S{max(map(len, names), default=1)}")


def _runs(offsets: np.ndarray, counts: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges [start, stop) covering the records ``offsets``/``counts`` (sorted by
    offset), adjacent records joined into one range."""
    if not len(offsets):
        return []
    ends = offsets + counts
    breaks = np.flatnonzero(offsets[1:] != ends[:-1]) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(offsets)]])
    return [(int(offsets[a]), int(ends[b - 1])) for a, b in zip(starts, stops)]


class _Layout:
    """The datasets of a packed file, created at their final sizes.

    ``fields``: name -> (dtype, shape of one row); ``attr_columns``: name -> (dtype or
    "str", shape of one value)."""

    def __init__(self, arity: int, fields: dict[str, tuple[np.dtype, tuple[int, ...]]],
                 attr_columns: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        self.arity = arity
        self.fields = fields
        self.attr_columns = attr_columns

    def create(self, handle: h5py.File, names: np.ndarray, num_records: int,
               field_rows: dict[str, int], text_widths: dict[str, int]
               ) -> dict[str, h5py.Dataset]:
        """``text_widths``: the bytes of the longest value of each text column (text is
        stored fixed-length: variable-length strings would go through HDF5's global heap,
        whose cache grows with the records)."""
        handle.create_dataset(_NAMES, data=names)
        key_shape = (num_records,) if self.arity == 1 else (num_records, 2)
        num_fields = len(self.fields)
        datasets = {
            "key": handle.create_dataset(_KEY, key_shape, np.int64),
            "offset": handle.create_dataset(_OFFSET, (num_records, num_fields), np.int64),
            "count": handle.create_dataset(_COUNT, (num_records,), np.int64),
            "crc32": handle.create_dataset(_CRC, (num_records, num_fields), np.uint32)}
        datasets["offset"].attrs["fields"] = json.dumps(list(self.fields))
        handle.require_group(_ATTRS)
        for name, (dtype, shape) in self.attr_columns.items():
            datasets[f"attr:{name}"] = handle.create_dataset(
                f"{_ATTRS}/{name}", (num_records, *shape),
                f"S{max(1, text_widths.get(name, 1))}" if dtype == "str" else dtype)
        handle.require_group(_ROWS)
        for field, (dtype, shape) in self.fields.items():
            datasets[f"rows:{field}"] = handle.create_dataset(
                f"{_ROWS}/{field}", (field_rows[field], *shape), dtype)
        return datasets


def _row_shapes(parts: Iterable[tuple[dict[str, tuple[np.dtype, tuple[int, ...]]], bool]],
                where: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The dtype and row shape of each field over ``parts`` ((field specs, has rows)):
    the parts with rows must agree; empty parts may be shaped otherwise (e.g. N×0)."""
    fields: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    parts = list(parts)
    for with_rows in (True, False):
        for specs, has_rows in parts:
            if has_rows != with_rows:
                continue
            for field, spec in specs.items():
                known = fields.setdefault(field, spec)
                if with_rows and known != spec:
                    raise StoreError(f"{where}: {field} of {spec[0]} rows of shape {spec[1]} "
                                     f"and of {known[0]} rows of shape {known[1]} cannot be "
                                     "stored together")
    return fields


def _write_records(handle: h5py.File, records: list, arity: int,
                   attr_columns: dict[str, tuple[str, tuple[int, ...]]], path: Path) -> None:
    """A packed file holding ``records`` ((key, datasets, attrs), each key once)."""
    fields = _row_shapes((({f: (v.dtype, v.shape[1:])}, bool(len(v)))
                          for _, datasets, _ in records for f, v in datasets.items()), path)
    names = _names_array(_encode(n) for key, _, _ in records for n in key)
    counts = np.array([len(next(iter(d.values()))) if d else 0 for _, d, _ in records],
                      np.int64)
    offsets = np.full((len(records), len(fields)), -1, np.int64)
    crc = np.zeros((len(records), len(fields)), np.uint32)
    rows: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    for column, (field, (dtype, shape)) in enumerate(fields.items()):
        position = 0
        for record, (_, datasets, _) in enumerate(records):
            if field in datasets:
                value = np.asarray(datasets[field], dtype).reshape(-1, *shape)
                offsets[record, column] = position
                crc[record, column] = _crc32(value)
                rows[field].append(value)
                position += len(value)
    columns = {}
    for name, (dtype, shape) in attr_columns.items():
        values = [attrs.get(name) for _, _, attrs in records]
        if dtype == "str":
            encoded = [b"" if v is None else str(v).encode() for v in values]
            columns[name] = np.array(encoded, f"S{max(map(len, encoded), default=1) or 1}")
        else:
            if any(v is None for v in values):
                raise StoreError(f"{path}: a record lacks its {name!r}")
            columns[name] = np.array(values, dtype).reshape(len(values), *shape)
    out = _Layout(arity, fields, attr_columns).create(
        handle, names, len(records), {f: sum(map(len, v)) for f, v in rows.items()},
        {name: column.dtype.itemsize for name, column in columns.items()
         if column.dtype.kind == "S"})
    index = {bytes(n): i for i, n in enumerate(names)}
    out["key"][...] = np.array([[index[_encode(n)] for n in key] for key, _, _ in records],
                               np.int64).reshape(out["key"].shape)
    out["offset"][...] = offsets
    out["count"][...] = counts
    out["crc32"][...] = crc
    for field, values in rows.items():
        if values and sum(map(len, values)):
            out[f"rows:{field}"][...] = np.concatenate(values)
    for name, column in columns.items():
        if len(column):
            out[f"attr:{name}"][...] = column


def _merge_files(sources: list[Path], out: h5py.File, arity: int,
                 attr_columns: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """Write into ``out`` every record of ``sources`` (packed files, in order: a record
    in a later one replaces the same key's in an earlier one); returns the record count.
    Rows are copied in blocks, so memory is bounded by the record tables, not by the data:
    between its two passes the merge keeps a few bytes per record (key, row count, fields
    present), not each part's table (a run of 100k images leaves ~1600 shards)."""
    names_of, keys_of, counts_of, present_of, fields_of = [], [], [], [], []
    part_shapes: dict[tuple, None] = {}   # the distinct (field specs, has rows) of the parts
    part_fields: dict[tuple[str, ...], tuple[str, ...]] = {}   # one tuple per field set
    text_widths = dict.fromkeys(attr_columns, 1)
    for source in sources:
        with open_h5(source) as handle:
            index = _PackedIndex(handle, source, keep_keys=True)
            specs = tuple((f, d.dtype, d.shape[1:]) for f, d in index.rows.items())
            part_shapes[specs, any(d.shape[0] for d in index.rows.values())] = None
            for name, column in index.columns.items():
                if name in text_widths and column.dtype.kind == "S":
                    text_widths[name] = max(text_widths[name], column.dtype.itemsize)
            names_of.append(index.names)
            keys_of.append(index.key_indices)
            counts_of.append(index.counts)
            present_of.append(np.stack([index.starts(slice(None), column) >= 0
                                        for column in range(len(index.fields))], axis=1)
                              if index.fields else np.empty((len(index.counts), 0), bool))
            fields_of.append(part_fields.setdefault(index.fields, index.fields))
    fields = _row_shapes((({f: (dtype, shape) for f, dtype, shape in specs}, has_rows)
                          for specs, has_rows in part_shapes),
                         sources[0] if sources else Path("?"))
    names = np.unique(np.concatenate(names_of)) if sources else np.empty(0, "S1")
    codes = []
    for part_names, part_keys in zip(names_of, keys_of):
        mapped = np.searchsorted(names, part_names)[part_keys]
        codes.append(mapped if arity == 1 else mapped[:, 0] * len(names) + mapped[:, 1])
    del names_of, keys_of
    all_codes = np.concatenate(codes) if codes else np.empty(0, np.int64)
    bounds = np.cumsum([0] + [len(c) for c in codes])
    del codes
    winning = _last_occurrences(all_codes)   # the last source holding a key wins
    kept = [np.flatnonzero(winning[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    field_rows = dict.fromkeys(fields, 0)
    for keep, counts, present, own_fields in zip(kept, counts_of, present_of, fields_of):
        for column, field in enumerate(own_fields):
            field_rows[field] += int(counts[keep][present[keep, column]].sum())
    del counts_of, present_of
    dest = _Layout(arity, fields, attr_columns).create(
        out, names, sum(map(len, kept)), field_rows, text_widths)
    record, positions = 0, dict.fromkeys(fields, 0)
    for source, keep, first in zip(sources, kept, bounds[:-1]):
        if not len(keep):
            continue
        span = slice(record, record + len(keep))
        part_codes = all_codes[first + keep]
        dest["key"][span] = (part_codes if arity == 1 else
                             np.stack(np.divmod(part_codes, len(names)), axis=1))
        with open_h5(source) as handle:
            index = _PackedIndex(handle, source)
            dest["count"][span] = index.counts[keep]
            offsets = np.full((len(keep), len(fields)), -1, np.int64)
            crc = np.zeros((len(keep), len(fields)), np.uint32)
            for column, field in enumerate(fields):
                if field not in index.fields:
                    continue
                source_column = index.fields.index(field)
                present = np.flatnonzero(index.starts(keep, source_column) >= 0)
                starts = index.starts(keep[present], source_column)
                counts = index.counts[keep[present]]
                in_order = np.argsort(starts, kind="stable")
                new_starts = np.empty(len(present), np.int64)
                new_starts[in_order] = positions[field] + np.concatenate(
                    [[0], np.cumsum(counts[in_order])[:-1]]).astype(np.int64)
                offsets[present, column] = new_starts
                crc[present, column] = index.crc[keep[present], source_column]
                positions[field] = _copy_rows(index.rows[field], dest[f"rows:{field}"],
                                              starts[in_order], counts[in_order],
                                              positions[field])
            for name in attr_columns:
                if name in index.columns:
                    _copy_column(index.columns[name], keep, dest[f"attr:{name}"], record)
            index.rows = index.columns = {}   # no dataset outlives the handle
        dest["offset"][span] = offsets
        dest["crc32"][span] = crc
        record += len(keep)
    return record


def _last_occurrences(codes: np.ndarray) -> np.ndarray:
    """A mask of the last occurrence of each value in ``codes``."""
    order = np.argsort(codes, kind="stable")    # stable: equal codes keep their order
    sorted_codes = codes[order]
    last = np.ones(len(order), bool)
    last[:-1] = sorted_codes[1:] != sorted_codes[:-1]
    mask = np.zeros(len(codes), bool)
    mask[order[last]] = True
    return mask


def _copy_rows(source: h5py.Dataset, target: h5py.Dataset, starts: np.ndarray,
               counts: np.ndarray, position: int) -> int:
    """The rows of records ``starts``/``counts`` (sorted by start) appended to ``target``
    at ``position``, adjacent records read together, in blocks of ``_COPY_BYTES``;
    returns the position after them."""
    row_bytes = max(1, source.dtype.itemsize * int(np.prod(source.shape[1:])))
    step = max(1, _COPY_BYTES // row_bytes)
    for begin, end in _runs(starts, counts):
        for block in range(begin, end, step):
            stop = min(end, block + step)
            target[position:position + stop - block] = source[block:stop]
            position += stop - block
    return position


def _copy_column(source: h5py.Dataset, keep: np.ndarray, target: h5py.Dataset,
                 start: int) -> None:
    """``source[keep]`` written to ``target[start:]``, read in blocks of records."""
    if np.any(np.diff(keep) <= 0):      # not in storage order: read it whole
        target[start:start + len(keep)] = source[()][keep].astype(target.dtype)
        return
    step = 1 << 16
    for first in range(0, len(keep), step):
        part = keep[first:first + step]
        span = source[int(part[0]):int(part[-1]) + 1]
        target[start + first:start + first + len(part)] = \
            span[part - part[0]].astype(target.dtype)


def _offset_table(dataset: h5py.Dataset) -> np.ndarray:
    """The R×F offsets, or R×1 when every record has every field at the same offset (the
    usual case: a reader of 100k images then keeps 8 bytes per image for them, not 40),
    read column by column so the full table is never in memory."""
    first = dataset[:, 0] if dataset.shape[1] else np.empty((dataset.shape[0], 0), np.int64)
    if dataset.shape[1] > 1 and all(np.array_equal(dataset[:, column], first)
                                    for column in range(1, dataset.shape[1])):
        return first.reshape(-1, 1)
    return dataset[()]


class _PackedIndex:
    """A packed (schema 3) file opened for reading: its record index in memory (sorted
    names, record keys as indices into them, row ranges, checksums) and its datasets."""

    def __init__(self, handle: h5py.File, path: Path, keep_keys: bool = False) -> None:
        """``keep_keys``: keep ``key_indices`` (the merge needs them; a reader looks keys up
        in the tables built from them)."""
        self.path = path
        try:
            self.names = handle[_NAMES][()]
            self.key_indices = handle[_KEY][()]
            offsets = handle[_OFFSET]
            self.fields = tuple(json.loads(offsets.attrs["fields"]))
            self.offsets = _offset_table(offsets)
            self.counts = handle[_COUNT][()]
            self.crc = handle[_CRC][()]
            self.rows = {f: handle[_ROWS][f] for f in self.fields}
            self.columns = dict(handle[_ATTRS].items()) if _ATTRS in handle else {}
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise StoreError(f"{path}: the record index is unreadable ({err}); delete the "
                             "file and rerun") from err
        self.arity = 1 if self.key_indices.ndim == 1 else 2
        self._loaded: dict[str, np.ndarray] = {}
        self._validate()
        self._shared_offsets = self.offsets.shape[1] == 1 and len(self.fields) > 1
        if len(self.counts) and self.counts.max() < 2**31:
            self.counts = self.counts.astype(np.int32)
        position_type = np.int32 if len(self.counts) < 2**31 else np.int64
        if self.arity == 1:   # record of each name (-1: none), names being sorted
            self._record_of = np.full(len(self.names), -1, position_type)
            self._record_of[self.key_indices] = np.arange(len(self.counts))
            if np.count_nonzero(self._record_of >= 0) != len(self.counts):
                raise self._corrupt("a key is stored twice")
        else:                 # records sorted by (name_a, name_b)
            codes = self._codes(self.key_indices)
            self._order = np.argsort(codes, kind="stable").astype(position_type)
            self._sorted = codes[self._order]
            if np.any(self._sorted[1:] == self._sorted[:-1]):
                raise self._corrupt("a key is stored twice")
        if not keep_keys:
            self.key_indices = None

    def _corrupt(self, why: str) -> StoreError:
        return StoreError(f"{self.path}: the record index is corrupt ({why}); delete the "
                          "file and rerun")

    def _validate(self) -> None:
        count, keys = len(self.counts), self.key_indices
        table = (count, len(self.fields))
        if (keys.ndim not in (1, 2) or (keys.ndim == 2 and keys.shape[1] != 2)
                or len(keys) != count or self.counts.ndim != 1
                or self.offsets.shape not in (table, (count, 1)) or self.crc.shape != table):
            raise self._corrupt("its tables disagree in length")
        if self.names.dtype.kind != "S" or np.any(self.names[1:] <= self.names[:-1]):
            raise self._corrupt("the names are not sorted")
        if count and (keys.min() < 0 or keys.max() >= len(self.names)
                      or self.offsets.min() < -1 or self.counts.min() < 0):
            raise self._corrupt("an index is out of range")
        for column, dataset in enumerate(self.rows.values()):
            starts = self.offsets[:, min(column, self.offsets.shape[1] - 1)]
            ends = np.where(starts >= 0, starts + self.counts, 0)
            if count and ends.max() > dataset.shape[0]:
                raise self._corrupt("a record lies beyond the end of its rows")

    def _codes(self, indices: np.ndarray) -> np.ndarray:
        return indices[:, 0].astype(np.int64) * len(self.names) + indices[:, 1]

    def starts(self, records: Any, column: int) -> Any:
        """The first row of ``records`` in field number ``column`` (-1: absent)."""
        return self.offsets[records, 0 if self._shared_offsets else column]

    def image_names(self) -> NameList:
        """The names of a per-image file's records, sorted."""
        if len(self.counts) == len(self.names):   # each name is a record's (the usual)
            return NameList(self.names)
        return NameList(self.names[self._record_of >= 0])

    def keys(self) -> Iterator[tuple[str, ...]]:
        """Every record's key, sorted (by name, then by the second name)."""
        if self.arity == 1:
            yield from ((name,) for name in self.image_names())
            return
        decoded = [_decode(bytes(n)) for n in self.names]
        for block in range(0, len(self._sorted), 1 << 16):
            for code in self._sorted[block:block + (1 << 16)].tolist():
                first, second = divmod(code, len(decoded))
                yield decoded[first], decoded[second]

    def find(self, key: tuple[str, ...]) -> int | None:
        if len(key) != self.arity:
            return None
        indices = [_name_position(self.names, name) for name in key]
        if None in indices:
            return None
        if self.arity == 1:
            record = int(self._record_of[indices[0]])
            return record if record >= 0 else None
        code = indices[0] * len(self.names) + indices[1]
        position = int(np.searchsorted(self._sorted, code))
        if position == len(self._sorted) or self._sorted[position] != code:
            return None
        return int(self._order[position])

    def fields_of(self, record: int) -> tuple[str, ...]:
        return tuple(f for column, f in enumerate(self.fields)
                     if self.starts(record, column) >= 0)

    def read(self, record: int, field: str, what: str) -> np.ndarray:
        column = self.fields.index(field) if field in self.fields else -1
        start = int(self.starts(record, column)) if column >= 0 else -1
        if start < 0:
            raise StoreError(f"{self.path}: {what} has no {field}")
        count = int(self.counts[record])
        try:
            value = self.rows[field][start:start + count]
        except OSError as err:
            raise StoreError(f"{self.path}: the {field} of {what} are unreadable ({err}); "
                             "delete the file and rerun") from err
        if len(value) != count or _crc32(value) != self.crc[record, column]:
            raise StoreError(f"{self.path}: the {field} of {what} are corrupt (checksum "
                             "mismatch); delete the file and rerun")
        return value

    def read_rows(self, records: Sequence[int], field: str) -> np.ndarray:
        """The rows of several one-row records, stacked in the order given (read by runs of
        adjacent rows, each row checked against its checksum)."""
        records = np.asarray(records, np.int64)
        column = self.fields.index(field)
        starts = self.starts(records, column)
        if np.any(self.counts[records] != 1) or np.any(starts < 0):
            raise StoreError(f"{self.path}: not every record holds one row of {field}")
        dataset = self.rows[field]
        out = np.empty((len(records), *dataset.shape[1:]), dataset.dtype)
        order = np.argsort(starts, kind="stable")
        done = 0
        for begin, end in _runs(starts[order], np.ones(len(order), np.int64)):
            block = dataset[begin:end]
            for row in range(len(block)):
                target = order[done + row]
                if _crc32(block[row:row + 1]) != self.crc[records[target], column]:
                    raise StoreError(f"{self.path}: the {field} of a record are corrupt "
                                     "(checksum mismatch); delete the file and rerun")
                out[target] = block[row]
            done += len(block)
        return out

    def attr(self, record: int, name: str) -> Any:
        column = self.columns.get(name)
        if column is None:
            return None
        if column.dtype.kind == "S":
            return bytes(column[record]).decode() or None
        if name not in self._loaded:   # numeric columns are small: read whole, once
            self._loaded[name] = column[()]
        return self._loaded[name][record]


class _GroupIndex:
    """A schema 2 file (one HDF5 group per record), read only, behind the same methods as
    ``_PackedIndex``; a record is addressed by its group's path."""

    def __init__(self, handle: h5py.File, path: Path) -> None:
        self.handle, self.path = handle, path

    def keys(self) -> Iterator[tuple[str, ...]]:
        return record_keys(self.handle)

    def find(self, key: tuple[str, ...]) -> str | None:
        item = record_path(key)
        return item if item in self.handle else None

    def fields_of(self, record: str) -> tuple[str, ...]:
        return tuple(self.handle[record].keys())

    def read(self, record: str, field: str, what: str) -> np.ndarray:
        return _read_checked(self.handle[record], field, self.path, what)

    def read_rows(self, records: Sequence[str], field: str) -> np.ndarray:
        return np.stack([self.read(r, field, repr(r)).reshape(-1) for r in records])

    def attr(self, record: str, name: str) -> Any:
        value = self.handle[record].attrs.get(name)
        if isinstance(value, bytes):
            value = value.decode()
        return value


class RecordWriter:
    """Buffered, crash-safe, resumable writer of per-image or per-pair records of one kind
    (the base of every store writer: features, matches, global descriptors).

    ``add(key, datasets, attrs)`` buffers a record (``key``: one image name or an ordered
    pair, see ``pair_key``; ``datasets``: arrays with one row per keypoint/match, the same
    row count in all; ``attrs``: the values of the class's ``attr_columns``);
    ``key in writer.done`` tells what is stored already (this run or a resumed one)."""

    key_arity: ClassVar[int] = 1
    # per-record attributes: name -> (dtype or "str", shape of one value)
    attr_columns: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {}

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
        self._stored: _PackedIndex | None = None
        self._stored_handle: h5py.File | None = None
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
            self._close_stored()
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
        sink.done, sink._lock = KeySet(), None
        sink._stored = sink._stored_handle = None
        return sink

    def _resume(self, overwrite: bool) -> None:
        """Check every part a killed run left (the final file and its shards) against this
        run's config, merge the shards into the final file, and hold its index."""
        if overwrite:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.shard_dir, ignore_errors=True)
        self.done = KeySet()
        shards = self._shards()
        sources = ([self.path] if self.path.exists() else []) + shards
        for source in sources:
            with open_h5(source) as handle:
                self._refuse_foreign(handle, source)
                self.info.check(handle, source)
        if shards:
            self._merge(sources)
        if self.path.exists():
            self._stored_handle = open_h5(self.path)
            self._stored = _PackedIndex(self._stored_handle, self.path)
            self.done.update(self._stored.keys())
            logger.info("%s: %d items already stored, resuming", self.path, len(self.done))

    def stored_attr(self, key: tuple[str, ...], name: str) -> Any:
        """Attribute ``name`` of the record of ``key`` stored before this run (None: no
        such record, or it carries none)."""
        if self._stored is None:
            return None
        record = self._stored.find(key)
        return None if record is None else self._stored.attr(record, name)

    def _close_stored(self) -> None:
        if self._stored_handle is not None:
            self._stored_handle.close()
            self._stored_handle = self._stored = None

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
        if len(key) != self.key_arity:
            raise StoreError(f"{self.path}: record key {key!r} is not "
                             f"{'an image name' if self.key_arity == 1 else 'a pair'}")
        for name in key:
            escape_name(name)   # refuses names no file can have ("", ".", "..")
        datasets = {f: np.asarray(v) for f, v in datasets.items()}
        if len({len(v) if v.ndim else -1 for v in datasets.values()}) > 1 or any(
                v.ndim == 0 for v in datasets.values()):
            raise StoreError(f"{self.path}: the arrays of {key!r} differ in row count: "
                             + ", ".join(f"{f} {v.shape}" for f, v in datasets.items()))
        unknown = set(attrs) - set(self.attr_columns)
        if unknown:
            raise StoreError(f"{self.path}: no column for the attribute(s) {sorted(unknown)}")
        self._buffer = [item for item in self._buffer if item[0] != key] \
            if key in self.done else self._buffer
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
        # built in memory, then written as plain bytes: a full disk is then an OSError of
        # ours, never an HDF5 flush that fails half way (HDF5 then corrupts its own heap)
        image = io.BytesIO()
        with h5py.File(image, "w") as handle:
            self.info.write_attrs(handle)
            _write_records(handle, self._buffer, self.key_arity, self.attr_columns,
                           self.path)
        try:
            with atomic_path(self.shard_dir / name) as tmp:
                tmp.write_bytes(image.getbuffer())
        except OSError as err:
            err.filename = err.filename or str(self.path)
            raise
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and merge everything into the final file (atomic replace); a
        ``shard_sink`` only flushes."""
        if self._lock is None:
            self.flush()
            return
        try:
            if not self._closed:
                self.flush()
                self._closed = True
                self._close_stored()
                shards = self._shards()
                if shards or not self.path.exists():
                    self._merge(([self.path] if self.path.exists() else []) + shards)
        finally:
            self._close_stored()
            self._lock.release()

    def _merge(self, sources: list[Path]) -> None:
        """The final file replaced (atomically) by the records of ``sources`` merged, then
        the shards removed."""
        # An HDF5 file whose writes fail for want of space cannot be closed cleanly (HDF5
        # corrupts its heap): refuse before writing when the parts would not fit (their
        # sizes bound the merged file's), and release every dataset before closing
        needed = sum(source.stat().st_size for source in sources) + (256 << 10)
        if shutil.disk_usage(self.path.parent).free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        try:
            with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as out:
                self.info.write_attrs(out)
                try:
                    _merge_files(sources, out, self.key_arity, self.attr_columns)
                except BaseException as err:
                    traceback.clear_frames(err.__traceback__)
                    raise
        except (OSError, RuntimeError) as err:
            if "errno = 28" in str(err) or getattr(err, "errno", None) == errno.ENOSPC:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) from None
            raise
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
            self._close_stored()
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

    Checks the kind and schema version and exposes the method, config hash and config.
    Reads the packed layout (schema 3) and the one-group-per-record layout (schema 2)."""

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
        try:
            self._open_index()
        except BaseException:
            self._handle.close()
            raise
        attrs = self._handle.attrs
        self.method = str(attrs["method"])
        self.config_hash = str(attrs["config_hash"])
        self.config = json.loads(attrs["config"])
        # {"preset": name, "overrides": {...}} of the extractor that made the file
        self.spec = json.loads(attrs["spec"]) if "spec" in attrs else None

    def _open_index(self) -> None:
        attrs = self._handle.attrs
        if "kind" not in attrs:
            from .hloc import ITEM_DATASETS

            raise StoreError(
                f"{self.path} is neither an sfmfeat {self.kind.replace('_', ' ')} store (no "
                "'kind' attribute) nor an hloc-layout file (no group holding "
                f"{ITEM_DATASETS[self.kind]!r}); pass a file sfmfeat or hloc wrote")
        if attrs.get("kind") != self.kind:
            raise StoreError(f"{self.path} holds {attrs.get('kind')}, not {self.kind}")
        version = check_schema(attrs, self.path, READABLE_SCHEMAS)
        self._index: _PackedIndex | _GroupIndex = (
            _PackedIndex(self._handle, self.path) if version == SCHEMA_VERSION
            else _GroupIndex(self._handle, self.path))

    def keys(self) -> list[tuple[str, ...]]:
        """The key of every record: ``(name,)`` per image, ``(name_a, name_b)`` per pair."""
        return list(self._index.keys())

    def has(self, key: tuple[str, ...]) -> bool:
        return self._index.find(key) is not None

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- features

class FeatureWriter(RecordWriter):
    """Writes features.h5; ``name in writer`` tells whether an image is already done."""

    attr_columns = {"image_size": ("int64", (2,)), "keypoints_digest": ("str", ()),
                    "fingerprint": ("str", ())}

    def __init__(self, path: str | Path, method: str, config_hash: str,
                 config: dict[str, Any], overwrite: bool = False,
                 spec: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(path, StoreInfo("features", method, config_hash, config, spec=spec),
                         overwrite=overwrite, **kwargs)

    def __contains__(self, name: str) -> bool:
        return (name,) in self.done

    def stored_fingerprint(self, name: str) -> dict[str, Any] | None:
        """The fingerprint of the image file a stored record came from (None: unknown)."""
        value = self.stored_attr((name,), "fingerprint")
        return json.loads(value) if value else None

    def write(self, name: str, features: Features, image_size: tuple[int, int],
              fingerprint: dict[str, Any] | None = None) -> None:
        datasets = {f: getattr(features, f) for f in _FEATURE_FIELDS
                    if getattr(features, f) is not None}
        attrs = {"image_size": np.asarray(image_size, np.int64),
                 "keypoints_digest": keypoints_digest(features.keypoints)}
        if fingerprint is not None:
            attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        self.add((name,), datasets, attrs)


class ImageRecordReader(StoreReader):
    """A store of one record per image: ``names()`` and ``name in reader``."""

    def names(self) -> Sequence[str]:
        """The image names, sorted (a ``NameList``: decoded as read)."""
        if isinstance(self._index, _PackedIndex):
            return self._index.image_names()
        return [key[0] for key in self._index.keys()]

    def __contains__(self, name: str) -> bool:
        return self.has((name,))


class FeatureReader(ImageRecordReader):
    """Read access to a finished features.h5."""

    kind = "features"
    missing_hint = "run `sfmfeat extract` first"

    def _record(self, name: str) -> Any:
        record = self._index.find((name,))
        if record is None:
            raise StoreError(f"{self.path} has no features for image {name!r}")
        return record

    def read(self, name: str) -> Features:
        record = self._record(name)
        fields = self._index.fields_of(record)
        values = {f: self._index.read(record, f, repr(name)) for f in _FEATURE_FIELDS
                  if f in fields}
        width, height = self._index.attr(record, "image_size")
        return Features(**values, image_size=(int(width), int(height)))

    def keypoints(self, name: str) -> np.ndarray:
        return self._index.read(self._record(name), "keypoints", repr(name))

    def image_size(self, name: str) -> tuple[int, int]:
        width, height = self._index.attr(self._record(name), "image_size")
        return int(width), int(height)

    def keypoints_digest(self, name: str) -> str:
        """The record's lineage identity (computed for records of older stores)."""
        record = self._record(name)
        stored = self._index.attr(record, "keypoints_digest")
        return (str(stored) if stored is not None
                else keypoints_digest(self._index.read(record, "keypoints", repr(name))))

    def fingerprint(self, name: str) -> dict[str, Any] | None:
        value = self._index.attr(self._record(name), "fingerprint")
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

    key_arity = 2
    attr_columns = {"features_digests": ("str", ())}

    def __contains__(self, pair: tuple[str, str]) -> bool:
        name_a, name_b, _ = pair_key(*pair)
        return (name_a, name_b) in self.done

    def stored_digests(self, name0: str, name1: str) -> tuple[str, str] | None:
        """The feature digests a stored pair was matched from, in (name0, name1) order."""
        name_a, name_b, swapped = pair_key(name0, name1)
        return _ordered_digests(self.stored_attr((name_a, name_b), "features_digests"),
                                swapped)

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
        record = self._index.find((name_a, name_b))
        if record is None:
            raise StoreError(f"{self.path} has no matches for {name0!r} - {name1!r}")
        what = f"{name0!r} - {name1!r}"
        matches = self._index.read(record, "matches", what)
        scores = self._index.read(record, "scores", what)
        if swapped:
            matches = np.ascontiguousarray(matches[:, ::-1])
        return matches, scores

    def features_digests(self, name0: str, name1: str) -> tuple[str, str] | None:
        """The keypoints digests the pair was matched from, in (name0, name1) order."""
        name_a, name_b, swapped = pair_key(name0, name1)
        record = self._index.find((name_a, name_b))
        if record is None:
            raise StoreError(f"{self.path} has no matches for {name0!r} - {name1!r}")
        return _ordered_digests(self._index.attr(record, "features_digests"), swapped)


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

