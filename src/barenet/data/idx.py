"""IDX files, the format of MNIST and Fashion-MNIST (LeCun et al.), gzip-compressed or raw.

Layout (all integers big-endian):
    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     number of dimensions, ndim
    then        ndim uint32 sizes, then the elements in C order.
So an image file starts with magic 0x00000803 (uint8, 3 dims) and a label file 0x00000801.

The reader checks every one of these and the exact byte length before it allocates anything,
so that a wrong, short, long or hostile file is one clear `DataError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError
from ..files.atomic import atomic_write

TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_BYTES = 1 << 31  # refuse to allocate more than 2 GiB for one file's elements

_GZIP_MAGIC = b"\x1f\x8b"


def magic_number(dtype: np.dtype, ndim: int) -> int:
    """The 4-byte magic of an IDX file of `dtype` elements and `ndim` dimensions."""
    codes = {v.newbyteorder(">") if v.itemsize > 1 else v: k for k, v in TYPE_CODES.items()}
    dt = np.dtype(dtype)
    key = dt.newbyteorder(">") if dt.itemsize > 1 else dt
    if key not in codes:
        raise ValueError(f"IDX has no element type for {dt}")
    return codes[key] << 8 | ndim


def _read_exact(f: BinaryIO, n: int, name: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataError(f"{name}: file is too short ({what}: expected {n} bytes, got {len(data)})")
    return data


def read_idx(
    path: str | os.PathLike[str],
    *,
    expect_magic: int | None = None,
    expect_kind: str = "IDX",
) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, told apart by content, not by name).

    Arguments:
        path: the file.
        expect_magic: if given, the magic the file must have, e.g. 0x00000803 for images.
        expect_kind: what the caller expects, for the message ("IDX image", "IDX label").
    Returns:
        the array, with the file's shape and a native-byte-order dtype.
    Raises:
        DataError: missing file, bad gzip stream, wrong magic, short or over-long data.
    """
    path = Path(path)
    name = path.name
    try:
        raw = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None
    with raw:
        try:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            f: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
            return _parse(f, name, expect_magic, expect_kind)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{name}: corrupt gzip data ({e})") from None


def parse_idx(data: bytes, name: str = "<bytes>", *, expect_magic: int | None = None) -> np.ndarray:
    """Parse IDX content already in memory (uncompressed); same checks as `read_idx`."""
    return _parse(io.BytesIO(data), name, expect_magic, "IDX")


def _parse(f: BinaryIO, name: str, expect_magic: int | None, expect_kind: str) -> np.ndarray:
    header = _read_exact(f, 4, name, "header")
    magic = int.from_bytes(header, "big")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(
            f"{name}: not an {expect_kind} file (magic 0x{magic:08X}, expected 0x{expect_magic:08X})"
        )
    if header[:2] != b"\0\0":
        raise DataError(
            f"{name}: not an IDX file (magic 0x{magic:08X} does not start with two zero bytes)"
        )
    code, ndim = header[2], header[3]
    if code not in TYPE_CODES:
        raise DataError(f"{name}: unknown IDX element type 0x{code:02X}")
    if ndim == 0:
        raise DataError(f"{name}: IDX file declares 0 dimensions")
    shape = tuple(int(s) for s in np.frombuffer(_read_exact(f, 4 * ndim, name, "sizes"), ">u4"))
    dtype = TYPE_CODES[code]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else 0
    if nbytes > MAX_BYTES:
        raise DataError(
            f"{name}: IDX sizes {shape} declare {nbytes} bytes, more than the {MAX_BYTES} allowed"
        )
    body = _read_exact(f, nbytes, name, f"data of shape {shape}")
    if f.read(1):
        raise DataError(
            f"{name}: wrong length (extra bytes after the {nbytes} bytes of data of shape {shape})"
        )
    return np.frombuffer(body, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of `array`."""
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX arrays need 1 to 255 dimensions, not {array.ndim}")
    magic = magic_number(array.dtype, array.ndim)
    dt = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    sizes = np.asarray(array.shape, dtype=">u4").tobytes()
    return magic.to_bytes(4, "big") + sizes + np.ascontiguousarray(array, dtype=dt).tobytes()


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> None:
    """Write `array` as an IDX file, atomically; gzip-compressed if `compress`, or, when None,
    if the name ends in ".gz". The gzip header carries no time stamp, so output is reproducible."""
    path = Path(path)
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    with atomic_write(path) as f:
        f.write(data)
