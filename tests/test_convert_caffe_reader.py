"""Reading .caffemodel files (the wire format by hand, both layouts, packed and unpacked numbers, legacy shapes;
against the protobuf package's own encoder when it is installed) and the one-line errors of frcnn convert
caffe, each naming the Caffe layer or the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from caffe_nets import caffe_layers, narrow_backbones, random_blobs, weight_shapes
from caffe_writer import Blob, Layer, net_bytes, write_caffemodel

from frcnn_cli.convert.caffe_proto import parse_net

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_net_written_byte_by_byte_is_read():
    # NetParameter {name: "n", layer {name: "c", type: "T", blobs {shape {dim: 2}, data: [1.0, -2.0]}}}
    blob = bytes([0x3A, 0x03, 0x0A, 0x01, 0x02, 0x2A, 0x08]) + np.array([1.0, -2.0], "<f4").tobytes()
    layer = bytes([0x0A, 0x01, ord("c"), 0x12, 0x01, ord("T"), 0x3A, len(blob)]) + blob
    net = parse_net(bytes([0x0A, 0x01, ord("n"), 0xA2, 0x06, len(layer)]) + layer)  # field 100: key 0xA2 0x06
    assert (net.name, net.layout, len(net.layers)) == ("n", "layer", 1)
    (c,) = net.layers
    assert (c.name, c.type, len(c.blobs)) == ("c", "T", 1)
    assert torch.equal(c.blobs[0], torch.tensor([1.0, -2.0]))


def test_both_layouts_packed_unpacked_double_and_legacy_blobs_are_read():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 2, 1, 1)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    fc = rng.standard_normal((4, 6)).astype(np.float32)
    layers = [Layer("conv", "Convolution", [Blob(w), Blob(b, packed=False)]), Layer("relu", "ReLU"),
              Layer("fc", "InnerProduct", [Blob(fc, double=True), Blob(b, legacy=True)])]
    new = parse_net(net_bytes(layers, name="N"))
    assert [(x.name, x.type, len(x.blobs)) for x in new.layers] == [("conv", "Convolution", 2), ("relu", "ReLU", 0),
                                                                   ("fc", "InnerProduct", 2)]
    assert torch.equal(new.layers[0].blobs[0], torch.from_numpy(w))
    assert torch.equal(new.layers[0].blobs[1], torch.from_numpy(b))  # unpacked: one field per value
    assert torch.equal(new.layers[2].blobs[0], torch.from_numpy(fc))  # double_data, to float32
    assert new.layers[2].blobs[1].shape == (1, 1, 1, 3)  # the legacy 4-D shape, as Caffe reads it
    for v0 in (False, True):
        old = parse_net(net_bytes(layers, layout="layers", v0=v0))
        assert old.layout == "layers"
        assert [(x.name, x.type) for x in old.layers] == [("conv", "Convolution"), ("relu", "ReLU"),
                                                          ("fc", "InnerProduct")]
        assert old.layers[2].blobs[0].shape == (4, 6) and old.layers[0].blobs[0].shape == (3, 2, 1, 1)


def _protobuf_classes():
    """Message classes of the part of caffe.proto frcnn reads, built by the ``protobuf`` package (an encoder and
    decoder independent of both frcnn's reader and the tests' writer); the V1 type enum as the int32 it is on the
    wire."""
    pytest.importorskip("google.protobuf")  # installed with onnx (the dev extra)
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_part.proto", package="caffe_part", syntax="proto2")
    messages = {
        "BlobShape": [("dim", 1, f.TYPE_INT64, True, None)],
        "BlobProto": [("shape", 7, f.TYPE_MESSAGE, False, "BlobShape"), ("data", 5, f.TYPE_FLOAT, True, None),
                      ("double_data", 8, f.TYPE_DOUBLE, True, None), ("num", 1, f.TYPE_INT32, False, None),
                      ("channels", 2, f.TYPE_INT32, False, None), ("height", 3, f.TYPE_INT32, False, None),
                      ("width", 4, f.TYPE_INT32, False, None)],
        "LayerParameter": [("name", 1, f.TYPE_STRING, False, None), ("type", 2, f.TYPE_STRING, False, None),
                           ("blobs", 7, f.TYPE_MESSAGE, True, "BlobProto")],
        "V1LayerParameter": [("name", 4, f.TYPE_STRING, False, None), ("type", 5, f.TYPE_INT32, False, None),
                             ("blobs", 6, f.TYPE_MESSAGE, True, "BlobProto")],
        "NetParameter": [("name", 1, f.TYPE_STRING, False, None),
                         ("layers", 2, f.TYPE_MESSAGE, True, "V1LayerParameter"),
                         ("layer", 100, f.TYPE_MESSAGE, True, "LayerParameter")],
    }
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind,
                                      label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f".caffe_part.{type_name}"
            elif repeated:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe_part.{name}"))
            for name in messages}


def test_protobuf_and_frcnn_agree_on_both_layouts():
    classes = _protobuf_classes()
    w = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
    b = np.array([0.5, -1.5, 2.5, 1e-3], np.float32)
    net = classes["NetParameter"](name="N")
    layer = net.layer.add(name="fc", type="InnerProduct")
    layer.blobs.add(data=w.reshape(-1).tolist()).shape.dim.extend(w.shape)
    layer.blobs.add(double_data=b.tolist()).shape.dim.extend(b.shape)
    net.layer.add(name="relu", type="ReLU")
    old = classes["NetParameter"](name="N")
    old.layers.add(name="fc", type=14).blobs.add(num=1, channels=1, height=4, width=6, data=w.reshape(-1).tolist())
    for message, layout in ((net, "layer"), (old, "layers")):
        read = parse_net(message.SerializeToString())  # protobuf's encoding, frcnn's reader
        assert (read.name, read.layout, read.layers[0].name, read.layers[0].type) == ("N", layout, "fc", "InnerProduct")
        assert torch.equal(read.layers[0].blobs[0].reshape(4, 6), torch.from_numpy(w))
    assert torch.equal(parse_net(net.SerializeToString()).layers[0].blobs[1], torch.from_numpy(b))
    # and the tests' writer writes what protobuf reads
    for layout in ("layer", "layers"):
        parsed = classes["NetParameter"].FromString(net_bytes([Layer("fc", "InnerProduct", [w, b])], layout=layout))
        (got,) = getattr(parsed, layout)
        assert got.name == "fc" and list(got.blobs[0].data) == w.reshape(-1).tolist()
        blob = got.blobs[0]
        shape = list(blob.shape.dim) if layout == "layer" else [blob.num, blob.channels, blob.height, blob.width]
        assert shape == ([4, 6] if layout == "layer" else [1, 1, 4, 6])


# --------------------------------------------------------------------------------------------------
# errors


def _zf(kind="detector", drop=(), replace=None, extra=(), classes=20):
    blobs = random_blobs(weight_shapes("zf", kind, classes))
    blobs.update(replace or {})
    return [*(layer for layer in caffe_layers(blobs) if layer.name not in drop), *extra]


def _vgg_cnn_m():
    blobs = random_blobs(weight_shapes("zf", "imagenet"))
    blobs["conv5"] = (np.zeros((512, 16, 3, 3), np.float32), np.zeros(512, np.float32))
    return caffe_layers(blobs)


_W = np.zeros((16, 16, 3, 3), np.float32)
CASES = {  # name: (layers or bytes, extra options, needles)
    "unknown layer": (_zf(extra=[Layer("conv6", "Convolution", [_W, np.zeros(16, np.float32)])]), (),
                      ("layer 'conv6'", "no place for")),
    "missing blob": (_zf(replace={"conv3": (_W,)}), (), ("layer 'conv3'", "1 blob(s)", "weights and bias")),
    "missing layer": (_zf(drop=("conv4",)), (), ("no layer 'conv4'",)),
    "half an RPN": (_zf(drop=("rpn_bbox_pred",)), (), ("no layer 'rpn_bbox_pred'",)),
    "wrong shape": (_zf(replace={"conv2": (np.zeros((16, 3, 5, 5), np.float32), np.zeros(16, np.float32))}), (),
                    ("layer 'conv2'", "[16, 3, 5, 5]", "[16, 8, 5, 5]")),
    "wrong type": (_zf(kind="imagenet", drop=("fc6",),
                       extra=[Layer("fc6", "Convolution", [np.zeros((32, 16, 6, 6), np.float32),
                                                            np.zeros(32, np.float32)])]), (),
                   ("layer 'fc6'", "Convolution", "InnerProduct")),
    "other classes": (_zf(classes=5), (), ("layer 'cls_score'", "6 classes", "--classes")),
    "VGG_CNN_M_1024": (_vgg_cnn_m(), (), ("VGG_CNN_M_1024",)),
    "wrong --backbone": (caffe_layers(random_blobs(weight_shapes("vgg16", "imagenet"))), ("--backbone", "zf"),
                         ("no layer 'conv1'", "--backbone vgg16")),
    "not ZF or VGG16": ([Layer("res1", "Convolution", [_W, np.zeros(16, np.float32)])], (),
                        ("not a ZF or VGG16 net", "res1")),
    "two conv1": (_zf(extra=[Layer("conv1", "Convolution", [_W, np.zeros(16, np.float32)])]), (),
                  ("two layers named 'conv1'",)),
    "both layouts": (net_bytes(_zf()) + net_bytes(_zf(), layout="layers")[len(net_bytes([], layout="layers")):], (),
                     ("not a readable Caffe model", "both the V1 'layers' and the 'layer' fields")),
    "truncated": (net_bytes(_zf())[:5000], (), ("not a readable Caffe model", "runs past the end")),
    "a prototxt": (b'name: "ZF"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n', (), ("text file",)),
    "empty": (b"", (), ("not a readable Caffe model", "no layers")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_that_does_not_fit_is_one_error_naming_the_layer(case, tmp_path, monkeypatch, frcnn,
                                                                 assert_clean_error):
    narrow_backbones(monkeypatch)
    content, options, needles = CASES[case]
    path = tmp_path / "model.caffemodel"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_caffemodel(path, content)
    result = frcnn("convert", "caffe", path, "--out", tmp_path / "out" / "model.pt", *options, ok=False)
    assert result.exit_code == 1
    assert_clean_error(result, *needles, out_dir=tmp_path / "out")


def test_a_missing_file_and_an_unknown_backbone_are_refused(tmp_path, frcnn, assert_clean_error):
    result = frcnn("convert", "caffe", tmp_path / "none.caffemodel", "--out", tmp_path / "out" / "a.pt", ok=False)
    assert_clean_error(result, "none.caffemodel does not exist", out_dir=tmp_path / "out")
    result = frcnn("convert", "caffe", tmp_path / "none.caffemodel", "--out", tmp_path / "a.pt", "--backbone",
                   "resnet50", ok=False)
    assert result.exit_code == 2 and "Invalid value for '--backbone'" in result.output
