"""The CPU RoIPool (sparse-table maxima) against torchvision's kernel: the same values, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_pool

from frcnn_cli.model import roipool
from frcnn_cli.model.roi_head import RoIHead
from frcnn_cli.model.roipool import roi_pool_table


def test_caffe_bins_of_a_hand_built_map():
    # a 4x4 map 0..15; the RoI [0, 63] px at 1/16 is cells 0..round(3.9375)=4: width 5, bins of 2.5 cells:
    # [floor(0), ceil(2.5)) = 0..2 and [floor(2.5), ceil(5)) = 2..4, clipped to 2..3; the bins overlap
    features = torch.arange(16.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 63.0, 63.0]])
    assert roi_pool_table(features, rois, 2, 1 / 16)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    assert torch.equal(roi_pool_table(features, rois, 2, 1 / 16), roi_pool(features, rois, 2, 1 / 16))


def test_corners_round_half_away_from_zero_as_c():
    # x = 8 px is 0.5 cells: C's round gives cell 1 (torch.round would give 0); the map falls with the index
    features = (15.0 - torch.arange(16.0)).view(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 8.0, 8.0, 8.0, 8.0], [0.0, 24.0, 8.0, 24.0, 8.0]])
    pooled = roi_pool_table(features, rois, 1, 1 / 16)
    assert pooled.flatten().tolist() == [10.0, 9.0]  # cells (1, 1) and (1, 2): 15 - 5, 15 - 6
    assert torch.equal(pooled, roi_pool(features, rois, 1, 1 / 16))


def test_bins_outside_the_map_are_zero():
    features = torch.full((1, 2, 3, 3), -5.0)
    rois = torch.tensor([[0.0, 100.0, 100.0, 200.0, 200.0]])  # wholly outside: every bin empty
    pooled = roi_pool_table(features, rois, 2, 1 / 16)
    assert pooled.abs().sum() == 0 and torch.equal(pooled, roi_pool(features, rois, 2, 1 / 16))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_maps_and_rois_equal_torchvision(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = 2, 5, 7 + 5 * seed, 30 - 3 * seed
    features = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    if seed % 2:
        features = features.contiguous(memory_format=torch.channels_last)
    s = 60
    corner = torch.rand(s, 2, generator=gen, dtype=dtype) * torch.tensor([w * 16.0, h * 16.0], dtype=dtype) - 24
    size = torch.rand(s, 2, generator=gen, dtype=dtype) * torch.tensor([w * 18.0, h * 18.0], dtype=dtype)
    boxes = torch.cat((corner, corner + size), 1)
    boxes[: s // 3] = torch.round(boxes[: s // 3] / 8) * 8  # multiples of half a cell: rounding ties
    boxes[s // 3: s // 2, 2:] = boxes[s // 3: s // 2, :2] - 3  # inverted: torchvision forces 1x1
    rois = torch.cat((torch.randint(0, n, (s, 1), generator=gen).to(dtype), boxes), 1)
    for size_out in (1, 3, 7):
        expected = roi_pool(features, rois, size_out, 1 / 16)
        assert torch.equal(roi_pool_table(features, rois, size_out, 1 / 16), expected)


def test_chunks_of_bins_cover_every_roi(monkeypatch):
    monkeypatch.setattr(roipool, "CHUNK_ROWS", 7)  # 3 RoIs x 49 bins in 21 chunks
    features = torch.randn(1, 3, 20, 20)
    rois = torch.tensor([[0.0, 0, 0, 300, 300], [0.0, 40, 20, 100, 90], [0.0, 5, 5, 6, 6]])
    assert torch.equal(roi_pool_table(features, rois, 7, 1 / 16), roi_pool(features, rois, 7, 1 / 16))


def test_no_rois():
    assert roi_pool_table(torch.randn(1, 4, 5, 5), torch.zeros(0, 5), 7, 1 / 16).shape == (0, 4, 7, 7)


def test_the_head_uses_it_only_where_no_gradient_reaches_the_features(monkeypatch):
    calls = []
    monkeypatch.setattr("frcnn_cli.model.roi_head.roi_pool_table",
                        lambda *a: calls.append(1) or roipool.roi_pool_table(*a))
    head = RoIHead(head_top=torch.nn.Flatten(), in_channels=4, head_dim=4 * 7 * 7, num_classes=2, pool_size=7)
    features = torch.randn(1, 4, 10, 10)
    rois = torch.tensor([[0.0, 10, 10, 90, 120]])
    with torch.no_grad():
        fast = head.pool(features, rois)
    assert len(calls) == 1
    slow = head.pool(features.requires_grad_(True), rois)  # training through the shared convs: torchvision
    assert len(calls) == 1 and slow.requires_grad and torch.equal(fast, slow.detach())
