"""RoIAlign's CPU backward as two matrix products: torchvision's values and gradients."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from frcnn_cli.model.roialign_grad import roi_align_aligned


def test_the_gradient_is_torchvisions_for_rois_inside_across_and_beyond_the_map():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 8, 11, 14, generator=gen, requires_grad=True)
    xy = torch.rand(40, 2, generator=gen) * torch.tensor([14 * 16.0, 11 * 16.0]) - 30
    wh = torch.rand(40, 2, generator=gen) * 150 + 1
    rois = torch.cat((torch.randint(0, 3, (40, 1), generator=gen).float(), xy, xy + wh), 1)
    rois[0] = torch.tensor([1.0, -60.0, -60.0, 400.0, 300.0])  # samples beyond the map on every side
    rois[1] = torch.tensor([2.0, 208.0, 160.0, 240.0, 190.0])  # past the last row and column
    grad = torch.randn(40, 8, 7, 7, generator=gen)
    expected = roi_align(features, rois, 7, 1 / 16, 2, aligned=True)
    (want,) = torch.autograd.grad((expected * grad).sum(), features)
    values = roi_align_aligned(features, rois, 7, 1 / 16, 2)
    (got,) = torch.autograd.grad((values * grad).sum(), features)
    assert torch.equal(values, expected)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_without_gradients_it_is_torchvisions_roi_align():
    features = torch.randn(1, 4, 6, 6)
    rois = torch.tensor([[0.0, 3.0, 5.0, 60.0, 70.0]])
    assert torch.equal(roi_align_aligned(features, rois, 7, 1 / 16, 2), roi_align(features, rois, 7, 1 / 16, 2,
                                                                                  aligned=True))
