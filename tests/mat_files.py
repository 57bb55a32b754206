"""MAT-files written by the tests, from the MathWorks' "MAT-File Format" (level 5) and MATLAB's v7.3 HDF5 layout,
independently of ``frcnn_cli.data.mat_file``: ``write_v5`` (compressed as ``save -v7``, or not as ``-v6``; little
or big endian; whole numbers stored as MATLAB does, in the smallest integer type that holds them) and
``write_v73`` (cells as object references under ``#refs#``, dimensions reversed, ``MATLAB_class`` attributes).

Values: ``Cell([...])`` (an ``n x 1`` cell, or ``Cell(items, row=True)`` for ``1 x n``), ``str`` (a ``1 x n``
char row), ``numpy`` arrays (2-D, stored column-major as double).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MI = {"int8": 1, "uint8": 2, "int16": 3, "uint16": 4, "int32": 5, "uint32": 6, "double": 9, "matrix": 14,
      "compressed": 15, "utf8": 16}
CLASS = {"cell": 1, "char": 4, "double": 6}


@dataclass
class Cell:
    items: list
    row: bool = False


def _element(kind: int, data: bytes, order: str) -> bytes:
    if 0 < len(data) <= 4 and kind != MI["matrix"]:  # small data element: (size << 16 | type) as one uint32
        return struct.pack(order + "I", len(data) << 16 | kind) + data.ljust(4, b"\0")
    padded = data + b"\0" * (-len(data) % 8)
    return struct.pack(order + "II", kind, len(data)) + padded


def _compact(values: np.ndarray) -> tuple[int, str]:
    """MATLAB's storage of doubles: the smallest integer type holding every value when all are whole."""
    if values.size and np.all(values == np.round(values)):
        for name, dtype in (("uint8", "u1"), ("int8", "i1"), ("uint16", "u2"), ("int16", "i2"), ("int32", "i4")):
            info = np.iinfo(dtype)
            if values.min() >= info.min and values.max() <= info.max:
                return MI[name], dtype
    return MI["double"], "f8"


def _matrix(value, name: str, order: str) -> bytes:
    if isinstance(value, Cell):
        cls, dims = CLASS["cell"], ((1, len(value.items)) if value.row else (len(value.items), 1))
        body = b"".join(_matrix(item, "", order) for item in value.items)
    elif isinstance(value, str):
        cls, dims = CLASS["char"], (1, len(value))
        body = _element(MI["uint16"], np.array([ord(c) for c in value], dtype=order + "u2").tobytes(), order)
    else:
        values = np.asarray(value, dtype=np.float64)
        cls, dims = CLASS["double"], values.shape
        kind, dtype = _compact(values)
        body = _element(kind, values.ravel(order="F").astype(order + dtype).tobytes(), order)
    flags = _element(MI["uint32"], struct.pack(order + "II", cls, 0), order)
    dims_el = _element(MI["int32"], struct.pack(order + f"{len(dims)}i", *dims), order)
    name_el = _element(MI["int8"], name.encode("ascii"), order)
    return _element(MI["matrix"], flags + dims_el + name_el + body, order)


def write_v5(path: Path, variables: dict, *, compressed: bool = True, big_endian: bool = False) -> Path:
    order = ">" if big_endian else "<"
    text = b"MATLAB 5.0 MAT-file, written by frcnn's tests".ljust(116, b" ")
    header = text + b"\0" * 8 + struct.pack(order + "H", 0x0100) + (b"MI" if big_endian else b"IM")
    parts = [header]
    for name, value in variables.items():
        element = _matrix(value, name, order)
        if compressed:
            packed = zlib.compress(element)
            element = struct.pack(order + "II", MI["compressed"], len(packed)) + packed  # not padded
        parts.append(element)
    path.write_bytes(b"".join(parts))
    return path


def _h5_put(f, group, name: str, value):
    import h5py

    if isinstance(value, Cell):
        refs = []
        for k, item in enumerate(value.items):
            refs.append(_h5_put(f, f.require_group("#refs#"), f"{name or 'c'}_{id(value)}_{k}", item).ref)
        shape = (len(refs), 1) if value.row else (1, len(refs))  # MATLAB's dimensions, reversed
        ds = group.create_dataset(name, data=np.array(refs, dtype=h5py.ref_dtype).reshape(shape))
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
    elif isinstance(value, str):
        ds = group.create_dataset(name, data=np.array([[ord(c)] for c in value], dtype=np.uint16))
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        ds.attrs["MATLAB_int_decode"] = np.int32(2)
    else:
        values = np.asarray(value, dtype=np.float64)
        if values.size == 0:
            ds = group.create_dataset(name, data=np.array(values.shape[::-1], dtype=np.uint64))
            ds.attrs["MATLAB_empty"] = np.uint8(1)
        else:
            ds = group.create_dataset(name, data=values.T)
        ds.attrs["MATLAB_class"] = np.bytes_("double")
    return ds


def write_v73(path: Path, variables: dict) -> Path:
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            _h5_put(f, f, name, value)
    with open(path, "r+b") as f:  # MATLAB's text header in the user block
        f.write(b"MATLAB 7.3 MAT-file, written by frcnn's tests".ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    return path
