"""IDX files (the MNIST format): parse and validate, and write them back.

Layout: two zero bytes, an element-type code, the number of dimensions, then one big-endian
uint32 per dimension, then the elements in C order. Files may be gzipped (detected by content,
not by name). Every check names the file and the problem, because a truncated download or a
mislabelled file is the usual reason training data is wrong.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np

from lstmclf.errors import DataError

# IDX element-type code -> numpy dtype (multi-byte types are big-endian).
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {v: k for k, v in _DTYPES.items()}


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Bytes of an IDX file (raw or gzipped) -> array with the file's shape; `name` is used in errors."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{name}: truncated or corrupt gzip data ({e})") from None
    if len(raw) == 0:
        raise DataError(f"{name}: file is empty")
    if len(raw) < 4:
        raise DataError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(f"{name}: bad IDX magic number 0x{raw[:4].hex()} (not an IDX file?)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise DataError(f"{name}: truncated, {got} bytes of data where the header {list(dims)} needs {expected}")
    if got > expected:
        raise DataError(f"{name}: {got - expected} unexpected bytes after the data of shape {list(dims)}")
    return np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(dims)


def encode_idx(array: np.ndarray, compress: bool = True) -> bytes:
    """Array -> IDX bytes (gzipped by default, deterministic: no timestamp in the gzip header)."""
    dtype = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else np.dtype(array.dtype)
    if dtype not in _CODES:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    head = struct.pack(">HBB", 0, _CODES[dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = head + np.ascontiguousarray(array, dtype=dtype).tobytes()
    return gzip.compress(raw, compresslevel=9, mtime=0) if compress else raw
