"""Backbones: the shared convolutional layers and the per-RoI layers on top of RoI pooling.

Shapes: N images, H×W input side, C feature channels, h×w feature grid (stride 16), S RoIs, P pooled
side, D head dimension (the width of what ``head_top`` returns).

Every backbone is split in two parts, as in the paper:

- ``shared`` maps ``Tensor[N, 3, H, W]`` to ``Tensor[N, C, h, w]`` (RPN and detector both read it);
- ``head_top`` maps RoI-pooled ``Tensor[S, C, P, P]`` to ``Tensor[S, D]`` (fc6/fc7, or res5 + pooling).

| name      | shared                     | C    | P  | head_top                                 | D    |
|-----------|----------------------------|------|----|------------------------------------------|------|
| vgg16     | conv1_1 … conv5_3 + ReLU   | 512  | 7  | fc6 25088→4096, fc7 (dropout 0.5)        | 4096 |
| zf        | conv1 … conv5 + ReLU       | 256  | 6  | fc6 9216→4096, fc7 (Caffe dropout)       | 4096 |
| resnet50  | conv1 … layer3 (C4)        | 1024 | 14 | layer4 (stride 2 → 7×7) + global average | 2048 |
| resnet101 | conv1 … layer3 (C4)        | 1024 | 14 | layer4 (stride 2 → 7×7) + global average | 2048 |
| tiny      | 5 × (conv3×3 GroupNorm ReLU)| 128 | 7  | fc 6272→256, fc 256→256                  | 256  |

VGG16 and ZF pool with ``ceil_mode=True`` (Caffe), so the feature grid sizes are py-faster-rcnn's
(600 → 38 VGG16, 39 ZF). ResNet C4 follows Detectron's C4: RoIs pooled to 14×14, torchvision's
stride-2 layer4 brings them to 7×7, so ImageNet weights load unchanged; BatchNorm is
``FrozenBatchNorm2d`` (ImageNet statistics, never updated). Module names mirror torchvision's
(``features.N`` / ``classifier.0,3`` for VGG16, ``conv1 … layer4`` for ResNet) so that torchvision
state dicts load by name; ZF and tiny use ``conv1 … conv5`` / ``fc6, fc7``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from ..config import BACKBONES
from ..errors import ConfigError


@dataclass
class BackboneParts:
    """The two halves of a backbone and what the rest of the model needs to know about them.

    ``frozen_prefixes`` are parameter-name prefixes inside ``shared`` that the paper never trains
    (VGG16 conv1_x, conv2_x; ResNet conv1, bn1, layer1). Each ends with ``"."`` so that a plain
    ``name.startswith(prefix)`` cannot confuse ``features.2.`` with ``features.21.``.
    """

    shared: nn.Module
    head_top: nn.Module
    out_channels: int
    head_dim: int
    pool_size: int
    stride: int
    frozen_prefixes: tuple[str, ...]
    rpn_channels: int


# --------------------------------------------------------------------------------------------------
# VGG16


class VGG16Features(nn.Module):
    """conv1_1 … conv5_3 + ReLU as torchvision's ``features.0`` … ``features.29`` (pool5 dropped)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


class VGG16Head(nn.Module):
    """Flatten, fc6 (``classifier.0``), ReLU, Dropout, fc7 (``classifier.3``), ReLU, Dropout."""

    def __init__(self, classifier: nn.Sequential) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(torch.flatten(pooled, 1))


def _vgg16() -> BackboneParts:
    # torchvision's own constructor gives its layer indices and its random initialisation
    net = torchvision.models.vgg16(weights=None)
    layers = list(net.features.children())[:30]  # drop pool5: conv5_3 + ReLU is the output
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True  # Caffe pooling
    head = VGG16Head(nn.Sequential(*list(net.classifier.children())[:6]))  # drop fc8
    frozen = tuple(f"features.{i}." for i in (0, 2, 5, 7))  # conv1_1, conv1_2, conv2_1, conv2_2
    return BackboneParts(shared=VGG16Features(nn.Sequential(*layers)), head_top=head, out_channels=512,
                         head_dim=4096, pool_size=7, stride=16, frozen_prefixes=frozen, rpn_channels=512)


# --------------------------------------------------------------------------------------------------
# ZF


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``.

    ``x / (1 + alpha * avgpool(x², size×size, pad size//2, divisor size² incl. padding)) ** beta`` —
    not ``nn.LocalResponseNorm``, which normalises across channels.
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        return x / (1.0 + self.alpha * mean_sq).pow(self.beta)


class CaffeDropout(nn.Module):
    """Dropout with Caffe's ``scale_train: false``: ``x * mask`` in training, ``(1 - p) * x`` at test.

    The ZF ImageNet weights were trained in this convention.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        # F.dropout scales kept units by 1/(1-p) in training and is the identity at test
        return (1.0 - self.p) * F.dropout(x, self.p, self.training)


ZF_WIDTHS = (96, 256, 384, 384, 256)  # conv1 … conv5 outputs


def _zf_shared(widths: tuple[int, ...] = ZF_WIDTHS) -> nn.Sequential:
    c1, c2, c3, c4, c5 = widths
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, c1, 7, stride=2, padding=3)), ("relu1", nn.ReLU(inplace=True)),
        ("norm1", WithinChannelLRN()), ("pool1", nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        ("conv2", nn.Conv2d(c1, c2, 5, stride=2, padding=2)), ("relu2", nn.ReLU(inplace=True)),
        ("norm2", WithinChannelLRN()), ("pool2", nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(c3, c4, 3, padding=1)), ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(c4, c5, 3, padding=1)), ("relu5", nn.ReLU(inplace=True)),
    ]))


def _fc_head(in_features: int, dim: int, dropout: Callable[[], nn.Module] | None) -> nn.Sequential:
    """Flatten, fc6, ReLU[, dropout], fc7, ReLU[, dropout] with names ``fc6``/``fc7``."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten(1))]
    for i, n_in in ((6, in_features), (7, dim)):
        layers += [(f"fc{i}", nn.Linear(n_in, dim)), (f"relu{i}", nn.ReLU(inplace=True))]
        if dropout is not None:
            layers.append((f"drop{i}", dropout()))
    return nn.Sequential(OrderedDict(layers))


def _init_random(module: nn.Module) -> None:
    """torchvision's VGG initialisation: He (fan-out) for convs, N(0, 0.01) for fc layers, biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _zf(widths: tuple[int, ...] = ZF_WIDTHS, head_dim: int = 4096) -> BackboneParts:
    """ZF; narrower ``widths`` and ``head_dim`` give the same layers at a fraction of the size (tests)."""
    shared, head = _zf_shared(widths), _fc_head(widths[-1] * 6 * 6, head_dim, lambda: CaffeDropout(0.5))
    _init_random(shared)
    _init_random(head)
    return BackboneParts(shared=shared, head_top=head, out_channels=widths[-1], head_dim=head_dim, pool_size=6,
                         stride=16, frozen_prefixes=(), rpn_channels=256)


# --------------------------------------------------------------------------------------------------
# ResNet C4


class ResNetC4Features(nn.Module):
    """conv1, bn1, relu, maxpool, layer1, layer2, layer3 of a torchvision ResNet: stride 16."""

    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))


class ResNetC4Head(nn.Module):
    """res5 (torchvision ``layer4``, stride 2: 14×14 RoIs → 7×7) and a global average pool."""

    def __init__(self, layer4: nn.Module) -> None:
        super().__init__()
        self.layer4 = layer4

    def forward(self, pooled: Tensor) -> Tensor:
        return self.layer4(pooled).mean(dim=(2, 3))


def _resnet(depth: int) -> BackboneParts:
    ctor = torchvision.models.resnet50 if depth == 50 else torchvision.models.resnet101
    net = ctor(weights=None, norm_layer=FrozenBatchNorm2d)
    return BackboneParts(shared=ResNetC4Features(net), head_top=ResNetC4Head(net.layer4), out_channels=1024,
                         head_dim=2048, pool_size=14, stride=16,
                         frozen_prefixes=("conv1.", "bn1.", "layer1."), rpn_channels=512)


# --------------------------------------------------------------------------------------------------
# tiny


def _tiny_shared() -> nn.Sequential:
    # stride 2 in the first four convs: 192 → 96 → 48 → 24 → 12 (stride 16); GroupNorm has no running
    # statistics, so a frozen tiny backbone stays bit-identical in train mode and batch size 1 works
    widths = (3, 32, 64, 96, 128, 128)
    layers: list[tuple[str, nn.Module]] = []
    for i in range(1, 6):
        stride = 2 if i <= 4 else 1
        layers += [(f"conv{i}", nn.Conv2d(widths[i - 1], widths[i], 3, stride=stride, padding=1)),
                   (f"gn{i}", nn.GroupNorm(8, widths[i])), (f"relu{i}", nn.ReLU(inplace=True))]
    return nn.Sequential(OrderedDict(layers))


def _tiny() -> BackboneParts:
    shared, head = _tiny_shared(), _fc_head(128 * 7 * 7, 256, None)
    _init_random(shared)
    for m in head.modules():  # He init so a random-init head trains quickly
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return BackboneParts(shared=shared, head_top=head, out_channels=128, head_dim=256, pool_size=7,
                         stride=16, frozen_prefixes=(), rpn_channels=128)


_BUILDERS = {"vgg16": _vgg16, "zf": _zf, "resnet50": lambda: _resnet(50),
             "resnet101": lambda: _resnet(101), "tiny": _tiny}


def build_backbone(name: str) -> BackboneParts:
    """A freshly, randomly initialised backbone ``name``; load weights with ``weights.init_backbone``."""
    if name not in _BUILDERS:
        raise ConfigError(f"config key 'backbone' is {name!r}; allowed values: {', '.join(BACKBONES)}")
    return _BUILDERS[name]()
