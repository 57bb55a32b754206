"""Detections from head outputs: thresholds, per-class NMS, top-100, original-image boxes."""

from __future__ import annotations

import math

import torch

from frcnn_cli.boxes import BoxCoder
from frcnn_cli.model.postprocess import DetectionSettings, postprocess_detections

CODER = BoxCoder(means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (rows sum to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def _run(logits, proposals, deltas=None, *, sizes=None, scales=None, original_sizes=None, **settings):
    n = len(proposals)
    if deltas is None:
        deltas = torch.zeros(logits.shape[0], 4 * logits.shape[1])
    sizes = torch.tensor([[5000, 5000]] * n) if sizes is None else sizes
    scales = torch.ones(n) if scales is None else scales
    return postprocess_detections(logits, deltas, proposals, sizes, scales, box_coder=CODER,
                                  settings=DetectionSettings(**settings), original_sizes=original_sizes)


def _row_boxes(n: int) -> torch.Tensor:
    """``n`` disjoint 10x10 boxes on a line."""
    x = torch.arange(n, dtype=torch.float32) * 20
    return torch.stack((x, torch.zeros(n), x + 10, torch.full((n,), 10.0)), 1)


def test_score_threshold_is_strict():
    logits = _logits([[0.94, 0.06, 1e-9], [0.96, 0.04, 1e-9], [0.5, 0.3, 0.2]])
    out = _run(logits, [_row_boxes(3)])[0]
    # kept: (row 0, class 1) 0.06, (row 2, class 1) 0.3, (row 2, class 2) 0.2
    torch.testing.assert_close(out["scores"], torch.tensor([0.3, 0.2, 0.06]))
    assert out["labels"].tolist() == [1, 2, 1]
    exact = torch.softmax(logits, 1)[0, 1].item()  # a score equal to the threshold is dropped
    out = _run(logits, [_row_boxes(3)], score_thresh=exact)[0]
    assert out["scores"].shape == (2,)


def test_background_is_never_a_detection():
    out = _run(_logits([[0.9, 0.05, 0.05]]), [_row_boxes(1)])[0]
    assert out["boxes"].shape == (0, 4) and out["labels"].dtype == torch.long


def test_at_most_100_per_image_highest_scores_first():
    n = 150
    fg = torch.linspace(0.2, 0.9, n, dtype=torch.float64)
    probs = torch.stack((1 - fg, fg), 1).tolist()
    proposals = [_row_boxes(n), _row_boxes(30)]
    logits = torch.cat((_logits(probs), _logits(probs[:30])))
    first, second = _run(logits, proposals)
    assert first["scores"].shape == (100,) and second["scores"].shape == (30,)
    torch.testing.assert_close(first["scores"], fg.flip(0)[:100].float())
    torch.testing.assert_close(first["boxes"], _row_boxes(n).flip(0)[:100])
    assert torch.all(first["scores"][:-1] >= first["scores"][1:])
    assert len(_run(logits, proposals, detections_per_image=7)[0]["scores"]) == 7


def test_per_class_nms_suppresses_only_within_a_class_and_an_image():
    boxes = torch.tensor([
        [0.0, 0.0, 100.0, 100.0],
        [10.0, 0.0, 110.0, 100.0],  # IoU 90/110 with box 0
        [70.0, 0.0, 170.0, 100.0],  # IoU 30/170 with box 0, 40/160 with box 1: kept
    ])
    logits = _logits([[0.1, 0.5, 0.4], [0.2, 0.8, 1e-9], [0.3, 0.7, 1e-9]])
    out = _run(torch.cat((logits, logits)), [boxes, boxes.clone()])
    for det in out:  # the second image is a copy: nothing crosses images
        assert det["labels"].tolist() == [1, 1, 2]
        torch.testing.assert_close(det["scores"], torch.tensor([0.8, 0.7, 0.4]))
        torch.testing.assert_close(det["boxes"], boxes[[1, 2, 0]])


def test_nms_threshold_is_applied():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [60.0, 0.0, 160.0, 100.0]])  # IoU 0.25
    logits = _logits([[0.1, 0.9], [0.2, 0.8]])
    assert len(_run(logits, [boxes], nms_thresh=0.3)[0]["scores"]) == 2
    assert len(_run(logits, [boxes], nms_thresh=0.2)[0]["scores"]) == 1


def test_boxes_are_decoded_with_the_class_specific_deltas():
    proposal = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    deltas = torch.zeros(1, 12)
    deltas[0, 4:8] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 1: dx = 1 * 0.1 -> 10 px right
    deltas[0, 8:12] = torch.tensor([0.0, 0.0, 5 * math.log(0.5), 0.0])  # class 2: dw = log 0.5 -> half width
    out = _run(_logits([[0.2, 0.5, 0.3]]), [proposal], deltas)[0]
    expected = torch.tensor([[10.0, 0.0, 110.0, 100.0], [25.0, 0.0, 75.0, 100.0]])
    torch.testing.assert_close(out["boxes"], expected)


def test_boxes_come_back_in_original_pixels_clipped_to_the_original_image():
    proposals = [torch.tensor([[20.0, 20.0, 60.0, 60.0]]), torch.tensor([[-10.0, 5.0, 60.0, 40.0]])]
    logits = _logits([[0.1, 0.9], [0.1, 0.9]])
    sizes = torch.tensor([[200, 200], [25, 50]])  # image 1: original 101 x 51 at scale 0.5
    scales = torch.tensor([2.0, 0.5])
    original = torch.tensor([[100, 100], [51, 101]])
    first, second = _run(logits, proposals, sizes=sizes, scales=scales, original_sizes=original)
    torch.testing.assert_close(first["boxes"], torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    # [-20, 10, 120, 80] clipped to the original 101 wide, 51 high (not to the scaled 50/0.5 = 100)
    torch.testing.assert_close(second["boxes"], torch.tensor([[0.0, 10.0, 101.0, 51.0]]))
    _, second = _run(logits, proposals, sizes=sizes, scales=scales)  # default: scaled size / scale
    torch.testing.assert_close(second["boxes"], torch.tensor([[0.0, 10.0, 100.0, 50.0]]))


def test_images_without_proposals_give_empty_detections():
    logits = _logits([[0.1, 0.9]])
    out = _run(logits, [torch.zeros(0, 4), _row_boxes(1), torch.zeros(0, 4)])
    assert [len(d["scores"]) for d in out] == [0, 1, 0]
    assert out[0]["boxes"].shape == (0, 4)
    empty = _run(torch.zeros(0, 3), [torch.zeros(0, 4)])
    assert empty[0]["boxes"].shape == (0, 4) and empty[0]["labels"].shape == (0,)
