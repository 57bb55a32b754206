"""What an exported file's own contents say about damage: the hash of its graph (recorded in its metadata by
``frcnn export``, checked whenever it is loaded), how many classes its graph scores, and its format when it is
cut short.

An ONNX runtime runs a model whose weights had a bit flipped, and gives other detections without a word; a
TorchScript archive is read without checking its CRCs. So ``export`` records ``graph_sha256``:

- ONNX: the SHA-256 of the serialised ``GraphProto`` (field 7 of ``ModelProto``: every node and initializer) as
  stored in the file. It is read here with a minimal protocol-buffer reader (``_fields``), so running a model
  needs no ``onnx`` package, and added by appending one ``metadata_props`` entry (field 14) to the file, which
  leaves the graph's bytes as they are.
- TorchScript: the SHA-256 of every parameter and buffer of the module (name, dtype, shape and bytes, in name
  order), as ``torch.jit.load`` gives them back.

Files exported before this hash existed have none and are not checked.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

GRAPH_HASH_KEY = "graph_sha256"
CLASS_SCORE_WEIGHT = "roi_head.cls_score.weight"  # [K + 1, C]: the graph scores K classes and the background
_GRAPH, _METADATA = 7, 14  # ModelProto fields
_INITIALIZER, _DIMS, _NAME = 5, 1, 8  # GraphProto.initializer; TensorProto.dims, .name


class Truncated(ValueError):
    """A protocol buffer that ends inside a field."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise Truncated("the file ends inside a number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise Truncated("a number longer than 10 bytes")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, start, end)`` of each field of the message ``buf[start:end]``; a varint's value is
    given as ``start`` (and ``end`` = -1)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, -1
            continue
        if wire == 2:
            size, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise Truncated(f"wire type {wire} at byte {pos}: not an ONNX model, or a damaged one")
        if pos + size > end:
            raise Truncated(f"the file ends inside field {field}")
        yield field, wire, pos, pos + size
        pos += size


def _mapped(path: Path):
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def onnx_graph_digest(path: Path) -> str:
    """The SHA-256 of ``path``'s graph as stored; ``Truncated`` when the file is cut short or not protobuf."""
    buf = _mapped(path)
    try:
        digest = hashlib.sha256()
        for field, wire, start, end in _fields(buf, 0, len(buf)):
            if field == _GRAPH and wire == 2:
                digest.update(memoryview(buf)[start:end])
        return digest.hexdigest()
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _dims_and_name(buf, start: int, end: int) -> tuple[list[int], str]:
    dims, name = [], ""
    for field, wire, a, b in _fields(buf, start, end):
        if field == _DIMS and wire == 0:
            dims.append(a)
        elif field == _DIMS and wire == 2:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                dims.append(value)
        elif field == _NAME and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
    return dims, name


def onnx_class_count(path: Path) -> int | None:
    """K, the number of classes the graph in ``path`` scores (the rows of its ``roi_head.cls_score`` weight, less
    the background); None when the graph has no initializer of that name."""
    buf = _mapped(path)
    try:
        for field, wire, start, end in _fields(buf, 0, len(buf)):
            if field != _GRAPH or wire != 2:
                continue
            for inner, inner_wire, a, b in _fields(buf, start, end):
                if inner == _INITIALIZER and inner_wire == 2:
                    dims, name = _dims_and_name(buf, a, b)
                    if name == CLASS_SCORE_WEIGHT and dims:
                        return dims[0] - 1
        return None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _length_delimited(field: int, payload: bytes) -> bytes:
    size, out = len(payload), bytearray([field << 3 | 2])
    while True:
        byte = size & 0x7F
        size >>= 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out) + payload


def append_onnx_metadata(path: Path, key: str, value: str) -> None:
    """Append the ``metadata_props`` entry ``key: value`` to the ONNX file ``path`` (the graph's bytes unchanged)."""
    entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    with open(path, "ab") as f:
        f.write(_length_delimited(_METADATA, entry))


def torchscript_digest(module: torch.nn.Module) -> str:
    """The SHA-256 of every parameter and buffer of ``module`` (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def torchscript_class_count(module: torch.nn.Module) -> int | None:
    """K, the number of classes the TorchScript ``module`` scores; None when it has no such weight."""
    weight = dict(module.named_parameters()).get(CLASS_SCORE_WEIGHT)
    return None if weight is None or weight.dim() != 2 else int(weight.shape[0]) - 1


_LOCAL_HEADER = b"PK\x03\x04"
TORCHSCRIPT_MARKS = ("/code/", "/constants.pkl", "/extra/frcnn.json")


def zip_entry_names(path: Path, limit: int = 256) -> list[str]:
    """The names of a zip archive's entries, from its central directory, or, for an archive cut short (no
    central directory), from the local headers before the cut."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    names = []
    try:
        with open(path, "rb") as f:
            while len(names) < limit:
                header = f.read(30)
                if len(header) < 30 or not header.startswith(_LOCAL_HEADER):
                    break
                size, = struct.unpack("<I", header[18:22])  # the compressed size
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                name = f.read(name_len)
                if len(name) < name_len:
                    break
                names.append(name.decode("utf-8", "replace"))
                f.seek(extra_len + size, 1)
    except OSError:
        pass
    return names
