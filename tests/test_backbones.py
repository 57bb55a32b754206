"""Backbones: py-faster-rcnn's feature-map sizes, Caffe's LRN and dropout, part layouts, frozen prefixes."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn_cli.config import BACKBONES
from frcnn_cli.errors import ConfigError
from frcnn_cli.model.backbones import (
    CaffeDropout,
    WithinChannelLRN,
    build_backbone,
)


def _meta_parts(name):
    with torch.device("meta"):  # shapes only: no memory, no compute
        return build_backbone(name)


def _grid(parts, height, width):
    with torch.device("meta"):
        return tuple(parts.shared(torch.empty(1, 3, height, width)).shape[-2:])


# py-faster-rcnn notes §1: input side -> conv5 side
ZF_SIDES = {375: 25, 500: 32, 600: 39, 800: 51, 1000: 64}
VGG16_SIDES = {375: 24, 500: 32, 600: 38, 800: 50, 1000: 63}


@pytest.mark.parametrize("side", sorted(ZF_SIDES))
def test_zf_conv5_size_matches_caffe_ceil_mode_pooling(side):
    parts = _meta_parts("zf")
    assert _grid(parts, side, side) == (ZF_SIDES[side], ZF_SIDES[side])


@pytest.mark.parametrize("side", sorted(VGG16_SIDES))
def test_vgg16_conv5_3_size_matches_caffe_ceil_mode_pooling(side):
    parts = _meta_parts("vgg16")
    assert _grid(parts, side, side) == (VGG16_SIDES[side], VGG16_SIDES[side])


def test_600x800_grids_give_the_anchor_counts_of_the_notes():
    # notes §1: 600x800 -> VGG16 38x50 (17100 anchors), ZF 39x51 (17901 anchors)
    assert math.prod(_grid(_meta_parts("vgg16"), 600, 800)) * 9 == 17100
    assert math.prod(_grid(_meta_parts("zf"), 600, 800)) * 9 == 17901
    assert _grid(_meta_parts("vgg16"), 600, 901) == (38, 57)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_resnet_c4_has_stride_16(name):
    parts = _meta_parts(name)
    assert _grid(parts, 600, 800) == (38, 50)
    assert _grid(parts, 64, 80) == (4, 5)


def test_tiny_has_stride_16_on_its_192_pixel_images():
    parts = _meta_parts("tiny")
    assert _grid(parts, 192, 256) == (12, 16)
    assert _grid(parts, 64, 80) == (4, 5)


@pytest.mark.parametrize("name, channels, dim, pool, rpn", [
    ("vgg16", 512, 4096, 7, 512), ("zf", 256, 4096, 6, 256), ("resnet50", 1024, 2048, 14, 512),
    ("resnet101", 1024, 2048, 14, 512), ("tiny", 128, 256, 7, 128),
])
def test_parts_declare_their_channels_pool_and_head_width(name, channels, dim, pool, rpn):
    parts = _meta_parts(name)
    assert (parts.out_channels, parts.head_dim, parts.pool_size, parts.stride, parts.rpn_channels) == (
        channels, dim, pool, 16, rpn)
    with torch.device("meta"):
        feat = parts.shared(torch.empty(2, 3, 64, 80))
        top = parts.head_top(torch.empty(5, channels, pool, pool))
    assert feat.shape[1] == channels
    assert tuple(top.shape) == (5, dim)


def test_vgg16_layout_is_torchvision_without_pool5_and_fc8():
    parts = _meta_parts("vgg16")
    layers = list(parts.shared.features)
    assert len(layers) == 30 and isinstance(layers[-1], nn.ReLU)  # conv5_3 + ReLU is the output
    pools = [m for m in layers if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.ceil_mode and p.kernel_size == 2 and p.stride == 2 for p in pools)
    fc6, fc7 = parts.head_top.classifier[0], parts.head_top.classifier[3]
    assert (fc6.in_features, fc6.out_features, fc7.in_features, fc7.out_features) == (25088, 4096, 4096, 4096)
    assert [type(m) for m in parts.head_top.classifier] == [nn.Linear, nn.ReLU, nn.Dropout] * 2
    with torch.device("meta"):
        tv = torchvision.models.vgg16().state_dict()
    ours = {**parts.shared.state_dict(), **parts.head_top.state_dict()}
    assert set(ours) == {k for k in tv if not k.startswith("classifier.6.")}
    assert all(ours[k].shape == tv[k].shape for k in ours)


def test_vgg16_frozen_prefixes_select_conv1_and_conv2_only():
    parts = _meta_parts("vgg16")
    names = [n for n, _ in parts.shared.named_parameters()]
    frozen = [n for n in names if n.startswith(parts.frozen_prefixes)]
    assert frozen == [f"features.{i}.{w}" for i in (0, 2, 5, 7) for w in ("weight", "bias")]
    assert "features.21.weight" in names and "features.21.weight" not in frozen  # "features.2." is exact


def test_zf_layout_matches_the_prototxt():
    parts = _meta_parts("zf")
    s = parts.shared
    convs = [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
             for m in s if isinstance(m, nn.Conv2d)]
    assert convs == [(96, 7, 2, 3), (256, 5, 2, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)]
    pools = [m for m in s if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode) for p in pools] == [(3, 2, 1, True)] * 2
    lrns = [m for m in s if isinstance(m, WithinChannelLRN)]
    assert [(m.size, m.alpha, m.beta) for m in lrns] == [(3, 5e-5, 0.75)] * 2
    assert parts.head_top.fc6.in_features == 9216 and parts.head_top.fc7.out_features == 4096
    assert sum(isinstance(m, CaffeDropout) for m in parts.head_top.modules()) == 2
    assert parts.frozen_prefixes == ()


def test_within_channel_lrn_divides_by_the_padded_3x3_mean_of_squares():
    lrn = WithinChannelLRN(size=3, alpha=0.5, beta=0.75)
    x = torch.full((1, 2, 3, 3), 2.0)
    x[0, 1] = 1.0
    y = lrn(x)
    # channel 0: centre window sums 9 * 4 over a divisor of 9; a corner window holds 4 pixels (still / 9)
    assert y[0, 0, 1, 1].item() == pytest.approx(2.0 / (1 + 0.5 * 4.0) ** 0.75)
    assert y[0, 0, 0, 0].item() == pytest.approx(2.0 / (1 + 0.5 * 16.0 / 9) ** 0.75)
    assert y[0, 0, 0, 1].item() == pytest.approx(2.0 / (1 + 0.5 * 24.0 / 9) ** 0.75)
    # within channel: channel 1 is normalised by its own values only
    assert y[0, 1, 1, 1].item() == pytest.approx(1.0 / (1 + 0.5 * 1.0) ** 0.75)


def test_caffe_dropout_halves_at_test_and_does_not_rescale_in_training():
    drop = CaffeDropout(0.5)
    x = torch.full((1000,), 3.0)
    assert torch.equal(drop.eval()(x), torch.full((1000,), 1.5))
    torch.manual_seed(0)
    y = drop.train()(x)
    assert set(y.unique().tolist()) == {0.0, 3.0}
    assert 400 < int((y == 3.0).sum()) < 600


def test_resnet_uses_frozen_batchnorm_and_pools_14_to_7_in_res5():
    parts = _meta_parts("resnet50")
    modules = list(parts.shared.modules()) + list(parts.head_top.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in modules) == 53  # every BN of ResNet-50
    seen = []
    parts.head_top.layer4.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)) and None)
    with torch.device("meta"):
        parts.head_top(torch.empty(3, 1024, 14, 14))
    assert seen == [(3, 2048, 7, 7)]
    assert parts.frozen_prefixes == ("conv1.", "bn1.", "layer1.")


def test_resnet_batchnorm_statistics_do_not_move_in_train_mode():
    torch.manual_seed(0)
    parts = build_backbone("resnet50")
    before = {k: v.clone() for k, v in parts.shared.state_dict().items()}
    parts.shared.train()(torch.randn(2, 3, 64, 80) * 5 + 3)
    assert all(torch.equal(before[k], v) for k, v in parts.shared.state_dict().items())


def test_tiny_is_five_stride_16_convs_with_groupnorm():
    parts = build_backbone("tiny")
    convs = [m for m in parts.shared if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.stride[0]) for m in convs] == [(32, 2), (64, 2), (96, 2), (128, 2), (128, 1)]
    assert sum(isinstance(m, nn.GroupNorm) for m in parts.shared) == 5
    assert (parts.head_top.fc6.in_features, parts.head_top.fc6.out_features) == (128 * 7 * 7, 256)
    assert (parts.head_top.fc7.in_features, parts.head_top.fc7.out_features) == (256, 256)
    assert sum(p.numel() for p in parts.shared.parameters()) < 400_000


_HEAVY = {"vgg16", "resnet101"}  # also run (whole model) by test_detector.py


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n
                                  for n in BACKBONES])
def test_every_backbone_runs_on_a_small_image_with_real_weights(name):
    torch.manual_seed(0)
    parts = build_backbone(name)
    parts.shared.eval()
    parts.head_top.eval()
    with torch.no_grad():
        feat = parts.shared(torch.randn(1, 3, 64, 80))
        top = parts.head_top(torch.randn(2, parts.out_channels, parts.pool_size, parts.pool_size))
    assert tuple(feat.shape) == (1, parts.out_channels, *{"zf": (5, 6)}.get(name, (4, 5)))
    assert tuple(top.shape) == (2, parts.head_dim)
    assert torch.isfinite(feat).all() and torch.isfinite(top).all()
    assert feat.abs().sum() > 0


def test_unknown_backbone_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match="vgg16, zf, resnet50, resnet101, tiny"):
        build_backbone("alexnet")


def test_every_backbone_the_config_allows_has_a_builder_and_no_other():
    from frcnn_cli.model import backbones

    assert tuple(backbones._BUILDERS) == BACKBONES
