"""What an exported file's own contents say about damage: the hash of its graph (recorded in its metadata by
``frcnn export``, checked whenever it is loaded), how many classes its graph scores, and its format when it is
cut short.

An ONNX runtime runs a model whose weights had a bit flipped, and gives other detections without a word; a
TorchScript archive is read without checking its CRCs. So ``export`` records ``graph_sha256``:

- ONNX: the SHA-256 of the serialised ``GraphProto`` (field 7 of ``ModelProto``: every node and initializer) as
  stored in the file. It is read with frcnn's protocol-buffer wire reader (``protobuf_wire.py``, shared with the
  Caffe import), so running a model needs no ``onnx`` package, and added by appending one ``metadata_props``
  entry (field 14) to the file, which leaves the graph's bytes as they are.
- TorchScript: the SHA-256 of every parameter and buffer of the module (name, dtype, shape and bytes, in name
  order), as ``torch.jit.load`` gives them back.

Files exported before this hash existed have none and are not checked.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import zipfile
from pathlib import Path

import torch

from ..protobuf_wire import fields, length_delimited, varint

GRAPH_HASH_KEY = "graph_sha256"
CLASS_SCORE_WEIGHT = "roi_head.cls_score.weight"  # [K + 1, C]: the graph scores K classes and the background
_GRAPH, _METADATA = 7, 14  # ModelProto fields
_INITIALIZER, _DIMS, _NAME = 5, 1, 8  # GraphProto.initializer; TensorProto.dims, .name


def _mapped(path: Path):
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def onnx_graph_digest(path: Path) -> str:
    """The SHA-256 of ``path``'s graph as stored; ``WireError`` when the file is cut short or not protobuf."""
    buf = _mapped(path)
    try:
        digest = hashlib.sha256()
        for field, wire, value in fields(buf, 0, len(buf)):
            if field == _GRAPH and wire == 2:
                digest.update(memoryview(buf)[value[0]:value[1]])
        return digest.hexdigest()
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _dims_and_name(buf, start: int, end: int) -> tuple[list[int], str]:
    dims, name = [], ""
    for field, wire, value in fields(buf, start, end):
        if field == _DIMS and wire == 0:
            dims.append(value)
        elif field == _DIMS and wire == 2:  # packed
            pos, stop = value
            while pos < stop:
                dim, pos = varint(buf, pos, stop)
                dims.append(dim)
        elif field == _NAME and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
    return dims, name


def onnx_class_count(path: Path) -> int | None:
    """K, the number of classes the graph in ``path`` scores (the rows of its ``roi_head.cls_score`` weight, less
    the background); None when the graph has no initializer of that name."""
    buf = _mapped(path)
    try:
        for field, wire, graph in fields(buf, 0, len(buf)):
            if field != _GRAPH or wire != 2:
                continue
            for inner, inner_wire, value in fields(buf, *graph):
                if inner == _INITIALIZER and inner_wire == 2:
                    dims, name = _dims_and_name(buf, *value)
                    if name == CLASS_SCORE_WEIGHT and dims:
                        return dims[0] - 1
        return None
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def append_onnx_metadata(path: Path, key: str, value: str) -> None:
    """Append the ``metadata_props`` entry ``key: value`` to the ONNX file ``path`` (the graph's bytes unchanged)."""
    entry = length_delimited(1, key.encode()) + length_delimited(2, value.encode())
    with open(path, "ab") as f:
        f.write(length_delimited(_METADATA, entry))


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
