"""RoI pooling (Caffe-exact RoIPool, aligned RoIAlign) and the Fast R-CNN predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from frcnn_cli.errors import ConfigError
from frcnn_cli.model.roi_head import RoIHead


def _head(channels=3, pool=3, head_dim=32, num_classes=4, **kwargs) -> RoIHead:
    top = nn.Sequential(nn.Flatten(), nn.Linear(channels * pool * pool, head_dim), nn.ReLU())
    return RoIHead(head_top=top, in_channels=channels, head_dim=head_dim, num_classes=num_classes,
                   pool_size=pool, **kwargs)


def _c_round(v: np.float32) -> int:
    """C's round(): half away from zero."""
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))


def _caffe_roi_pool(features: np.ndarray, roi_inclusive, pooled: int, scale: float) -> np.ndarray:
    """caffe-fast-rcnn ``ROIPoolingLayer::Forward_cpu`` for one RoI (py-faster-rcnn inclusive corners)."""
    f32 = np.float32
    batch, x1, y1, x2, y2 = roi_inclusive
    _, channels, height, width = features.shape
    start_w, start_h = _c_round(f32(x1) * f32(scale)), _c_round(f32(y1) * f32(scale))
    end_w, end_h = _c_round(f32(x2) * f32(scale)), _c_round(f32(y2) * f32(scale))
    roi_h, roi_w = max(end_h - start_h + 1, 1), max(end_w - start_w + 1, 1)
    bin_h, bin_w = f32(roi_h) / f32(pooled), f32(roi_w) / f32(pooled)
    out = np.zeros((channels, pooled, pooled), dtype=np.float32)
    for ph in range(pooled):
        for pw in range(pooled):
            hs = min(max(int(np.floor(f32(ph) * bin_h)) + start_h, 0), height)
            he = min(max(int(np.ceil(f32(ph + 1) * bin_h)) + start_h, 0), height)
            ws = min(max(int(np.floor(f32(pw) * bin_w)) + start_w, 0), width)
            we = min(max(int(np.ceil(f32(pw + 1) * bin_w)) + start_w, 0), width)
            if he > hs and we > ws:
                out[:, ph, pw] = features[int(batch), :, hs:he, ws:we].max(axis=(1, 2))
    return out


# ours (0-based continuous); several land on x*scale = k + 0.5 where C's round differs from banker's
ROIS_AT_QUARTER = [
    [0, 0.0, 0.0, 16.0, 16.0],
    [1, 3.3, 5.7, 27.9, 20.2],
    [0, 8.0, 8.0, 9.0, 9.0],  # one pixel wide: inclusive [8, 8, 8, 8]
    [1, -10.0, -3.0, 60.0, 50.0],  # larger than the map
    [0, 2.0, 6.0, 11.0, 15.0],  # 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, 3.5 -> 4
    [1, 10.5, 2.0, 30.5, 18.0],
    [0, 38.0, 30.0, 80.0, 60.0],  # mostly beyond the right/bottom edge: empty bins are 0
    [1, 5.0, 5.0, 4.0, 4.0],  # degenerate
]


@pytest.mark.parametrize("scale,factor", [(0.25, 1.0), (1.0 / 16, 4.0)])
@pytest.mark.parametrize("pool", [2, 3, 7])
def test_roipool_equals_caffe_roi_pooling(scale, factor, pool):
    torch.manual_seed(0)
    features = torch.randn(2, 3, 9, 11)
    rois = torch.tensor(ROIS_AT_QUARTER)
    rois[:, 1:] *= factor
    head = _head(pool=pool, spatial_scale=scale)
    pooled = head.pool(features, rois)
    assert pooled.shape == (len(rois), 3, pool, pool)
    for i, roi in enumerate(rois.tolist()):
        inclusive = [roi[0], roi[1], roi[2], roi[3] - 1.0, roi[4] - 1.0]  # py-faster-rcnn's box
        expected = _caffe_roi_pool(features.numpy(), inclusive, pool, scale)
        np.testing.assert_array_equal(pooled[i].numpy(), expected, err_msg=f"roi {roi}")


def test_roipool_of_grid_aligned_box_is_the_block_max():
    features = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    head = _head(channels=1, pool=2, spatial_scale=1.0)
    pooled = head.pool(features, torch.tensor([[0.0, 2.0, 0.0, 6.0, 4.0]]))  # columns 2..5, rows 0..3
    assert torch.equal(pooled[0, 0], torch.tensor([[11.0, 13.0], [27.0, 29.0]]))


def test_roialign_is_aligned_to_pixel_centres():
    features = torch.arange(12, dtype=torch.float32).expand(1, 1, 6, 12).contiguous()  # value = column index
    head = _head(channels=1, pool=2, pooler="roialign", spatial_scale=1.0, sampling_ratio=2)
    pooled = head.pool(features, torch.tensor([[0.0, 4.0, 0.0, 8.0, 4.0]]))
    # bins [4, 6) and [6, 8): samples at 4.5, 5.5 / 6.5, 7.5 hit columns (x - 0.5) = 4, 5 / 6, 7
    torch.testing.assert_close(pooled[0, 0], torch.tensor([[4.5, 6.5], [4.5, 6.5]]))


@pytest.mark.parametrize("ratio,expected", [(1, 20.5), (3, (14.0 + 5 / 6 + 20.5 + 26.0 + 5 / 6) / 3)])
def test_roialign_uses_the_sampling_ratio(ratio, expected):
    features = (torch.arange(12, dtype=torch.float32) ** 2).expand(1, 1, 6, 12).contiguous()
    head = _head(channels=1, pool=2, pooler="roialign", spatial_scale=1.0, sampling_ratio=ratio)
    pooled = head.pool(features, torch.tensor([[0.0, 4.0, 0.0, 8.0, 4.0]]))
    # first bin [4, 6): ratio 1 samples x = 5 (column 4.5 -> (16 + 25) / 2); ratio 3: x = 4.33, 5, 5.67
    assert pooled[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_predictor_initialisation_as_py_faster_rcnn():
    torch.manual_seed(0)
    head = _head(head_dim=512, num_classes=20)
    assert head.cls_score.weight.shape == (21, 512) and head.bbox_pred.weight.shape == (84, 512)
    assert head.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert abs(head.cls_score.weight.mean().item()) < 0.001
    assert torch.all(head.cls_score.bias == 0) and torch.all(head.bbox_pred.bias == 0)


def test_forward_is_predict_of_pool_and_backpropagates_to_features():
    torch.manual_seed(0)
    head = _head(num_classes=4)
    features = torch.randn(2, 3, 9, 11, requires_grad=True)
    rois = torch.tensor(ROIS_AT_QUARTER[:4]) * torch.tensor([1.0, 4.0, 4.0, 4.0, 4.0])
    logits, deltas = head(features, rois)
    assert logits.shape == (4, 5) and deltas.shape == (4, 20)
    ref_logits, ref_deltas = head.predict(head.pool(features, rois))
    assert torch.equal(logits, ref_logits) and torch.equal(deltas, ref_deltas)
    (logits.sum() + deltas.sum()).backward()
    assert features.grad is not None and features.grad.abs().sum().item() > 0


def test_no_rois_gives_empty_outputs():
    head = _head(num_classes=2)
    logits, deltas = head(torch.randn(1, 3, 5, 5), torch.zeros(0, 5))
    assert logits.shape == (0, 3) and deltas.shape == (0, 12)


def test_unknown_pooler_is_a_config_error():
    with pytest.raises(ConfigError, match="roi_head.pooler"):
        _head(pooler="roiwarp")
