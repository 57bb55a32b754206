"""Anchor coverage of the training boxes (the best possible recall at the RPN's grid) and the fit that raises it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from frcnn_cli.boxes import box_iou
from frcnn_cli.config import AnchorConfig, RPNConfig, get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.model.anchor_fit import (
    ScaledImage,
    anchor_coverage,
    box_spread,
    decide_anchors,
    fit_anchors,
)
from frcnn_cli.model.anchors import AnchorGrid

SQUARE_32 = AnchorConfig(base_size=16, ratios=(1.0,), scales=(2.0,), stride=16)  # one 32x32 anchor per cell


def test_a_box_on_an_anchor_is_covered_and_one_between_cells_only_at_half():
    # 32x32 anchors centred at 8 + 16k: a box exactly on one has IoU 1; shifted by 8 px both ways, 24^2 / (2*32^2
    # - 24^2) = 576 / 1472 = 0.391; shifted by 8 px one way, 24*32 / (2*1024 - 768) = 0.6
    boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0], [24.0, 24.0, 56.0, 56.0], [24.0, 16.0, 56.0, 48.0]])
    cov = anchor_coverage([ScaledImage((96, 96), boxes)], SQUARE_32, RPNConfig())
    assert (cov.boxes, cov.at_07, cov.at_05) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert cov.mean_iou == pytest.approx((1.0 + 576 / 1472 + 0.6) / 3, abs=1e-6)
    assert cov.poor


def test_anchors_crossing_the_border_do_not_count():
    # the only anchor on this box (cell 0, 0: [-8, -8, 24, 24]) crosses the border and is ignored in training
    box = torch.tensor([[-8.0, -8.0, 24.0, 24.0]]).clamp(min=0)  # [0, 0, 24, 24]
    inside = anchor_coverage([ScaledImage((64, 64), box)], SQUARE_32, RPNConfig())
    anywhere = anchor_coverage([ScaledImage((64, 64), box)], SQUARE_32, RPNConfig(ignore_cross_boundary=False))
    assert anywhere.mean_iou == pytest.approx(576 / 1024) and inside.mean_iou < anywhere.mean_iou


def test_the_coverage_equals_the_best_iou_over_the_whole_inside_grid():
    gen = torch.Generator().manual_seed(0)
    images = []
    for _ in range(20):
        h, w = (int(v) for v in torch.randint(120, 300, (2,), generator=gen))
        xy = torch.rand(4, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(4, 2, generator=gen) * 120 + 8
        images.append(ScaledImage((h, w), torch.cat((xy, torch.minimum(xy + wh, torch.tensor([w, h]))), 1)))
    anchors = get_preset("tiny").anchors
    grid = AnchorGrid.from_config(anchors)
    best = []
    for im in images:
        cells = grid.grid(math.ceil(im.size[0] / 16), math.ceil(im.size[1] / 16))
        inside = (cells[:, 0] >= 0) & (cells[:, 1] >= 0) & (cells[:, 2] <= im.size[1]) & (cells[:, 3] <= im.size[0])
        best.append(box_iou(cells[inside], im.boxes).max(dim=0).values)
    best = torch.cat(best)
    cov = anchor_coverage(images, anchors, RPNConfig())
    assert cov.at_05 == pytest.approx(float((best >= 0.5).float().mean()))
    assert cov.mean_iou == pytest.approx(float(best.mean()), abs=1e-6)


def test_the_fit_raises_the_coverage_of_boxes_the_anchors_miss():
    # 240x120 and 120x240 boxes: the tiny preset's largest 2:1 anchor is 138x72 (IoU 0.35)
    boxes = [torch.tensor([[16.0 * k, 16.0, 16.0 * k + 240, 136.0], [16.0, 16.0 * k, 136.0, 16.0 * k + 240]])
             for k in range(1, 6)]
    images = [ScaledImage((400, 400), b) for b in boxes]
    before = anchor_coverage(images, get_preset("tiny").anchors, RPNConfig())
    fitted, after = fit_anchors(images, get_preset("tiny").anchors, RPNConfig())
    assert before.at_07 == 0.0 and after.at_07 == 1.0 and after.at_05 == 1.0
    assert len(fitted.scales) == 3 and len(fitted.ratios) == 3  # the RPN's 3 x 3 anchors per cell


def _manifest(boxes_per_image, size=(400, 300)) -> Manifest:
    images = [ImageRecord(id=f"{i}", path=f"{i}.jpg", width=size[0], height=size[1], boxes=boxes,
                          labels=[0] * len(boxes), difficult=[False] * len(boxes))
              for i, boxes in enumerate(boxes_per_image)]
    return Manifest(name="hand", classes=["thing"], root="/nowhere", images=images)


def test_tiny_fits_poorly_covering_anchors_and_records_them_the_paper_presets_warn():
    big = _manifest([[[20.0 + 8 * k, 30.0, 270.0 + 8 * k, 280.0]] for k in range(8)])  # 250 px: 160 at scale 192
    tiny = decide_anchors(get_preset("tiny"), big)
    assert tiny.fitted and not tiny.warn and tiny.config.anchors.auto is False
    assert tiny.after.at_05 > tiny.before.at_05 and "anchors fitted" in tiny.message
    assert tiny.config.anchors.scales != get_preset("tiny").anchors.scales
    small = _manifest([[[100.0 + 4 * k, 100.0, 112.0 + 4 * k, 112.0]] for k in range(8)])  # 12 px at 600
    paper = decide_anchors(get_preset("vgg16"), small)
    assert paper.warn and not paper.fitted and paper.config == get_preset("vgg16")
    assert "--set anchors.scales=" in paper.message and "--set anchors.ratios=" in paper.message
    off = decide_anchors(apply_overrides(get_preset("tiny"), ["anchors.auto=false"]), big)
    assert off.warn and off.config.anchors == replace(get_preset("tiny").anchors, auto=False)


def test_well_covered_boxes_leave_the_anchors_alone():
    fits = _manifest([[[0.0, 0.0, 48.0, 48.0], [96.0, 96.0, 144.0, 144.0]]], size=(192, 192))
    tiny = apply_overrides(get_preset("tiny"), ["input.train_scales=192"])  # shown at its own size: scale 1
    decision = decide_anchors(tiny, fits)  # 48x48 boxes on the 48-px anchors' cells
    assert not decision.fitted and not decision.warn and decision.config == tiny
    assert decision.before.at_07 == 1.0


def test_the_box_spread_is_in_pixels_and_in_shorter_sides():
    spread = box_spread(_manifest([[[0.0, 0.0, 30.0, 120.0]], [[0.0, 0.0, 60.0, 60.0]]], size=(400, 300)))
    assert spread["boxes"] == 2 and spread["size"][1] == pytest.approx(60.0)
    assert spread["relative"][1] == pytest.approx(0.2) and spread["aspect"][1] == pytest.approx(2.5)
