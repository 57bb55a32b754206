"""Small Caffe nets of ZF and VGG16's layers for the converter's tests, frcnn backbones of the same widths, and
a hand-written forward of py-faster-rcnn's test net (its prototxts, from the Caffe blobs) to compare with.

The real nets are too big for a test file (ZF 58M parameters, VGG16 138M), so the tests use the same layers,
kernels, strides, names and structure with fewer channels; ``narrow_backbones`` patches them in for
``build_backbone`` so the converter and ``load_model`` run their real code on them. That the real widths fit
the converter is checked on the real backbones built on the meta device (no memory).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from caffe_writer import Layer
from torch import nn
from torchvision.models.vgg import make_layers
from torchvision.ops import roi_pool

from frcnn_cli.model import backbones

ZF_WIDTHS = (8, 16, 16, 16, 16)
VGG_WIDTHS = (4, 8, 8, 16, 16)
HEAD = 32  # fc6/fc7 width
RPN_CHANNELS = 24  # not the preset's 256/512: the converter takes it from the file
VGG_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
             "conv4_3", "conv5_1", "conv5_2", "conv5_3")
CAFFE_MEANS = (102.9801, 115.9465, 122.7717)  # BGR


def _narrow_vgg16() -> backbones.BackboneParts:
    w = VGG_WIDTHS
    cfg = [w[0], w[0], "M", w[1], w[1], "M", w[2], w[2], w[2], "M", w[3], w[3], w[3], "M", w[4], w[4], w[4], "M"]
    layers = list(make_layers(cfg).children())[:30]  # torchvision's indices, pool5 dropped as in _vgg16
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True
    head = nn.Sequential(nn.Linear(w[4] * 49, HEAD), nn.ReLU(True), nn.Dropout(), nn.Linear(HEAD, HEAD),
                         nn.ReLU(True), nn.Dropout())
    return backbones.BackboneParts(shared=backbones.VGG16Features(nn.Sequential(*layers)),
                                   head_top=backbones.VGG16Head(head), out_channels=w[4], head_dim=HEAD, pool_size=7,
                                   stride=16, frozen_prefixes=(), rpn_channels=512)


def narrow_backbones(monkeypatch) -> None:
    """``build_backbone("zf" | "vgg16")`` builds the narrow nets while the test runs."""
    monkeypatch.setitem(backbones._BUILDERS, "zf", lambda: backbones._zf(widths=ZF_WIDTHS, head_dim=HEAD))
    monkeypatch.setitem(backbones._BUILDERS, "vgg16", _narrow_vgg16)


def _conv_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    if backbone == "zf":
        c, k, cin = ZF_WIDTHS, (7, 5, 3, 3, 3), (3, *ZF_WIDTHS[:-1])
        return {f"conv{i + 1}": (c[i], cin[i], k[i], k[i]) for i in range(5)}
    stages = [VGG_WIDTHS[int(name[4]) - 1] for name in VGG_CONVS]
    return {name: (out, cin, 3, 3) for name, out, cin in zip(VGG_CONVS, stages, (3, *stages[:-1]))}


def weight_shapes(backbone: str, kind: str, classes: int = 20) -> dict[str, tuple[int, ...]]:
    """Caffe layer → weight shape of a narrow ``backbone`` net of ``kind`` "imagenet" or "detector"."""
    pooled = (ZF_WIDTHS[-1] * 36) if backbone == "zf" else (VGG_WIDTHS[-1] * 49)
    shapes = {**_conv_shapes(backbone), "fc6": (HEAD, pooled), "fc7": (HEAD, HEAD)}
    if kind == "imagenet":
        return {**shapes, "fc8": (10, HEAD)}
    c5 = (ZF_WIDTHS if backbone == "zf" else VGG_WIDTHS)[-1]
    rpn = "rpn_conv1" if backbone == "zf" else "rpn_conv/3x3"
    return {**shapes, rpn: (RPN_CHANNELS, c5, 3, 3), "rpn_cls_score": (18, RPN_CHANNELS, 1, 1),
            "rpn_bbox_pred": (36, RPN_CHANNELS, 1, 1), "cls_score": (classes + 1, HEAD),
            "bbox_pred": (4 * (classes + 1), HEAD)}


def random_blobs(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-scaled weights and small biases; conv1 scaled down so that activations stay about 1 for 0-255 input,
    the box layers so that deltas stay below frcnn's clamp of exp (py-faster-rcnn has none)."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for name, shape in shapes.items():
        scale = {"conv1": 0.01, "conv1_1": 0.01, "bbox_pred": 0.1, "rpn_bbox_pred": 0.1}.get(name, 1.0)
        gain = scale * (2.0 / np.prod(shape[1:])) ** 0.5
        blobs[name] = ((rng.standard_normal(shape) * gain).astype(np.float32),
                       (rng.standard_normal(shape[0]) * 0.1).astype(np.float32))
    return blobs


def caffe_layers(blobs: dict[str, tuple[np.ndarray, np.ndarray]], *, python_layers: bool = True) -> list[Layer]:
    """The blobs as layers in the prototxt's order, with some layers without weights between them."""
    layers = []
    for name, arrays in blobs.items():
        layers.append(Layer(name, "Convolution" if arrays[0].ndim == 4 else "InnerProduct", list(arrays)))
        if name.startswith(("conv", "fc", "rpn_conv")):
            layers.append(Layer(name.replace("conv", "relu").replace("fc", "relu"), "ReLU"))
        if name in ("conv1", "conv2", "conv1_2", "conv2_2"):
            layers.append(Layer(name.replace("conv", "pool"), "Pooling"))
    if python_layers and "rpn_cls_score" in blobs:
        layers.insert(len(layers) - 4, Layer("proposal", "Python"))
    return layers


# --------------------------------------------------------------------------------------------------
# py-faster-rcnn's test net by hand


def _t(blob) -> torch.Tensor:
    return torch.from_numpy(np.asarray(blob))


def _conv(x, blobs, name, **kw):
    w, b = blobs[name]
    return F.relu(F.conv2d(x, _t(w), _t(b), **kw))


def _within_channel_lrn(x, size=3, alpha=5e-5, beta=0.75):
    """Caffe LRN WITHIN_CHANNEL: x / (1 + alpha/size² · Σ_window x²)^beta, zero-padded windows."""
    window = torch.ones(x.shape[1], 1, size, size, dtype=x.dtype)
    sums = F.conv2d(x * x, window, padding=size // 2, groups=x.shape[1])
    return x / (1.0 + alpha / size**2 * sums) ** beta


def reference_features(backbone: str, blobs, bgr: torch.Tensor) -> torch.Tensor:
    """conv5 (ZF) / conv5_3 (VGG16) of ``bgr`` ``[1, 3, H, W]`` (BGR, 0-255, means subtracted)."""
    x = bgr
    if backbone == "zf":
        for i, (stride, pad) in enumerate(((2, 3), (2, 2), (1, 1), (1, 1), (1, 1)), start=1):
            x = _conv(x, blobs, f"conv{i}", stride=stride, padding=pad)
            if i <= 2:
                x = F.max_pool2d(_within_channel_lrn(x), 3, 2, 1, ceil_mode=True)
        return x
    for name in VGG_CONVS:
        x = _conv(x, blobs, name, padding=1)
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    return x


def reference_rpn(backbone: str, blobs, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground scores ``[H*W*A]`` and deltas ``[H*W*A, 4]`` in py-faster-rcnn's proposal-layer order:
    softmax over ``rpn_cls_score`` reshaped to ``(1, 2, A*H, W)``, foreground ``[:, A:]``, then (H, W, A)."""
    x = _conv(features, blobs, "rpn_conv1" if backbone == "zf" else "rpn_conv/3x3", padding=1)
    scores = F.conv2d(x, *map(_t, blobs["rpn_cls_score"]))  # [1, 2A, H, W]
    _, two_a, h, w = scores.shape
    a = two_a // 2
    prob = torch.softmax(scores.reshape(1, 2, a * h, w), dim=1).reshape(1, two_a, h, w)
    deltas = F.conv2d(x, *map(_t, blobs["rpn_bbox_pred"]))  # [1, 4A, H, W]
    return prob[:, a:].permute(0, 2, 3, 1).reshape(-1), deltas.permute(0, 2, 3, 1).reshape(-1, 4)


def reference_head(backbone: str, blobs, features: torch.Tensor, rois: torch.Tensor):
    """``cls_score [R, K+1]`` and ``bbox_pred [R, 4(K+1)]`` of ``rois [R, 4]`` (scaled pixels, 0-based
    continuous; Caffe's RoI pooling takes them inclusive: x2 - 1, y2 - 1). ZF's dropouts (``scale_train:
    false``) scale by 0.5 at test; VGG16's are the identity."""
    inclusive = torch.cat((torch.zeros(len(rois), 1), rois[:, :2], rois[:, 2:] - 1.0), 1)
    pooled = roi_pool(features, inclusive, 6 if backbone == "zf" else 7, 1.0 / 16)
    x = pooled.reshape(len(rois), -1)  # Caffe's InnerProduct: C x H x W, row-major
    dropout = 0.5 if backbone == "zf" else 1.0
    for name in ("fc6", "fc7"):
        w, b = map(_t, blobs[name])
        x = F.relu(x @ w.T + b) * dropout
    return tuple(x @ _t(blobs[n][0]).T + _t(blobs[n][1]) for n in ("cls_score", "bbox_pred"))


def raw_decode(deltas: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """py-faster-rcnn's ``bbox_transform_inv`` of raw deltas ``[R, 4C]`` (continuous boxes: w = x2 - x1)."""
    d = deltas.reshape(len(rois), -1, 4)
    w, h = (rois[:, 2] - rois[:, 0])[:, None], (rois[:, 3] - rois[:, 1])[:, None]
    cx, cy = rois[:, 0:1] + 0.5 * w, rois[:, 1:2] + 0.5 * h
    pcx, pcy = d[..., 0] * w + cx, d[..., 1] * h + cy
    pw, ph = torch.exp(d[..., 2]) * w, torch.exp(d[..., 3]) * h
    return torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph), 2).reshape(len(rois), -1)
