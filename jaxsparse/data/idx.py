"""Reader for the IDX format (MNIST / Fashion-MNIST), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import os

import numpy as np

# IDX type codes -> numpy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (``.gz`` is decompressed on the fly) into a numpy array.

    Args:
        path: the file to read.

    Returns:
        The array with the shape and dtype recorded in the file header (native byte order).

    Raises:
        IDXFormatError: if the header is malformed or the payload size does not match it.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError.
        raise IDXFormatError(f"{path}: cannot be read as {'gzip ' if opener is gzip.open else ''}"
                             f"IDX data ({e}).") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path}: not an IDX file (bad magic number).")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}; valid codes are "
                             f"{sorted(hex(k) for k in _IDX_DTYPES)}.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{path}: truncated header ({len(raw)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXFormatError(f"{path}: payload is {len(raw) - header} bytes but the header "
                             f"shape {shape} needs {expected}; the file is corrupt or truncated.")
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Args:
        path: destination file.
        array: data of a dtype the format supports (uint8, int8, int16, int32, float32, float64).
    """
    codes = {v.newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    dt = array.dtype.newbyteorder("=")
    if dt not in codes:
        raise ValueError(f"dtype {array.dtype} cannot be stored in IDX; valid: "
                         f"{sorted(str(d) for d in codes)}.")
    code = codes[dt]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + payload)
