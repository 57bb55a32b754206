"""MATLAB MAT-files, the subset that published proposal files use: cell arrays of numeric and char matrices.

Two containers (R-CNN's and Fast R-CNN's Selective Search and EdgeBoxes files are either):

- **Level 5** (``save -v6`` / ``-v7``, MATLAB's default): a 128-byte header (``MATLAB 5.0 MAT-file``, version
  ``0x0100``, endian mark ``IM`` little / ``MI`` big), then one data element per variable. A data element is
  an 8-byte tag (type, byte count; the *small* form packs both into 4 bytes and its data into the other 4)
  and its data, padded to 8 bytes. ``miCOMPRESSED`` (15) elements (``-v7``) hold a zlib stream of one element;
  ``miMATRIX`` (14) elements hold array flags (class), dimensions, name, then the real part (any stored
  integer or float type, converted to the class: MATLAB stores whole-valued doubles as small integers), or
  for a cell one ``miMATRIX`` per entry in column-major order. Char data is ``miUINT16``/``miUTF8``/``miUTF16``.
- **v7.3** (``save -v7.3``): HDF5 read with h5py. A variable is a dataset with a ``MATLAB_class`` attribute;
  a cell is an array of object references (its entries under ``#refs#``); dimensions are stored reversed
  (a MATLAB ``R x 4`` matrix is an HDF5 ``4 x R`` dataset); an empty array holds its dimensions and the
  attribute ``MATLAB_empty``.

``read_mat(path, names)`` gives each named variable as Python values: a cell as a list (column-major, i.e.
MATLAB's linear order), a numeric matrix as a 2-D float64 ``numpy`` array, a char row as ``str`` (a char
matrix as a list of its rows, trailing blanks removed). Structs, objects, sparse and complex arrays are
refused with a ``DataError`` naming the variable. Sizes come from an untrusted file: every count is checked
against the bytes there, and a compressed element may not inflate past ``MAX_INFLATED`` bytes.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

MAX_INFLATED = 1 << 32  # bytes one compressed variable may inflate to (SS for VOC07 test: ~0.3 GB)
MAX_DEPTH = 8  # cells inside cells
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_CHAR_CODECS = {16: "utf-8", 17: "utf-16", 18: "utf-32"}
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE = 1, 2, 3, 4, 5
_NUMERIC_CLASSES = range(6, 16)  # double, single, int8 .. uint64
_CLASS_NAMES = {_STRUCT: "a struct", _OBJECT: "an object", _SPARSE: "a sparse matrix", 16: "a function handle",
                17: "an opaque object (a MATLAB string?)"}
_HINT = "save it from MATLAB as cell arrays of numeric matrices and char rows (save -v7 or -v7.3)"


class _Fail(Exception):
    """A problem inside the file; ``read_mat`` turns it into a ``DataError`` naming the file."""


def read_mat(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, Any]:
    """The variables ``names`` of the MAT-file ``path`` that it holds (level 5 or v7.3), as Python values
    (module docstring); a variable it lacks is absent from the result. Problems are ``DataError``s."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check the path") from None
    try:
        if _is_hdf5(path):
            return _read_v73(path, names)
        if len(head) < 128 or not head.startswith(b"MATLAB"):
            raise _Fail("is not a MATLAB MAT-file (no 'MATLAB' header)")
        return _read_v5(path.read_bytes(), names)
    except _Fail as exc:
        raise DataError(f"{path} {exc}; {_HINT}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None


def _is_hdf5(path: Path) -> bool:
    import h5py

    return bool(h5py.is_hdf5(path))


# --------------------------------------------------------------------------------------------------
# level 5


class _Reader:
    """Data elements of one byte buffer in the file's byte order."""

    def __init__(self, data: bytes | memoryview, order: str) -> None:
        self.data, self.order = memoryview(data), order

    def _u32(self, at: int) -> int:
        if at + 4 > len(self.data):
            raise _Fail(f"is cut short (a tag at byte {at} runs past the end)")
        return int.from_bytes(self.data[at:at + 4], "little" if self.order == "<" else "big")

    def element(self, at: int, padded: bool = True) -> tuple[int, memoryview, int]:
        """``(type, data, next offset)`` of the element at ``at``; ``padded``: the next one starts at a
        multiple of 8 (every element but a top-level compressed one)."""
        first = self._u32(at)
        if first >> 16:  # small data element: 2-byte size and type, data in the tag's second half
            size, kind = first >> 16, first & 0xFFFF
            if size > 4:
                raise _Fail(f"has a small data element of {size} bytes at byte {at} (at most 4)")
            return kind, self.data[at + 4:at + 4 + size], at + 8
        size = self._u32(at + 4)
        start, end = at + 8, at + 8 + size
        if end > len(self.data):
            raise _Fail(f"is cut short (an element of {size} bytes at byte {at} runs past the end)")
        return first, self.data[start:end], (end + 7) // 8 * 8 if padded else end

    def array(self, kind: int, data: memoryview) -> np.ndarray:
        if kind not in _NUMERIC:
            raise _Fail(f"has numeric data of unknown type {kind}")
        dtype = np.dtype(self.order + _NUMERIC[kind])
        if len(data) % dtype.itemsize:
            raise _Fail(f"has {len(data)} bytes of {dtype.name} data, not a whole number of values")
        return np.frombuffer(data, dtype=dtype)


def _inflate(body: memoryview) -> memoryview:
    stream = zlib.decompressobj()
    try:
        data = stream.decompress(body, MAX_INFLATED)
    except zlib.error as exc:
        raise _Fail(f"has a damaged compressed variable ({exc})") from None
    if stream.unconsumed_tail:
        raise _Fail(f"has a compressed variable of more than {MAX_INFLATED >> 30} GiB")
    return memoryview(data)


def _peek_name(body: memoryview, order: str) -> str | None:
    """The name of a compressed variable from the first bytes of its stream (None: read it whole)."""
    try:
        head = memoryview(zlib.decompressobj().decompress(body, 1024))
        if _Reader(head, order)._u32(0) != _MI_MATRIX:
            return ""
        return _header(_Reader(head[8:], order))[3]
    except (zlib.error, _Fail):
        return None


def _read_v5(data: bytes, names: tuple[str, ...]) -> dict[str, Any]:
    mark = data[126:128]
    if mark not in (b"IM", b"MI"):
        raise _Fail(f"has an unknown byte-order mark {mark!r} (a MAT-file of level 4?)")
    order = "<" if mark == b"IM" else ">"
    top = _Reader(data, order)
    found: dict[str, Any] = {}
    at = 128
    while at + 8 <= len(data) and len(found) < len(names):
        kind, body, end = top.element(at, padded=False)
        at = end if kind == _MI_COMPRESSED else (end + 7) // 8 * 8  # compressed elements are not padded
        if kind == _MI_COMPRESSED:
            if _peek_name(body, order) not in (*names, None):
                continue
            kind, body, _ = _Reader(_inflate(body), order).element(0, padded=False)
        if kind != _MI_MATRIX:
            continue
        reader = _Reader(body, order)
        name = _header(reader)[3] if len(body) else ""
        if name in names and name not in found:
            found[name] = _matrix_value(reader, name, 0)
    return found


def _header(r: _Reader) -> tuple[int, int, tuple[int, ...], str, int]:
    """``(class, flags, dims, name, offset of the data)`` of a matrix element's body."""
    kind, flags, at = r.element(0)
    if kind != 6 or len(flags) != 8:
        raise _Fail("has a matrix without valid array flags")
    word = struct.unpack_from(r.order + "I", flags)[0]
    kind, dims_data, at = r.element(at)
    if kind != 5 or len(dims_data) % 4:
        raise _Fail("has a matrix without valid dimensions")
    dims = struct.unpack(f"{r.order}{len(dims_data) // 4}i", dims_data)
    if len(dims) < 2 or min(dims) < 0:
        raise _Fail(f"has a matrix with invalid dimensions {dims}")
    kind, name, at = r.element(at)
    if kind not in (1, 2):
        raise _Fail("has a matrix whose name is not text")
    return word & 0xFF, (word >> 8) & 0xFF, dims, bytes(name).decode("latin-1"), at


def _matrix_value(r: _Reader, name: str, depth: int) -> Any:
    """The value of a matrix element (``r`` over its body); ``name`` says which variable in errors."""
    if not len(r.data):
        return np.zeros((0, 0))  # an empty array: an element with no body
    cls, flags, dims, _, at = _header(r)
    count = int(np.prod(dims))
    if cls == _CELL:
        if depth >= MAX_DEPTH:
            raise _Fail(f"nests cells more than {MAX_DEPTH} deep in {name!r}")
        entries = []
        for _ in range(count):
            kind, body, at = r.element(at)
            if kind != _MI_MATRIX:
                raise _Fail(f"has a cell entry of {name!r} that is not an array")
            entries.append(_matrix_value(_Reader(body, r.order), name, depth + 1))
        return entries
    if cls not in (_CHAR, *_NUMERIC_CLASSES):
        raise _Fail(f"holds {_CLASS_NAMES.get(cls, f'an array of class {cls}')} in {name!r}")
    if flags & 0x08:
        raise _Fail(f"holds a complex array in {name!r}")
    kind, body, _ = r.element(at) if count else (9, memoryview(b""), at)
    if cls == _CHAR:
        return _char_value(r, kind, body, dims, name)
    values = r.array(kind, body).astype(np.float64)
    if values.size != count:
        raise _Fail(f"has {values.size} values for an array of {dims} in {name!r}")
    return values.reshape(dims, order="F")


def _char_value(r: _Reader, kind: int, body: memoryview, dims: tuple[int, ...], name: str) -> str | list[str]:
    if kind in _CHAR_CODECS:
        codec = _CHAR_CODECS[kind] + ("" if kind == 16 else "-le" if r.order == "<" else "-be")
        chars = list(bytes(body).decode(codec, "replace"))
    else:
        chars = [chr(c) for c in r.array(kind, body).tolist()]
    return _char_rows(chars, dims, name)


def _char_rows(chars: list[str], dims: tuple[int, ...], name: str) -> str | list[str]:
    """A char array as a string (one row) or its rows (column-major ``chars`` of ``dims``)."""
    if len(dims) != 2 or len(chars) != dims[0] * dims[1]:
        raise _Fail(f"has a char array of {dims} with {len(chars)} characters in {name!r}")
    rows = ["".join(chars[i + dims[0] * j] for j in range(dims[1])).rstrip() for i in range(dims[0])]
    return rows[0] if len(rows) == 1 else rows if rows else ""


# --------------------------------------------------------------------------------------------------
# v7.3 (HDF5)

_H5_NUMERIC = ("double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
               "logical")


def _read_v73(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {name: _h5_value(f, f[name], name, 0) for name in names if name in f}
    except (KeyError, ValueError, TypeError) as exc:
        raise _Fail(f"is an HDF5 file that is not a readable MAT-file v7.3 ({exc})") from None


def _h5_text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _h5_value(f, obj, name: str, depth: int) -> Any:
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise _Fail(f"holds a struct or an object in {name!r}, not an array")
    cls = _h5_text(obj.attrs.get("MATLAB_class", b""))
    if obj.attrs.get("MATLAB_empty", 0):
        return [] if cls == "cell" else "" if cls == "char" else np.zeros((0, 0))
    data = obj[()]
    if cls == "cell":
        if depth >= MAX_DEPTH:
            raise _Fail(f"nests cells more than {MAX_DEPTH} deep in {name!r}")
        refs = np.asarray(data).T.ravel(order="F")  # HDF5 stores MATLAB's dimensions reversed
        return [_h5_value(f, f[ref], name, depth + 1) for ref in refs]
    if cls == "char":
        codes = np.atleast_2d(np.asarray(data).T)
        return _char_rows([chr(int(c)) for c in codes.ravel(order="F")], codes.shape, name)
    if cls not in _H5_NUMERIC:
        raise _Fail(f"holds an array of MATLAB class {cls or 'unknown'!r} in {name!r}")
    values = np.asarray(data)
    if values.dtype.kind not in "biuf":
        raise _Fail(f"holds {values.dtype} data (complex?) in {name!r}")
    return np.atleast_2d(values.T).astype(np.float64)
