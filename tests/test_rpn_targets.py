"""Anchor labelling, sampling and the RPN loss (py-faster-rcnn's anchor target layer, notes section 6a)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from conftest import inside_mask, label_anchors, rpn_losses_of

from frcnn_cli.boxes import box_iou
from frcnn_cli.config import RPNConfig
from frcnn_cli.model.anchors import AnchorGrid
from frcnn_cli.model.rpn_targets import sample_labels

PLUS_ONE = torch.tensor([0.0, 0.0, 1.0, 1.0])


def _vgg_anchors(h: int, w: int) -> torch.Tensor:
    return AnchorGrid(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32), stride=16).grid(h, w, "cpu")


def _counts(labels: torch.Tensor) -> tuple[int, int, int]:
    return int((labels == 1).sum()), int((labels == 0).sum()), int((labels == -1).sum())


def test_py_faster_rcnn_labelling_example_vgg16_600x800():
    anchors = _vgg_anchors(38, 50)
    gt = torch.tensor([[100.0, 120.0, 299.0, 359.0], [500.0, 50.0, 560.0, 130.0]]) + PLUS_ONE
    inside = inside_mask(anchors, 600, 800, 0)
    iou = box_iou(anchors[inside], gt)
    gt_max = iou.max(dim=0).values
    torch.testing.assert_close(gt_max, torch.tensor([0.73242188, 0.31902118]), atol=1e-6, rtol=0)
    assert int((iou == gt_max).sum()) == 14  # anchors tied at the per-gt maxima

    labels, matched = label_anchors(anchors, gt, (600, 800))
    assert _counts(labels[inside]) == (18, 5445, 481)
    assert (labels[~inside] == -1).all()
    assert matched.shape == (17100,)
    # the second gt (best IoU 0.319) still owns a positive anchor, through the tie rule
    assert set(matched[labels == 1].tolist()) == {0, 1}


def test_a_gt_overlapped_by_one_anchor_at_iou_0_4_makes_it_positive():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 4.0]])  # IoU 40 / 100 with anchor 0
    labels, matched = label_anchors(anchors, gt, (50, 50))
    assert labels.tolist() == [1, 0]
    assert matched.tolist() == [0, 0]


def test_all_anchors_tied_at_a_gts_best_iou_are_positive():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [30.0, 30.0, 40.0, 45.0],
                            [45.0, 45.0, 50.0, 50.0]])
    gt = torch.tensor([[5.0, 0.0, 15.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    # gt 0: IoU 50 / 150 = 1/3 with anchors 0 and 1 (a tie); gt 1: 100 / 150 = 0.667 with anchor 2
    labels, matched = label_anchors(anchors, gt, (50, 50))
    assert labels.tolist() == [1, 1, 1, 0]
    assert matched[:3].tolist() == [0, 0, 1]


def test_positive_at_exactly_0_7_and_not_negative_at_exactly_0_3():
    gt = torch.tensor([[0.0, 0.0, 10.0, 7.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 7.0],  # IoU 1, the gt's best
                            [0.0, 0.0, 10.0, 10.0],  # 70 / 100 = 0.7 -> positive (>=)
                            [0.0, 0.0, 3.0, 7.0],  # 21 / 70 = 0.3 -> ignored (negative is < 0.3)
                            [0.0, 0.0, 2.9, 7.0],  # 0.29 -> negative
                            [0.0, 0.0, 5.0, 7.0]])  # 0.5 -> ignored
    labels, _ = label_anchors(anchors, gt, (50, 50))
    assert labels.tolist() == [1, 1, -1, 0, -1]


def test_cross_boundary_anchors_are_ignored_even_when_they_match_exactly():
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    anchors = torch.tensor([[-1.0, 0.0, 15.0, 16.0], [0.0, 0.0, 16.0, 16.0], [40.0, 40.0, 50.0, 51.0]])
    labels, _ = label_anchors(anchors, gt, (50, 50))
    assert labels.tolist() == [-1, 1, -1]  # last one sticks out of the 50 px image at the bottom
    labels, _ = label_anchors(anchors, gt, (50, 50), allowed_border=1.0)
    assert labels.tolist() == [1, 1, 0]
    labels, _ = label_anchors(anchors, gt, (50, 50), ignore_cross_boundary=False)
    assert labels.tolist() == [1, 1, 0]


def test_a_gt_that_no_inside_anchor_overlaps_makes_nothing_positive():
    # py-faster-rcnn's quirk (a gt whose best IoU is 0 would make every 0-IoU anchor positive) is not kept
    anchors = torch.tensor([[-4.0, 0.0, 8.0, 8.0], [20.0, 20.0, 30.0, 30.0], [30.0, 30.0, 40.0, 40.0]])
    labels, _ = label_anchors(anchors, torch.tensor([[0.0, 0.0, 6.0, 6.0]]), (50, 50))
    assert labels.tolist() == [-1, 0, 0]


def test_an_image_without_objects_has_every_inside_anchor_negative():
    anchors = _vgg_anchors(38, 50)
    labels, matched = label_anchors(anchors, torch.zeros(0, 4), (600, 800))
    inside = inside_mask(anchors, 600, 800, 0)
    assert (labels[inside] == 0).all() and (labels[~inside] == -1).all()
    assert int((labels == 0).sum()) == 5944
    assert (matched == 0).all()


def _labels(pos: int, neg: int, ignored: int) -> torch.Tensor:
    return torch.tensor([1] * pos + [0] * neg + [-1] * ignored)


@pytest.mark.parametrize(("pos", "neg", "kept"), [(300, 1000, (128, 128)), (10, 1000, (10, 246)),
                                                  (10, 20, (10, 20)), (200, 0, (128, 0)), (0, 300, (0, 256))])
def test_sampling_keeps_at_most_128_positives_and_fills_256_with_negatives(pos, neg, kept):
    labels = _labels(pos, neg, 50)
    sampled = sample_labels(labels, 256, 0.5)
    assert _counts(sampled)[:2] == kept
    assert _counts(labels) == (pos, neg, 50)  # input untouched
    changed = sampled != labels
    assert (sampled[changed] == -1).all()  # sampling only ever drops


def test_sampling_is_a_random_subset_driven_by_the_global_rng():
    labels = _labels(300, 1000, 0)
    torch.manual_seed(1)
    first = sample_labels(labels, 256, 0.5)
    torch.manual_seed(1)
    assert torch.equal(sample_labels(labels, 256, 0.5), first)
    torch.manual_seed(2)
    assert not torch.equal(sample_labels(labels, 256, 0.5), first)


# Hand-computed loss case. gt [1, 0, 17, 16] in a 200 x 200 image:
#   anchor 0 [0, 0, 16, 16]: IoU 240 / 272 = 0.88 -> positive, target [1/16, 0, 0, 0]
#   anchor 1 [100, 100, 116, 116]: IoU 0 -> negative
#   anchor 2 [0, 0, 16, 32]: IoU 240 / 528 = 0.45 -> ignored
HAND_ANCHORS = torch.tensor([[0.0, 0.0, 16.0, 16.0], [100.0, 100.0, 116.0, 116.0], [0.0, 0.0, 16.0, 32.0]])
HAND_GT = torch.tensor([[1.0, 0.0, 17.0, 16.0]])
HAND_LOGITS = [[0.2, 1.4], [2.0, -1.0], [5.0, -7.0]]
HAND_DELTAS = [[0.1, 0.5, -0.05, 0.0], [3.0, 3.0, 3.0, 3.0], [9.0, 9.0, 9.0, 9.0]]
CE_0 = math.log(1 + math.exp(0.2 - 1.4))  # -log softmax(0.2, 1.4)[1]
CE_1 = math.log(1 + math.exp(-1.0 - 2.0))  # -log softmax(2, -1)[0]
# sigma 3: 0.5 * 9 x^2 if |x| < 1/9 else |x| - 0.5/9, on deltas - target = [0.0375, 0.5, -0.05, 0]
BOX_0 = 0.5 * 9 * 0.0375**2 + (0.5 - 0.5 / 9) + 0.5 * 9 * 0.05**2


def _hand_inputs(objectness="softmax", n=1):
    logits = torch.tensor(HAND_LOGITS) if objectness == "softmax" else torch.tensor(HAND_LOGITS)[:, 1:] - \
        torch.tensor(HAND_LOGITS)[:, :1]
    logits = logits[None].repeat(n, 1, 1).requires_grad_()
    deltas = torch.tensor(HAND_DELTAS)[None].repeat(n, 1, 1).requires_grad_()
    return logits, deltas


def test_rpn_loss_of_a_hand_computed_case():
    logits, deltas = _hand_inputs()
    losses = rpn_losses_of(logits, deltas, HAND_ANCHORS, [HAND_GT], torch.tensor([[200, 200]]), cfg=RPNConfig())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert losses["loss_rpn_cls"].item() == pytest.approx((CE_0 + CE_1) / 2, rel=1e-6)
    assert losses["loss_rpn_box"].item() == pytest.approx(BOX_0 / 2, rel=1e-6)
    (losses["loss_rpn_cls"] + losses["loss_rpn_box"]).backward()
    # the ignored anchor gets no gradient; the negative one only a classification gradient
    assert logits.grad[0, 2].abs().sum().item() == 0.0
    assert deltas.grad[0, 1:].abs().sum().item() == 0.0
    assert deltas.grad[0, 0].tolist() == pytest.approx([9 * 0.0375 / 2, 0.5, -9 * 0.05 / 2, 0.0])


def test_rpn_loss_with_sigmoid_objectness_and_box_weight():
    logits, deltas = _hand_inputs("sigmoid")
    cfg = RPNConfig(objectness="sigmoid", box_loss_weight=2.0)
    losses = rpn_losses_of(logits, deltas, HAND_ANCHORS, [HAND_GT], torch.tensor([[200, 200]]), cfg=cfg)
    assert losses["loss_rpn_cls"].item() == pytest.approx((CE_0 + CE_1) / 2, rel=1e-6)
    assert losses["loss_rpn_box"].item() == pytest.approx(2.0 * BOX_0 / 2, rel=1e-6)


def test_rpn_loss_normalises_by_the_sampled_anchors_of_the_whole_batch():
    # image 2 has no objects: its 3 anchors are negatives (5 sampled in all) and add no box loss
    logits, deltas = _hand_inputs(n=2)
    losses = rpn_losses_of(logits, deltas, HAND_ANCHORS, [HAND_GT, torch.zeros(0, 4)],
                        torch.tensor([[200, 200], [200, 200]]), cfg=RPNConfig())
    ce_neg = [math.log(1 + math.exp(a - b)) for b, a in HAND_LOGITS]  # -log softmax(.)[0]
    assert losses["loss_rpn_cls"].item() == pytest.approx((CE_0 + CE_1 + sum(ce_neg)) / 5, rel=1e-6)
    assert losses["loss_rpn_box"].item() == pytest.approx(BOX_0 / 5, rel=1e-6)


def test_an_image_without_objects_gives_exactly_zero_box_loss_with_a_gradient():
    logits, deltas = _hand_inputs()
    losses = rpn_losses_of(logits, deltas, HAND_ANCHORS, [torch.zeros(0, 4)], torch.tensor([[200, 200]]),
                        cfg=RPNConfig())
    assert losses["loss_rpn_box"].item() == 0.0
    assert losses["loss_rpn_box"].requires_grad
    (losses["loss_rpn_cls"] + losses["loss_rpn_box"]).backward()
    assert torch.isfinite(deltas.grad).all() and deltas.grad.abs().sum().item() == 0.0
    assert torch.isfinite(logits.grad).all()


def test_cross_boundary_anchors_never_reach_the_loss():
    anchors = torch.cat([HAND_ANCHORS, torch.tensor([[-1.0, 0.0, 17.0, 16.0]])])  # crosses the left edge
    gt = torch.tensor([[-1.0, 0.0, 17.0, 16.0], [1.0, 0.0, 17.0, 16.0]])
    logits = torch.zeros(1, 4, 2, requires_grad=True)
    deltas = torch.ones(1, 4, 4, requires_grad=True)
    losses = rpn_losses_of(logits, deltas, anchors, [gt], torch.tensor([[200, 200]]), cfg=RPNConfig())
    (losses["loss_rpn_cls"] + losses["loss_rpn_box"]).backward()
    assert logits.grad[0, 3].abs().sum().item() == 0.0 and deltas.grad[0, 3].abs().sum().item() == 0.0
    assert logits.grad[0, 0].abs().sum().item() > 0.0


def test_paper_normalisation_divides_cls_by_256_and_box_by_locations_over_lambda_10():
    anchors = _vgg_anchors(2, 3)  # 6 locations x 9 anchors; all of them kept, none crosses a 600 x 800 image
    gt = [torch.tensor([[0.0, 0.0, 100.0, 60.0], [20.0, 10.0, 200.0, 150.0]])]
    sizes = torch.tensor([[600, 800]])
    torch.manual_seed(0)
    logits = torch.randn(1, 54, 2)
    deltas = torch.randn(1, 54, 4) * 0.3
    cfg = RPNConfig(ignore_cross_boundary=False)
    labels, _ = label_anchors(anchors, gt[0], (600, 800), ignore_cross_boundary=False)
    num_sampled = int((labels >= 0).sum())
    assert 0 < int((labels == 1).sum()) and num_sampled <= 54  # no subsampling: results are deterministic
    sampled = rpn_losses_of(logits, deltas, anchors, gt, sizes, cfg=cfg)
    paper = rpn_losses_of(logits, deltas, anchors, gt, sizes, cfg=replace(cfg, loss_normalization="paper"))
    assert paper["loss_rpn_cls"].item() == pytest.approx(sampled["loss_rpn_cls"].item() * num_sampled / 256)
    box_sum = sampled["loss_rpn_box"].item() * num_sampled
    assert paper["loss_rpn_box"].item() == pytest.approx(box_sum * 10 / 6)
