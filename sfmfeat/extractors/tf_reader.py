"""Read TensorFlow weight files without TensorFlow.

Two formats carry the weights of TF1 models:

- a frozen ``GraphDef`` protobuf (``*.pb``), where every variable became a ``Const`` node
  holding a ``TensorProto``;
- a V2 checkpoint bundle: ``PREFIX.index`` is a LevelDB-style sorted table mapping each
  variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size) and
  ``PREFIX.data-SSSSS-of-NNNNN`` holds the raw little-endian tensor bytes.

Only the handful of protobuf fields these files use is decoded, with a small wire-format
reader. Any malformed input raises ``WeightsError`` naming the file.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import WeightsError

# tensorflow/core/framework/types.proto
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
           9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32,
           23: np.uint64}
_TABLE_MAGIC = 0xDB4775248B80FB57


class _Corrupt(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise _Corrupt("varint too long")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message.

    The value is an int for varint/fixed fields and a bytes slice for length-delimited ones.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = buf[pos:pos + length]
            if len(value) != length:
                raise _Corrupt("truncated field")
            pos += length
        elif wire == 5:
            value = buf[pos:pos + 4]
            pos += 4
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        yield number, wire, value


def _shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, _, value in _fields(buf):
        if number == 2:  # Dim
            size = 0
            for n, _, v in _fields(value):
                if n == 1:
                    size = v - (1 << 64) if v >= 1 << 63 else v
            dims.append(size)
    return tuple(dims)


def _tensor(buf: bytes) -> np.ndarray:
    """Decode a TensorProto (dtype, shape, tensor_content or the typed *_val fields)."""
    dtype_code, shape, content = 1, (), None
    values: list = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype_code = value
        elif number == 2:
            shape = _shape(value)
        elif number == 4:
            content = value
        elif number in (5, 6, 7, 10, 11, 13):   # float, double, int, int64, bool, half
            values.append((number, wire, value))
    if dtype_code not in _DTYPES:
        raise _Corrupt(f"unsupported tensor dtype code {dtype_code}")
    dtype = np.dtype(_DTYPES[dtype_code]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        array = np.frombuffer(content, dtype=dtype)
    else:
        array = _typed_values(values, dtype)
        if array.size == 1 and count > 1:      # TF stores a constant fill as one value
            array = np.full(count, array[0], dtype)
        elif array.size == 0:
            array = np.zeros(count, dtype)
    if array.size != count:
        raise _Corrupt(f"tensor of shape {shape} holds {array.size} values")
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _typed_values(values: list, dtype: np.dtype) -> np.ndarray:
    out: list = []
    for number, wire, value in values:
        if number == 5:
            out.extend(np.frombuffer(value, "<f4") if wire == 2
                       else struct.unpack("<f", value))
        elif number == 6:
            out.extend(np.frombuffer(value, "<f8") if wire == 2
                       else struct.unpack("<d", value))
        else:  # varint-encoded ints, bools and half bit patterns
            if wire == 2:
                pos = 0
                while pos < len(value):
                    v, pos = _varint(value, pos)
                    out.append(v)
            else:
                out.append(value)
    if dtype == np.float16:
        return np.array(out, np.uint16).view(np.float16)
    if np.issubdtype(dtype, np.signedinteger):
        out = [v - (1 << 64) if v >= 1 << 63 else v for v in out]
    return np.array(out, dtype=dtype)


def read_graphdef_constants(path: str | Path) -> dict[str, np.ndarray]:
    """Name -> value of every ``Const`` node of a frozen GraphDef (``*.pb``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise WeightsError(f"cannot read frozen graph {path}: {err}") from err
    constants: dict[str, np.ndarray] = {}
    try:
        nodes = 0
        for number, wire, node in _fields(data):
            if number != 1 or wire != 2:
                continue
            nodes += 1
            name = op = None
            tensor = None
            for n, _, value in _fields(node):
                if n == 1:
                    name = value.decode()
                elif n == 2:
                    op = value.decode()
                elif n == 5:  # map<string, AttrValue> entry
                    key = attr = None
                    for m, _, v in _fields(value):
                        if m == 1:
                            key = v.decode()
                        elif m == 2:
                            attr = v
                    if key == "value" and attr is not None:
                        for m, _, v in _fields(attr):
                            if m == 8:
                                tensor = v
            if op == "Const" and name and tensor is not None:
                constants[name] = _tensor(tensor)
    except (_Corrupt, UnicodeDecodeError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable frozen TensorFlow graph ({err})") from err
    if not nodes:
        raise WeightsError(f"{path} is not a frozen TensorFlow graph (no nodes found)")
    return constants


# ---------------------------------------------------------------- checkpoint bundles


def _block(data: bytes, offset: int, size: int) -> bytes:
    if offset + size + 5 > len(data):
        raise _Corrupt("block beyond end of file")
    kind = data[offset + size]
    if kind != 0:
        raise _Corrupt(f"compressed table block (type {kind}) is not supported")
    return data[offset:offset + size]


def _block_entries(block: bytes):
    if len(block) < 4:
        raise _Corrupt("short block")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _table_items(data: bytes):
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise _Corrupt("not a TensorFlow table (bad magic)")
    footer = data[-48:]
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    for _, handle in _block_entries(_block(data, index_offset, index_size)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        yield from _block_entries(_block(data, offset, size))


def checkpoint_prefix(path: str | Path) -> Path:
    """The bundle prefix of a checkpoint given as a prefix, an ``.index`` file or a folder
    (the ``checkpoint`` state file, else the only ``*.index`` in it)."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            for line in state.read_text().splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = line.split(":", 1)[1].strip().strip('"')
                    return path / Path(name).name
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise WeightsError(f"{path}: expected one checkpoint *.index file, "
                               f"found {len(indexes)}")
        return indexes[0].with_suffix("")
    if path.suffix == ".index":
        return path.with_suffix("")
    return path


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Name -> value of every full tensor in a TF V2 checkpoint bundle."""
    prefix = checkpoint_prefix(prefix)
    index = Path(f"{prefix}.index")
    try:
        data = index.read_bytes()
    except OSError as err:
        raise WeightsError(f"cannot read checkpoint index {index}: {err}") from err
    entries: dict[str, tuple] = {}
    num_shards = 1
    try:
        for key, value in _table_items(data):
            if key == b"":  # BundleHeaderProto
                for n, _, v in _fields(value):
                    if n == 1:
                        num_shards = v
                    elif n == 2 and v != 0:
                        raise _Corrupt("big-endian checkpoints are not supported")
                continue
            dtype, shape, shard, offset, size, sliced = 1, (), 0, 0, 0, False
            for n, _, v in _fields(value):
                if n == 1:
                    dtype = v
                elif n == 2:
                    shape = _shape(v)
                elif n == 3:
                    shard = v
                elif n == 4:
                    offset = v
                elif n == 5:
                    size = v
                elif n == 7:
                    sliced = True
            if not sliced:
                entries[key.decode()] = (dtype, shape, shard, offset, size)
    except (_Corrupt, UnicodeDecodeError, struct.error) as err:
        raise WeightsError(f"{index} is not a readable TensorFlow checkpoint index ({err})") \
            from err
    shards: dict[int, bytes] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, (dtype, shape, shard, offset, size) in entries.items():
        if dtype not in _DTYPES:
            continue  # strings and resources are not weights
        if shard not in shards:
            shard_path = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
            try:
                shards[shard] = shard_path.read_bytes()
            except OSError as err:
                raise WeightsError(f"checkpoint data shard {shard_path} is missing or "
                                   f"unreadable ({err})") from err
        raw = shards[shard][offset:offset + size]
        if len(raw) != size:
            raise WeightsError(f"checkpoint data shard of {prefix} is truncated at {name!r}")
        array = np.frombuffer(raw, np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        count = int(np.prod(shape)) if shape else 1
        if array.size != count:
            raise WeightsError(f"{prefix}: {name!r} holds {array.size} values for shape {shape}")
        tensors[name] = array.astype(array.dtype.newbyteorder("="), copy=True).reshape(shape)
    return tensors
