"""IDX files (the MNIST format): parse and validate, and write them back.

Layout: two zero bytes, an element-type code, the number of dimensions, then one big-endian
uint32 per dimension, then the elements in C order. Files may be gzipped (detected by content,
not by name). Every check names the file and the problem, because a truncated download or a
mislabelled file is the usual reason training data is wrong.
"""

from __future__ import annotations

import gzip
import math
import os
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
    """Bytes of an IDX file (raw or gzipped) -> array with the file's shape; `name` is used in errors.

    A gzipped file is inflated as a stream and only as far as its header says the data goes (plus one
    byte, to catch trailing data): a small .gz that inflates to gigabytes is refused without them."""
    gzipped = raw[:2] == b"\x1f\x8b"
    if gzipped:
        head = _inflate(raw, MAX_HEADER + 1, name)
        raw = _inflate(raw, _declared_size(head, name) + 1, name)
    if len(raw) == 0:
        raise DataError(f"{name}: file is empty")
    header, dims, dtype = _header(raw, name)
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a hostile header overflows int64
    got = len(raw) - header
    if got < expected:
        raise DataError(f"{name}: truncated, {got} bytes of data where the header {list(dims)} needs {expected}")
    if got > expected:  # inflated only one byte past the data: their count is unknown
        extra = "more bytes" if gzipped else f"{got - expected} unexpected bytes"
        raise DataError(f"{name}: {extra} after the data of shape {list(dims)}")
    return np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(dims)


MAX_HEADER = 4 + 4 * 255  # magic, then one uint32 per dimension (at most 255)


def _header(raw: bytes, name: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """-> (header length, dimensions, element type) of IDX bytes, or DataError."""
    if len(raw) < 4:
        raise DataError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(f"{name}: bad IDX magic number 0x{raw[:4].hex()} (not an IDX file?)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} of {header} bytes)")
    return header, struct.unpack(f">{ndim}I", raw[4:header]), _DTYPES[code]


def _declared_size(head: bytes, name: str) -> int:
    """The whole file's size as its header declares it; refused when it would not fit in memory."""
    if len(head) == 0:
        raise DataError(f"{name}: file is empty")
    header, dims, dtype = _header(head, name)
    size = header + math.prod(dims) * dtype.itemsize  # Python ints: a hostile header overflows int64
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > memory // 2:
        raise DataError(
            f"{name}: its header {list(dims)} declares {size:,} bytes, more than half this machine's memory"
        )
    return size


def _inflate(raw: bytes, limit: int, name: str) -> bytes:
    """The first `limit` bytes (or fewer, if the file ends first) of gzipped data, inflated as a stream;
    several gzip members are read one after another, as gzip itself does."""
    out, rest = bytearray(), raw
    try:
        while rest and len(out) < limit:
            d = zlib.decompressobj(wbits=31)  # 31: a gzip container
            out += d.decompress(rest, limit - len(out))
            if not d.eof:
                if d.unconsumed_tail and len(out) >= limit:
                    break  # stopped at the limit, more data follows
                raise DataError(f"{name}: truncated or corrupt gzip data (the stream ends early)")
            rest = d.unused_data.lstrip(b"\0")  # members may be padded with zeros
    except zlib.error as e:
        raise DataError(f"{name}: truncated or corrupt gzip data ({e})") from None
    return bytes(out)


def encode_idx(array: np.ndarray, compress: bool = True) -> bytes:
    """Array -> IDX bytes (gzipped by default, deterministic: no timestamp in the gzip header)."""
    dtype = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else np.dtype(array.dtype)
    if dtype not in _CODES:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    head = struct.pack(">HBB", 0, _CODES[dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = head + np.ascontiguousarray(array, dtype=dtype).tobytes()
    return gzip.compress(raw, compresslevel=9, mtime=0) if compress else raw
