"""Anchor templates and grid against py-faster-rcnn (shared/reference notes, section 1)."""

from __future__ import annotations

import torch

from frcnn_cli.config import AnchorConfig, get_preset
from frcnn_cli.model.anchors import AnchorGrid, generate_anchors
from frcnn_cli.model.rpn_targets import _inside

# py-faster-rcnn generate_anchors() (inclusive coordinates)
PFR_ANCHORS = torch.tensor([[-84., -40., 99., 55.],
                            [-176., -88., 191., 103.],
                            [-360., -184., 375., 199.],
                            [-56., -56., 71., 71.],
                            [-120., -120., 135., 135.],
                            [-248., -248., 263., 263.],
                            [-36., -80., 51., 95.],
                            [-80., -168., 95., 183.],
                            [-168., -344., 183., 359.]])


def _vgg_grid() -> AnchorGrid:
    return AnchorGrid(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32), stride=16)


def test_templates_equal_py_faster_rcnn_plus_one_on_x2_y2():
    anchors = generate_anchors()
    assert anchors.dtype == torch.float32
    assert torch.equal(anchors, PFR_ANCHORS + torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert anchors[0].tolist() == [-84.0, -40.0, 100.0, 56.0]


def test_templates_are_ratio_major_with_the_papers_sizes_and_one_centre():
    anchors = generate_anchors()
    wh = (anchors[:, 2:] - anchors[:, :2]).tolist()
    assert wh == [[184, 96], [368, 192], [736, 384], [128, 128], [256, 256], [512, 512],
                  [88, 176], [176, 352], [352, 704]]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.equal(centres, torch.full((9, 2), 8.0))


def test_non_integer_scales_of_the_tiny_preset():
    # ws = round(sqrt(256 / r)) = [23, 16, 11], hs = round(ws * r) = [12, 16, 22], times 1.5, 3, 6
    anchors = generate_anchors(16, (0.5, 1.0, 2.0), (1.5, 3.0, 6.0))
    wh = anchors[:, 2:] - anchors[:, :2]
    ratio_wh = ((23, 12), (16, 16), (11, 22))
    expected = torch.tensor([[w * s, h * s] for w, h in ratio_wh for s in (1.5, 3.0, 6.0)])
    assert torch.equal(wh, expected)
    assert anchors[0].tolist() == [-9.25, -1.0, 25.25, 17.0]
    tiny = get_preset("tiny").anchors
    assert torch.equal(generate_anchors(tiny.base_size, tiny.ratios, tiny.scales), anchors)


def test_grid_flat_order_is_row_column_anchor_with_stride_shifts():
    grid = _vgg_grid()
    h, w = 2, 3
    anchors = grid.grid(h, w, "cpu")
    assert grid.num_anchors == 9
    assert anchors.shape == (h * w * 9, 4)
    templates = generate_anchors()
    for row in range(h):
        for col in range(w):
            for a in range(9):
                shift = torch.tensor([16.0 * col, 16.0 * row, 16.0 * col, 16.0 * row])
                assert torch.equal(anchors[(row * w + col) * 9 + a], templates[a] + shift)


def test_grid_counts_and_inside_anchors_of_py_faster_rcnn_examples():
    grid = _vgg_grid()
    for (fh, fw), (ih, iw), total, inside in [((38, 50), (600, 800), 17100, 5944),  # VGG16 conv5_3
                                              ((39, 51), (600, 800), 17901, 5944),  # ZF conv5
                                              ((38, 57), (600, 901), 19494, 7041)]:
        anchors = grid.grid(fh, fw, "cpu")
        assert anchors.shape[0] == total
        assert int(_inside(anchors, torch.tensor([[ih, iw]]), 0.0, True).sum()) == inside


def _inside_one(anchors, height, width, border):
    return _inside(anchors, torch.tensor([[height, width]]), border, True)[0]


def test_inside_anchor_boundaries_and_allowed_border():
    anchors = torch.tensor([[0.0, 0.0, 100.0, 50.0],  # touches the right and bottom edge: inside
                            [-0.5, 0.0, 10.0, 10.0],
                            [0.0, 0.0, 100.5, 10.0],
                            [0.0, 0.0, 10.0, 50.5],
                            [-5.0, -5.0, 105.0, 55.0]])
    assert _inside_one(anchors, 50, 100, 0.0).tolist() == [True, False, False, False, False]
    assert _inside_one(anchors, 50, 100, 5.0).tolist() == [True, True, True, True, True]
    assert _inside_one(anchors, 50, 100, 4.9).tolist() == [True, True, True, True, False]


def test_grid_is_cached_per_size_and_built_from_config():
    grid = AnchorGrid.from_config(AnchorConfig())
    assert grid.num_anchors == 9 and grid.stride == 16
    first = grid.grid(4, 5, "cpu")
    assert grid.grid(4, 5, torch.device("cpu")) is first
    assert grid.grid(5, 4, "cpu") is not first
    assert grid.grid(5, 4, "cpu").shape == (180, 4)
