from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from frcnn_cli.config import get_preset
from frcnn_cli.errors import ConfigError
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.svd import SVDLinear, compress_fc_svd, factorize_linear


def linear_macs(module) -> int:
    """Multiply-adds per input row of every ``nn.Linear`` inside ``module`` (``I·O`` each)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def _layer_with_singular_values(values, out_features=6, in_features=8, seed=0) -> nn.Linear:
    """A Linear whose weight is U diag(values) Vᵀ with random orthonormal U, V and a bias 0.5..."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_features, len(values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, len(values), generator=gen, dtype=torch.float64))
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T)
        layer.bias.copy_(torch.linspace(0.5, 1.0, out_features))
    return layer


def _product(fact: SVDLinear) -> torch.Tensor:
    return fact.expand.weight.double() @ fact.reduce.weight.double()


def test_full_rank_factorisation_reproduces_the_layer():
    layer = _layer_with_singular_values([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    fact = factorize_linear(layer, rank=6)
    x = torch.randn(10, 8)
    assert fact.rank == 6
    torch.testing.assert_close(fact(x), layer(x), atol=1e-5, rtol=1e-5)


def test_truncation_error_is_the_discarded_singular_values():
    # Eckart–Young: the best rank-3 approximation of singular values 5,4,3,2,1 misses sqrt(2² + 1²)
    layer = _layer_with_singular_values([5.0, 4.0, 3.0, 2.0, 1.0])
    fact = factorize_linear(layer, rank=3)
    error = torch.linalg.matrix_norm(_product(fact) - layer.weight.double())
    assert error.item() == pytest.approx(math.sqrt(5.0), abs=1e-4)
    # the reduce layer carries the singular values: its row norms are 5, 4, 3
    norms = torch.linalg.vector_norm(fact.reduce.weight.double(), dim=1)
    torch.testing.assert_close(norms, torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(fact.expand.bias, layer.bias)
    assert fact.expand.bias is not layer.bias


def test_tall_layer_uses_the_right_singular_vectors():
    layer = _layer_with_singular_values([3.0, 2.0, 1.0], out_features=9, in_features=4)
    fact = factorize_linear(layer, rank=2)
    error = torch.linalg.matrix_norm(_product(fact) - layer.weight.double())
    assert error.item() == pytest.approx(1.0, abs=1e-4)


def test_rank_above_the_layer_size_is_capped_and_zero_refused():
    layer = nn.Linear(5, 3)
    assert factorize_linear(layer, rank=100).rank == 3
    with pytest.raises(ConfigError, match="fc_svd_rank"):
        factorize_linear(layer, rank=0)


def _tiny_model() -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(get_preset("tiny"), ["a", "b", "c"]).eval()


def _head_outputs(model: FasterRCNN):
    torch.manual_seed(1)
    features = torch.randn(1, 128, 12, 16)
    rois = torch.tensor([[0, 10.0, 20.0, 90.0, 120.0], [0, 0.0, 0.0, 250.0, 190.0], [0, 40.0, 8.0, 60.0, 30.0]])
    with torch.no_grad():
        return model.roi_head(features, rois)


def test_full_rank_compression_of_a_detector_keeps_its_outputs():
    model = _tiny_model()
    before = _head_outputs(model)
    names = compress_fc_svd(model, rank=256)  # tiny: fc6 6272 -> 256, fc7 256 -> 256
    after = _head_outputs(model)
    assert names == ["roi_head.head_top.fc6", "roi_head.head_top.fc7"]
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_low_rank_compression_approximates_and_saves_work():
    # trained fc layers have fast-decaying spectra (Fast R-CNN keeps 1024 of fc6's 4096 values); make
    # fc6 and fc7 rank 16 plus a little noise, so that rank 32 keeps nearly everything
    model = _tiny_model()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for fc in (model.roi_head.head_top.fc6, model.roi_head.head_top.fc7):
            out_f, in_f = fc.weight.shape
            low = torch.randn(out_f, 16, generator=gen) @ torch.randn(16, in_f, generator=gen) / in_f ** 0.5
            fc.weight.copy_(low + 1e-4 * torch.randn(out_f, in_f, generator=gen))
    logits, deltas = _head_outputs(model)
    macs = linear_macs(model.roi_head.head_top)
    compress_fc_svd(model, rank=32)
    small_logits, small_deltas = _head_outputs(model)
    assert macs == 6272 * 256 + 256 * 256
    assert linear_macs(model.roi_head.head_top) == 32 * (6272 + 256) + 32 * (256 + 256)
    for small, full in ((small_logits, logits), (small_deltas, deltas)):
        rel = torch.linalg.vector_norm(small - full) / torch.linalg.vector_norm(full)
        assert 0 < rel.item() < 0.01


def test_compressing_twice_leaves_the_compressed_layers_alone():
    model = _tiny_model()
    compress_fc_svd(model, rank=32)
    fc6 = model.roi_head.head_top.fc6
    assert compress_fc_svd(model, rank=16) == []
    assert model.roi_head.head_top.fc6 is fc6 and fc6.rank == 32
