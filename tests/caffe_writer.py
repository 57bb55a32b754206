"""Binary ``.caffemodel`` files written for the tests, by an encoder of their own (not frcnn's reader).

The protocol-buffer wire format of ``caffe.proto`` (BVLC/caffe): ``NetParameter`` with ``name`` (1) and its
layers either as ``layer`` (100, ``LayerParameter``: ``name`` 1, ``type`` 2 string, ``bottom`` 3, ``top`` 4,
``blobs`` 7) or as the old ``layers`` (2, ``V1LayerParameter``: ``bottom`` 2, ``top`` 3, ``name`` 4, ``type`` 5
enum, ``blobs`` 6; or a nested ``V0LayerParameter`` in field 1: ``name`` 1, ``type`` 2, ``blobs`` 50).
``BlobProto``: ``shape`` (7, ``BlobShape``: packed ``dim`` 1) or the legacy ``num``, ``channels``, ``height``,
``width`` (1-4), ``data`` (5, packed float) or ``double_data`` (8, packed double).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "LRN": 15, "Dropout": 6,
            "Softmax": 20, "Data": 5}
V0_TYPES = {"Convolution": "conv", "InnerProduct": "innerproduct", "ReLU": "relu", "Pooling": "pool"}


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as 64-bit two's complement, as protobuf writes int32/int64
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def text(number: int, value: str) -> bytes:
    return length_delimited(number, value.encode())


@dataclass
class Blob:
    """A blob: ``values`` (any shape), written with a legacy 4-D shape (``legacy``), unpacked floats one field
    each (``packed=False``) or as ``double_data`` (``double``)."""

    values: np.ndarray
    legacy: bool = False
    packed: bool = True
    double: bool = False

    def encode(self) -> bytes:
        values = np.asarray(self.values)
        if self.legacy:
            dims = [1] * (4 - values.ndim) + list(values.shape)
            head = b"".join(key(i, 0) + varint(d) for i, d in zip((1, 2, 3, 4), dims))
        else:
            head = length_delimited(7, length_delimited(1, b"".join(varint(d) for d in values.shape)))
        flat = values.reshape(-1)
        if self.double:
            return head + length_delimited(8, flat.astype("<f8").tobytes())
        if self.packed:
            return head + length_delimited(5, flat.astype("<f4").tobytes())
        return head + b"".join(key(5, 5) + struct.pack("<f", float(v)) for v in flat)


@dataclass
class Layer:
    name: str
    type: str
    blobs: Sequence[Blob | np.ndarray] = field(default_factory=list)

    def blob_bytes(self, legacy: bool) -> list[bytes]:
        return [(b if isinstance(b, Blob) else Blob(b, legacy=legacy)).encode() for b in self.blobs]


def _v1_layer(layer: Layer, v0: bool) -> bytes:
    blobs = layer.blob_bytes(legacy=True)
    if v0:  # the oldest files: everything inside a V0LayerParameter
        inner = text(1, layer.name) + text(2, V0_TYPES.get(layer.type, layer.type.lower()))
        return length_delimited(1, inner + b"".join(length_delimited(50, b) for b in blobs))
    return (text(2, "bottom") + text(3, layer.name) + text(4, layer.name) + key(5, 0)
            + varint(V1_TYPES.get(layer.type, 0)) + b"".join(length_delimited(6, b) for b in blobs))


def _new_layer(layer: Layer) -> bytes:
    blobs = layer.blob_bytes(legacy=False)
    return (text(1, layer.name) + text(2, layer.type) + text(3, "bottom") + text(4, layer.name)
            + b"".join(length_delimited(7, b) for b in blobs))


def net_bytes(layers: Sequence[Layer], *, layout: str = "layer", name: str = "net", v0: bool = False) -> bytes:
    """A ``NetParameter``: ``layout`` "layer" (field 100) or "layers" (V1, field 2; ``v0``: V0 inside)."""
    head = text(1, name) + text(3, "data") + key(4, 0) + varint(1)  # input "data", input_dim 1: skipped fields
    if layout == "layers":
        return head + b"".join(length_delimited(2, _v1_layer(layer, v0)) for layer in layers)
    return head + b"".join(length_delimited(100, _new_layer(layer)) for layer in layers)


def write_caffemodel(path: Path, layers: Sequence[Layer], **options) -> Path:
    path.write_bytes(net_bytes(layers, **options))
    return path
