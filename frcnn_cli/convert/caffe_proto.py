"""Reading a Caffe model (``.caffemodel``, a binary protocol buffer ``caffe.NetParameter``) without Caffe.

Why a reader of its own rather than the ``protobuf`` package: frcnn needs a dozen fields of six messages
of ``caffe.proto`` and the protocol-buffer wire format is five rules (a key varint ``field << 3 | wire
type``, then a varint, 8 bytes, a length and that many bytes, or 4 bytes). ``protobuf`` would need
caffe.proto compiled by ``protoc`` (or its descriptors built by hand), a new dependency, and would decode
``repeated float data`` into Python floats one by one (VGG16: 138 million of them); here each blob's
packed floats are one ``numpy`` view of the file's bytes, copied once into a tensor.

Fields read (BVLC/caffe ``src/caffe/proto/caffe.proto``); every other field is skipped by its wire type:

- ``NetParameter``: ``name`` 1, ``layers`` 2 (``V1LayerParameter``, the old layout), ``layer`` 100
  (``LayerParameter``);
- ``LayerParameter``: ``name`` 1, ``type`` 2 (a string: ``"Convolution"``), ``blobs`` 7;
- ``V1LayerParameter``: ``name`` 4, ``type`` 5 (enum ``LayerType``: ``CONVOLUTION`` = 4), ``blobs`` 6, and
  ``layer`` 1, a nested ``V0LayerParameter`` (``name`` 1, ``type`` 2, ``blobs`` 50) of the oldest files;
- ``BlobProto``: ``shape`` 7 (``BlobShape``: ``dim`` 1, packed int64), ``data`` 5 (packed float),
  ``double_data`` 8 (packed double), the legacy ``num``/``channels``/``height``/``width`` 1–4.

A blob's shape is Caffe's (``Blob::FromProto``): the legacy 4-D ``(num, channels, height, width)`` when any
of those is set, else ``shape.dim``; ``double_data`` wins over ``data`` when present. Packed and unpacked
encodings of repeated numbers are both read, as the protocol-buffer rules require.
"""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..file_kinds import other_kind
from ..protobuf_wire import WireError as _Malformed
from ..protobuf_wire import fields as _fields
from ..protobuf_wire import varint as _varint

# V1LayerParameter.LayerType values of the layers that hold weights, and of common others, by their new names
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution", 18: "ReLU", 17: "Pooling", 15: "LRN",
             6: "Dropout", 20: "Softmax", 21: "SoftmaxWithLoss", 5: "Data", 32: "DummyData", 36: "Silence",
             8: "Flatten", 3: "Concat", 22: "Split", 1: "Accuracy", 25: "Eltwise", 33: "Slice"}
# V0LayerParameter.type strings (Caffe's UpgradeV0LayerType) of the layers that hold weights, and of common others
_V0_TYPES = {"conv": "Convolution", "innerproduct": "InnerProduct", "relu": "ReLU", "pool": "Pooling", "lrn": "LRN",
             "dropout": "Dropout", "softmax": "Softmax", "softmax_loss": "SoftmaxWithLoss", "data": "Data"}
_TEXT = set(string.printable.encode())


@dataclass(frozen=True)
class CaffeLayer:
    """One layer of a Caffe net: its ``name``, its ``type`` in the new spelling (``"Convolution"``,
    ``"InnerProduct"``; ``""`` when the file does not say) and its ``blobs`` (float32 tensors in the shape the
    file gives: weights ``[O, I, kH, kW]`` or ``[O, I]`` and bias ``[O]``, or Caffe's legacy 4-D shapes)."""

    name: str
    type: str
    blobs: tuple[Tensor, ...]


@dataclass(frozen=True)
class CaffeNet:
    """A Caffe model: the net's ``name``, its ``layout`` (``"layer"``: ``LayerParameter``, field 100;
    ``"layers"``: the old ``V1LayerParameter``, field 2) and its ``layers`` in file order."""

    name: str
    layout: str
    layers: tuple[CaffeLayer, ...]


def _text(buf: bytes, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _numbers(buf: bytes, wire: int, value, dtype: str, where: str) -> np.ndarray:
    """The floats (``dtype`` ``<f4`` or ``<f8``) of one occurrence of a repeated field: packed or one value."""
    size = np.dtype(dtype).itemsize
    start, end = value if isinstance(value, tuple) else (0, 0)
    if wire == 2:
        if (end - start) % size:
            raise _Malformed(f"{where}: a packed array of {end - start} bytes, not a multiple of {size}", start)
        return np.frombuffer(buf, dtype=dtype, count=(end - start) // size, offset=start)
    if (wire, size) in ((5, 4), (1, 8)):
        return np.frombuffer(buf, dtype=dtype, count=1, offset=start)
    raise _Malformed(f"{where}: numbers of {size} bytes with wire type {wire}", start)


def _dims(buf: bytes, span: tuple[int, int], where: str) -> list[int]:
    dims: list[int] = []
    for field, wire, value in _fields(buf, *span):
        if field != 1:
            continue
        if wire == 0:
            dims.append(value)
        elif wire == 2:
            pos, end = value
            while pos < end:
                dim, pos = _varint(buf, pos, end)
                dims.append(dim)
        else:
            raise _Malformed(f"{where}: a shape with wire type {wire}", span[0])
    if any(d >= 2**63 for d in dims):  # int64 two's complement: a negative dimension
        raise _Malformed(f"{where}: a negative dimension", span[0])
    return dims


def _blob(buf: bytes, span: tuple[int, int], where: str) -> Tensor:
    """One ``BlobProto`` as a float32 tensor of its shape."""
    dims: list[int] = []
    legacy: dict[int, int] = {}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for field, wire, value in _fields(buf, *span):
        if field == 7 and wire == 2:
            dims = _dims(buf, value, where)
        elif field == 5:
            floats.append(_numbers(buf, wire, value, "<f4", where))
        elif field == 8:
            doubles.append(_numbers(buf, wire, value, "<f8", where))
        elif field in (1, 2, 3, 4) and wire == 0:
            legacy[field] = value - 2**64 if value >= 2**63 else value
    shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else dims
    if any(d < 0 for d in shape):
        raise _Malformed(f"{where}: a negative dimension {shape}", span[0])
    chunks = doubles or floats
    count = sum(len(c) for c in chunks)
    if count != math.prod(shape):
        raise _Malformed(f"{where}: {count} values for the shape {shape}", span[0])
    values = np.concatenate(chunks) if len(chunks) != 1 else chunks[0]
    return torch.from_numpy(values.astype(np.float32, copy=True)).reshape(shape)


def _layer(buf: bytes, span: tuple[int, int], v1: bool, index: int) -> CaffeLayer:
    name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, blob_spans, v0 = "", "", [], None
    for field, wire, value in _fields(buf, *span):
        if field == name_field and wire == 2:
            name = _text(buf, value)
        elif field == type_field:
            kind = _V1_TYPES.get(value, f"V1 type {value}") if v1 and wire == 0 else (
                _text(buf, value) if wire == 2 else kind)
        elif field == blob_field and wire == 2:
            blob_spans.append(value)
        elif v1 and field == 1 and wire == 2:
            v0 = value
    if v1 and v0 is not None:  # a V0 layer wrapped in V1: its name, type and blobs (field 50)
        inner = _layer_v0(buf, v0)
        name, kind = name or inner[0], kind or inner[1]
        blob_spans = blob_spans or inner[2]
    label = f"layer '{name}'" if name else f"layer {index + 1}"
    blobs = tuple(_blob(buf, s, f"blob {i} of {label}") for i, s in enumerate(blob_spans))
    return CaffeLayer(name=name, type=kind, blobs=blobs)


def _layer_v0(buf: bytes, span: tuple[int, int]) -> tuple[str, str, list[tuple[int, int]]]:
    name, kind, blobs = "", "", []
    for field, wire, value in _fields(buf, *span):
        if wire != 2:
            continue
        if field == 1:
            name = _text(buf, value)
        elif field == 2:
            kind = _V0_TYPES.get(_text(buf, value), _text(buf, value))
        elif field == 50:
            blobs.append(value)
    return name, kind, blobs


def parse_net(buf: bytes) -> CaffeNet:
    """The ``CaffeNet`` in the bytes of a ``.caffemodel``; ``ValueError`` saying what is malformed where."""
    try:
        name, spans = "", {2: [], 100: []}
        for field, wire, value in _fields(buf, 0, len(buf)):
            if field == 1 and wire == 2:
                name = _text(buf, value)
            elif field in spans and wire == 2:
                spans[field].append(value)
        v1 = bool(spans[2])
        layers = tuple(_layer(buf, s, v1, i) for i, s in enumerate(spans[2] or spans[100]))
    except _Malformed as exc:
        raise ValueError(f"{exc.what} at byte {exc.offset}") from None
    if spans[2] and spans[100]:
        raise ValueError("both the V1 'layers' and the 'layer' fields, which Caffe refuses too")
    if not layers:
        raise ValueError("no layers")
    return CaffeNet(name=name, layout="layers" if v1 else "layer", layers=layers)


def read_caffemodel(path: str | os.PathLike) -> CaffeNet:
    """The Caffe net stored in the binary ``.caffemodel`` at ``path``.

    ``CheckpointError`` naming the file when it is missing, unreadable, a text file (a ``.prototxt`` holds
    no weights), or not a well-formed ``NetParameter``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Caffe model {path} does not exist; check the path")
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the Caffe model {path} ({exc.strerror or exc}); check the file") from None
    if buf and all(b in _TEXT for b in buf[:512]):
        raise CheckpointError(f"{path} is a text file (a .prototxt?), not a binary .caffemodel: the weights are in "
                              f"the .caffemodel file that goes with it; give that")
    kind = other_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}, not a Caffe model; give the binary .caffemodel file")
    try:
        return parse_net(buf)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a readable Caffe model ({exc}); the file is damaged or not a "
                              f".caffemodel: download it again and check its checksum") from None
