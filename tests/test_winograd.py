"""Winograd F(m×m, 3×3) convolutions of the CPU inference path against the direct convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_predictor, tiny_config
from torch import nn

from frcnn_cli.data.voc import VOC_CLASSES
from frcnn_cli.model import winograd
from frcnn_cli.model.backbones import build_backbone
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.winograd import WinogradConv2d, eligible, kernel_transform, use_winograd, winograd_conv3x3

CPU = torch.device("cpu")


def _relative_error(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    return float((got.double() - exact).abs().max() / exact.abs().max())


def test_f2_on_small_integers_equals_the_direct_convolution_exactly():
    # Bᵀ, Aᵀ are integer and G g Gᵀ of an integer kernel is a multiple of 1/4: every step is exact in float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2, 5, 9, 7), generator=gen).float()
    weight = torch.randint(-2, 3, (6, 5, 3, 3), generator=gen).float()
    bias = torch.randint(-5, 6, (6,), generator=gen).float()
    got = winograd_conv3x3(x, kernel_transform(weight, 2), bias, 2)
    assert torch.equal(got, F.conv2d(x, weight, bias, padding=1))


def test_f2_of_a_single_pixel_is_the_flipped_kernel():
    # one 1 in the middle of a 3x3 map: the output is the kernel rotated by 180 degrees (cross-correlation)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    weight = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    got = winograd_conv3x3(x, kernel_transform(weight, 2), None, 2)
    assert got[0, 0].tolist() == [[9.0, 8.0, 7.0], [6.0, 5.0, 4.0], [3.0, 2.0, 1.0]]


@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (2, 32, 13, 11), (1, 24, 5, 30), (3, 8, 1, 1)])
@pytest.mark.parametrize("tile", [2, 4])
def test_random_maps_match_the_direct_convolution_to_float_rounding(shape, tile):
    gen = torch.Generator().manual_seed(sum(shape) + tile)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen).relu().contiguous(memory_format=torch.channels_last)
    weight = torch.randn(20, c, 3, 3, generator=gen) * (2.0 / (9 * c)) ** 0.5
    bias = torch.randn(20, generator=gen) * 0.1
    got = winograd_conv3x3(x, kernel_transform(weight, tile), bias, tile)
    assert got.shape == (n, 20, h, w) and got.is_contiguous(memory_format=torch.channels_last)
    # direct float32 convolutions are ~1e-6 off float64; F(2x2) as exact, F(4x4) ~1e-5 (transform constants)
    assert _relative_error(got, x, weight, bias) < (3e-6 if tile == 2 else 5e-5)


def test_bands_of_tile_rows_cover_the_whole_map(monkeypatch):
    monkeypatch.setattr(winograd, "_band_rows", lambda tiles_w, channels: 2)  # 5 bands, the last one short
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 35, 9, generator=gen)
    weight, bias = torch.randn(4, 8, 3, 3, generator=gen), torch.randn(4, generator=gen)
    got = winograd_conv3x3(x, kernel_transform(weight, 4), bias, 4)
    assert _relative_error(got, x, weight, bias) < 5e-5


def test_winograd_conv_is_the_conv_it_replaces():
    conv = nn.Conv2d(128, 128, 3, padding=1)
    fast = WinogradConv2d.from_conv(conv)
    assert fast.weight is conv.weight and fast.bias is conv.bias
    assert list(fast.state_dict()) == list(conv.state_dict())
    x = torch.randn(1, 128, 20, 24)
    with torch.no_grad():
        assert _relative_error(fast(x), x, conv.weight, conv.bias) < 5e-5
    # with autograd, on a map under MIN_TRAIN_PIXELS, its forward is the direct convolution, bit for bit
    y = fast(x)
    assert torch.equal(y, conv(x))
    y.sum().backward()
    assert conv.weight.grad is not None


def test_the_transformed_kernel_follows_weight_updates():
    fast = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        fast(x)
        fast.load_state_dict({"weight": torch.ones(8, 8, 3, 3), "bias": torch.zeros(8)})
        out = fast(x)
    expected = F.conv2d(x, torch.ones(8, 8, 3, 3), torch.zeros(8), padding=1)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_small_maps_run_the_direct_convolution():
    fast = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 12, 16)  # 192 pixels < MIN_PIXELS
    with torch.no_grad():
        assert torch.equal(fast(x), F.conv2d(x, fast.weight, fast.bias, padding=1))
        unbatched = torch.randn(8, 20, 24)  # nn.Conv2d takes [C, H, W] too: the direct convolution
        assert torch.equal(fast(unbatched), F.conv2d(unbatched, fast.weight, fast.bias, padding=1))


def test_only_plain_3x3_convs_with_enough_channels_are_eligible():
    assert eligible(nn.Conv2d(128, 256, 3, padding=1))
    assert not eligible(nn.Conv2d(64, 128, 3, padding=1))  # conv2_1: the transforms cost more
    assert not eligible(nn.Conv2d(256, 256, 3, padding=1, stride=2))
    assert not eligible(nn.Conv2d(256, 256, 3, padding=2, dilation=2))
    assert not eligible(nn.Conv2d(256, 256, 3, padding=1, groups=2))
    assert not eligible(nn.Conv2d(256, 256, 1))
    assert not eligible(nn.Conv2d(256, 256, 3, padding=1, padding_mode="reflect"))


def test_vgg16_gets_winograd_from_conv2_2_on():
    features = build_backbone("vgg16").shared
    replaced = use_winograd(features)
    # VGG16's features: conv1_1 0, conv1_2 2, conv2_1 5, conv2_2 7, conv3_x 10 12 14, conv4_x 17 19 21, conv5_x 24 26 28
    assert replaced == [f"features.{i}" for i in (7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]


def test_the_predictor_follows_the_runtime_switch():
    model = FasterRCNN(tiny_config(), list(VOC_CLASSES))
    assert cpu_predictor(model).winograd_layers == ["backbone.conv5", "rpn.conv"]
    off = cpu_predictor(model, runtime=("runtime.cpu_winograd=false",))
    assert off.winograd_layers == [] and type(off.model.backbone.conv5) is nn.Conv2d


def test_detections_with_and_without_winograd_agree(monkeypatch):
    # the tiny model at the paper's test scale: conv5 and the RPN conv run on a 38x50 map as Winograd
    size = ("input.test_scale=600", "input.max_size=1000")
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(*size), list(VOC_CLASSES))
    direct_predictor = cpu_predictor(model, runtime=("runtime.cpu_winograd=false",))
    fast_predictor = cpu_predictor(model)
    assert direct_predictor.winograd_layers == []
    assert fast_predictor.winograd_layers == ["backbone.conv5", "rpn.conv"]
    direct, fast = direct_predictor.model, fast_predictor.model
    proposer, rules = fast_predictor.settings.proposer, fast_predictor.settings.detections
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.rand(1, 3, 600, 800).contiguous(memory_format=torch.channels_last)
    sizes, scales, originals = torch.tensor([[600, 800]]), torch.tensor([1.6]), torch.tensor([[375, 500]])
    with torch.inference_mode():
        a = direct(x, sizes, scales, proposer=proposer)
        b = fast(x, sizes, scales, proposer=proposer)
        det_a = direct.detect(a, sizes, scales, originals, settings=rules)[0]
        det_b = fast.detect(b, sizes, scales, originals, settings=rules)[0]
    assert a.features.shape[-2:] == (38, 50) and len(calls) == 2  # conv5 and the RPN conv, fast path
    assert float((a.features - b.features).abs().max()) < 1e-4 * float(a.features.abs().max())
    assert torch.equal(a.rois[:, 0], b.rois[:, 0]) and a.rois.shape == b.rois.shape
    assert float((a.rois - b.rois).abs().max()) < 1e-2  # pixels of a 600x800 image
    assert float((a.class_logits - b.class_logits).abs().max()) < 1e-3
    assert torch.equal(det_a["labels"], det_b["labels"]) and len(det_a["labels"]) > 0
    assert float((det_a["boxes"] - det_b["boxes"]).abs().max()) < 1e-2
    assert float((det_a["scores"] - det_b["scores"]).abs().max()) < 1e-4


def test_the_input_gradient_kernel_is_the_flipped_transposed_kernel():
    # the input gradient of a 3x3, padding-1 convolution is the convolution of the output gradient with
    # weight.transpose(0, 1).flip(2, 3): kernel_transform(flipped=True) folds both into the transform
    weight = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(3))
    flipped = kernel_transform(weight, 4, flipped=True)
    assert flipped.shape == (36, 6, 5) and flipped.is_contiguous()
    expected = kernel_transform(weight.transpose(0, 1).flip(2, 3).contiguous(), 4)
    assert torch.allclose(flipped, expected, rtol=0, atol=1e-6)
    # position (0, 0) of G g G^T is g[0, 0] / 16 (G's first row is [1/4, 0, 0])
    assert torch.allclose(kernel_transform(weight, 4)[0], weight[:, :, 0, 0].T / 16)
    assert torch.allclose(flipped[0], weight[:, :, 2, 2] / 16)


def test_the_weight_gradient_of_nine_shifted_products_equals_torchs():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 4, 5, 7, generator=gen, dtype=torch.float64)
    expected = torch.nn.grad.conv2d_weight(x, (4, 3, 3, 3), grad, padding=1)
    assert torch.allclose(winograd.conv3x3_weight_grad(x, grad), expected, rtol=1e-12, atol=1e-12)
    # tap (0, 0) of a single output pixel at (0, 0) sees the zero padding only; tap (1, 1) the pixel itself
    x1, g1 = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    g1[0, 0, 0, 0] = 1
    assert winograd.conv3x3_weight_grad(x1, g1)[0, 0].tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]


@pytest.mark.parametrize("tile", [2, 4])
def test_the_winograd_weight_gradient_equals_torchs(tile, monkeypatch):
    # the adjoint of the forward's transforms: exact in real arithmetic, so float64 agrees to rounding,
    # also on maps that are not a whole number of tiles (9x7) and in bands (the last one short)
    monkeypatch.setattr(winograd, "_band_rows", lambda tiles_w, channels: 2)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 4, 9, 7, generator=gen, dtype=torch.float64)
    expected = torch.nn.grad.conv2d_weight(x, (4, 3, 3, 3), grad, padding=1)
    got = winograd.winograd_weight_grad(x, grad, tile)
    assert got.dtype == torch.float64 and torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def _trained_pair(channels: int, generator: torch.Generator) -> tuple[nn.Conv2d, WinogradConv2d]:
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
        conv.bias.copy_(torch.randn(channels, generator=generator))
    fast = WinogradConv2d.from_conv(nn.Conv2d(channels, channels, 3, padding=1))
    fast.load_state_dict(conv.state_dict())
    return conv, fast


@pytest.mark.parametrize("shape", [(1, 16, 48, 50), (2, 16, 33, 35), (2, 16, 12, 16)])
def test_trained_convs_give_the_direct_convolutions_gradients(shape):
    # 2400 and 2310 pixels per batch: Winograd forward, input and weight gradients; 384 (< MIN_TRAIN_PIXELS):
    # direct forward and input gradient, weight gradient from conv3x3_weight_grad; on a channels-last input
    # as after a Winograd layer
    gen = torch.Generator().manual_seed(5)
    conv, fast = _trained_pair(shape[1], gen)
    x = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=gen)
    results = []
    for module in (conv, fast):
        xi = x.clone().requires_grad_(True)
        y = torch.relu_(module(xi))  # an in-place op on the output, as VGG16's ReLU(inplace=True)
        y.backward(grad)
        results.append((y.detach(), xi.grad, module.weight.grad, module.bias.grad))
    for got, expected in zip(results[1], results[0]):
        assert float((got - expected).abs().max() / expected.abs().max()) < 5e-5


def test_trained_convs_take_the_winograd_path_on_large_maps(monkeypatch):
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    fast = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 48, 48, requires_grad=True)  # 2304 pixels >= MIN_TRAIN_PIXELS
    fast(x).sum().backward()
    assert len(calls) == 2  # forward and input gradient
    calls.clear()
    fast(x.detach()).sum().backward()  # no gradient for the input (the first trained conv): forward only
    assert len(calls) == 1 and fast.weight.grad is not None
    calls.clear()
    with torch.no_grad():
        fast.weight.add_(1.0)  # an optimizer step: the cached kernel transform must follow
        expected = F.conv2d(x, fast.weight, fast.bias, padding=1)
    assert torch.allclose(fast(x), expected, rtol=1e-4, atol=1e-3)


def test_in_training_small_maps_run_the_direct_convolution(monkeypatch):
    # train/stage.py swaps the convs on the CPU: frozen convs run forward as Winograd on maps of at least
    # MIN_PIXELS; a trained conv needs MIN_TRAIN_PIXELS per batch (its kernel transform is redone at
    # every step), else it is the direct convolution
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3", lambda *a: calls.append(1) or real(*a))
    frozen = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1)).requires_grad_(False)
    trained = WinogradConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 16, 16)
    features = frozen(x)
    assert len(calls) == 1 and not features.requires_grad
    trained(features).sum().backward()
    assert len(calls) == 1 and trained.weight.grad is not None
    frozen(x.requires_grad_(True)).sum().backward()  # gradient needed for the input: direct (small map)
    assert len(calls) == 1 and x.grad is not None
