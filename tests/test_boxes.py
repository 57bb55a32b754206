"""Box arithmetic and the box coder against py-faster-rcnn's numbers (shared/reference notes, section 2).

py-faster-rcnn's inclusive boxes ``[x1, y1, x2, y2]`` are ours ``[x1, y1, x2 + 1, y2 + 1]``.
"""

from __future__ import annotations

import math

import pytest
import torch

from frcnn_cli.boxes import BoxCoder, box_area, box_iou, clip_boxes, flip_boxes, small_box_mask

PLUS_ONE = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)

# bbox_transform(ex, gt) / bbox_transform_inv(ex, deltas) of py-faster-rcnn, inclusive coordinates
PFR_EX = torch.tensor([[0, 0, 15, 15], [-84, -40, 99, 55], [10, 20, 60, 120]], dtype=torch.float64)
PFR_GT = torch.tensor([[2, 3, 20, 30], [0, 0, 99, 49], [12, 18, 70, 110]], dtype=torch.float64)
PFR_TARGETS = torch.tensor([[0.21875, 0.5625, 0.17185026, 0.55961579],
                            [0.22826087, 0.17708333, -0.60976557, -0.65232519],
                            [0.11764706, -0.05940594, 0.14571181, -0.08252102]], dtype=torch.float64)
PFR_DELTAS = torch.tensor([[0.1, -0.2, 0.3, -0.4], [0, 0, 0, 0], [0.5, 0.5, math.log(2), math.log(0.5)]],
                          dtype=torch.float64)
PFR_DECODED = torch.tensor([[-1.19887046, -0.56256037, 20.39887046, 10.16256037],
                            [-84, -40, 100, 56],
                            [10, 95.75, 112, 146.25]], dtype=torch.float64)


def test_box_area_is_width_times_height_without_plus_one_and_zero_when_degenerate():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [3.0, 3.0, 3.0, 9.0], [5.0, 5.0, 2.0, 2.0]])
    assert box_area(boxes).tolist() == [50.0, 0.0, 0.0]


def test_iou_equals_py_faster_rcnn_plus_one_iou_of_the_inclusive_boxes():
    # inclusive [0,0,9,9] and [5,5,14,14]: iw = ih = 9 - 5 + 1 = 5, IoU = 25 / (100 + 100 - 25)
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [10.0, 0.0, 20.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    assert iou[0, 0].item() == pytest.approx(25 / 175, abs=1e-7)
    assert iou[0, 1].item() == 0.0  # touching edges: no overlap
    assert iou[0, 2].item() == 1.0


def test_iou_of_degenerate_boxes_is_zero_not_nan():
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0], [4.0, 4.0, 2.0, 2.0]])
    iou = box_iou(point, torch.cat([point, torch.tensor([[0.0, 0.0, 10.0, 10.0]])]))
    assert torch.isfinite(iou).all()
    assert iou.abs().sum().item() == 0.0


def test_iou_with_no_boxes_has_empty_shape():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert box_iou(a, torch.zeros(0, 4)).shape == (1, 0)
    assert box_iou(torch.zeros(0, 4), a).shape == (0, 1)


def test_clip_matches_py_faster_rcnn_example():
    # py-faster-rcnn: [-10,-5,700,400] in a (375, 500) image -> inclusive [0,0,499,374] == ours [0,0,500,375]
    clipped = clip_boxes(torch.tensor([[-10.0, -5.0, 700.0, 400.0], [1.0, 2.0, 3.0, 4.0]]), 375, 500)
    assert clipped.tolist() == [[0.0, 0.0, 500.0, 375.0], [1.0, 2.0, 3.0, 4.0]]


def test_clip_with_one_size_per_image_and_class_specific_columns():
    boxes = torch.tensor([[-10.0, -5.0, 700.0, 400.0, 5.0, 5.0, 600.0, 600.0],
                          [-10.0, -5.0, 700.0, 400.0, 5.0, 5.0, 600.0, 600.0]])
    clipped = clip_boxes(boxes, torch.tensor([375, 100]), torch.tensor([500, 200]))
    assert clipped.tolist() == [[0.0, 0.0, 500.0, 375.0, 5.0, 5.0, 500.0, 375.0],
                                [0.0, 0.0, 200.0, 100.0, 5.0, 5.0, 200.0, 100.0]]


def test_clip_batched_boxes_with_sizes_shaped_n_by_1():
    boxes = torch.full((2, 3, 4), 50.0)
    clipped = clip_boxes(boxes, torch.tensor([[30], [40]]), torch.tensor([[20], [60]]))
    assert clipped[0].tolist() == [[20.0, 30.0, 20.0, 30.0]] * 3
    assert clipped[1].tolist() == [[50.0, 40.0, 50.0, 40.0]] * 3


def test_clip_and_decode_accept_no_boxes():
    assert clip_boxes(torch.zeros(0, 4), 10, 10).shape == (0, 4)
    assert BoxCoder().decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


def test_small_box_mask_keeps_boxes_exactly_min_size():
    # py-faster-rcnn keeps ws = x2 - x1 + 1 >= min_size: inclusive width 16 == ours 16
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 15.9, 30.0], [0.0, 0.0, 30.0, 15.0]])
    assert small_box_mask(boxes, 16).tolist() == [True, False, False]
    assert small_box_mask(boxes, torch.tensor(15.0)).tolist() == [True, True, True]


def test_flip_matches_py_faster_rcnn_and_is_an_involution():
    # py-faster-rcnn: x1' = W - x2 - 1; inclusive [10, 20, 109, 219], 500 wide -> [390, 20, 489, 219]
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
    flipped = flip_boxes(boxes, 500)
    assert flipped.tolist() == [[390.0, 20.0, 490.0, 220.0]]
    assert torch.equal(flip_boxes(flipped, 500), boxes)
    assert boxes.tolist() == [[10.0, 20.0, 110.0, 220.0]]  # input untouched


def test_encode_equals_py_faster_rcnn_bbox_transform():
    deltas = BoxCoder().encode(PFR_EX + PLUS_ONE, PFR_GT + PLUS_ONE)
    torch.testing.assert_close(deltas, PFR_TARGETS, atol=1e-8, rtol=0)


def test_decode_equals_py_faster_rcnn_bbox_transform_inv():
    # the same numbers as bbox_transform_inv; py-faster-rcnn then reads them as inclusive corners, so its
    # boxes are one pixel larger than ours (docs/reproducing-the-paper.md, "Known deviations")
    boxes = BoxCoder().decode(PFR_DELTAS, PFR_EX + PLUS_ONE)
    torch.testing.assert_close(boxes, PFR_DECODED, atol=1e-8, rtol=0)


def test_decode_of_encode_round_trips_without_the_plus_one_offset():
    coder = BoxCoder()
    reference = PFR_EX + PLUS_ONE
    boxes = PFR_GT + PLUS_ONE
    torch.testing.assert_close(coder.decode(coder.encode(reference, boxes), reference), boxes,
                               atol=1e-9, rtol=0)
    anchor = torch.tensor([[-84.0, -40.0, 100.0, 56.0]])
    assert coder.decode(torch.zeros(1, 4), anchor).tolist() == anchor.tolist()


def test_normalised_coder_divides_by_stds_and_decode_undoes_it():
    stds = (0.1, 0.1, 0.2, 0.2)
    means = (0.01, -0.02, 0.0, 0.05)
    coder = BoxCoder(means=means, stds=stds)
    deltas = coder.encode(PFR_EX + PLUS_ONE, PFR_GT + PLUS_ONE)
    expected = (PFR_TARGETS - torch.tensor(means, dtype=torch.float64)) / torch.tensor(stds,
                                                                                   dtype=torch.float64)
    torch.testing.assert_close(deltas, expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(coder.decode(deltas, PFR_EX + PLUS_ONE), PFR_GT + PLUS_ONE, atol=1e-9, rtol=0)


def test_decode_handles_several_classes_side_by_side():
    reference = PFR_EX + PLUS_ONE
    two = BoxCoder().decode(torch.cat([PFR_DELTAS, torch.zeros(3, 4, dtype=torch.float64)], dim=1), reference)
    assert two.shape == (3, 8)
    torch.testing.assert_close(two[:, :4], PFR_DECODED, atol=1e-8, rtol=0)
    torch.testing.assert_close(two[:, 4:], reference, atol=0, rtol=0)


def test_decode_clamps_log_scale_at_log_1000_over_16():
    reference = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = BoxCoder().decode(torch.tensor([[0.0, 0.0, 50.0, 1000.0]]), reference)
    # width = 16 * exp(log(1000/16)) = 1000, centred on 8
    torch.testing.assert_close(boxes, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]), atol=1e-3, rtol=0)


def test_degenerate_boxes_give_no_nan_or_inf():
    coder = BoxCoder()
    reference = torch.tensor([[5.0, 5.0, 5.0, 5.0], [10.0, 10.0, 4.0, 4.0], [0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    deltas = coder.encode(reference, boxes)
    assert torch.isfinite(deltas).all()
    assert torch.isfinite(coder.decode(deltas, reference)).all()
