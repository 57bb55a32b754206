"""RoI labelling, sampling and the Fast R-CNN loss (py-faster-rcnn alt-opt, notes §6c)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from frcnn_cli.config import RoIHeadConfig
from frcnn_cli.model import roi_targets
from frcnn_cli.model.losses import fast_rcnn_losses
from frcnn_cli.model.roi_targets import label_and_sample_rois

CFG = RoIHeadConfig()  # 64 RoIs per image, 16 fg, fg >= 0.5, bg [0, 0.5), stds (0.1, 0.1, 0.2, 0.2)
GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])


def _fg_proposals(n: int) -> torch.Tensor:
    """``n`` boxes shifted right by 0.1 px each: IoU (100-d)/(100+d) >= 0.5 with GT for d < 33."""
    d = torch.arange(n, dtype=torch.float32) * 0.1
    return torch.stack((d, torch.zeros(n), 100 + d, torch.full((n,), 100.0)), 1)


def _bg_proposals(n: int) -> torch.Tensor:
    """``n`` boxes far away from GT (IoU 0)."""
    x = 200.0 + torch.arange(n, dtype=torch.float32)
    return torch.stack((x, torch.full((n,), 200.0), x + 50, torch.full((n,), 250.0)), 1)


def test_hundred_fg_candidates_give_exactly_16_fg_and_48_bg():
    torch.manual_seed(0)
    proposals = torch.cat((_fg_proposals(99), _bg_proposals(200)))  # + the gt box itself = 100 fg
    rois, labels, targets = label_and_sample_rois([proposals], [GT], [torch.tensor([7])], cfg=CFG)
    assert rois.shape == (64, 5) and labels.shape == (64,) and targets.shape == (64, 4)
    assert (labels == 7).sum().item() == 16
    assert (labels == 0).sum().item() == 48
    assert torch.equal(labels[:16], torch.full((16,), 7))  # fg first
    assert torch.unique(rois, dim=0).shape[0] == 64  # without replacement
    assert torch.all(rois[:, 0] == 0)


def test_three_fg_are_all_kept_and_bg_fill_to_64():
    torch.manual_seed(1)
    proposals = torch.cat((_fg_proposals(2), _bg_proposals(100)))
    rois, labels, _ = label_and_sample_rois([proposals], [GT], [torch.tensor([2])], cfg=CFG)
    assert (labels == 2).sum().item() == 3
    assert (labels == 0).sum().item() == 61
    fg_boxes = rois[labels == 2, 1:]
    expected = torch.cat((_fg_proposals(2), GT))
    assert torch.equal(fg_boxes[fg_boxes[:, 0].argsort()], expected[expected[:, 0].argsort()])


def test_no_padding_when_too_few_candidates():
    proposals = torch.cat((_fg_proposals(2), _bg_proposals(10)))
    rois, labels, _ = label_and_sample_rois([proposals], [GT], [torch.tensor([1])], cfg=CFG)
    assert rois.shape[0] == 13
    assert (labels == 1).sum().item() == 3 and (labels == 0).sum().item() == 10


def test_gt_boxes_are_not_candidates_when_switched_off():
    cfg = replace(CFG, add_gt_as_proposals=False)
    rois, labels, _ = label_and_sample_rois([_fg_proposals(2)], [GT], [torch.tensor([1])], cfg=cfg)
    assert rois.shape[0] == 2 and torch.equal(labels, torch.tensor([1, 1]))


def test_sampling_is_random_without_replacement():
    proposals = torch.cat((_fg_proposals(99), _bg_proposals(200)))
    draws = []
    for seed in range(3):
        torch.manual_seed(seed)
        rois, labels, _ = label_and_sample_rois([proposals], [GT], [torch.tensor([1])], cfg=CFG)
        draws.append(rois[labels == 1])
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[0], draws[2])
    torch.manual_seed(0)
    again, labels, _ = label_and_sample_rois([proposals], [GT], [torch.tensor([1])], cfg=CFG)
    assert torch.equal(again[labels == 1], draws[0])


def test_iou_thresholds_fg_at_half_bg_from_lo():
    cfg = replace(CFG, bg_iou_lo=0.25, add_gt_as_proposals=False)
    proposals = torch.tensor([
        [0.0, 0.0, 50.0, 100.0],  # IoU 0.5  -> fg
        [0.0, 0.0, 49.0, 100.0],  # IoU 0.49 -> bg
        [0.0, 0.0, 25.0, 100.0],  # IoU 0.25 -> bg
        [0.0, 0.0, 24.0, 100.0],  # IoU 0.24 -> ignored
    ])
    rois, labels, _ = label_and_sample_rois([proposals], [GT], [torch.tensor([3])], cfg=cfg, sample=False)
    assert torch.equal(rois[:, 1:], proposals[:3])
    assert torch.equal(labels, torch.tensor([3, 0, 0]))


def test_targets_are_normalised_deltas_to_the_best_gt():
    cfg = replace(CFG, add_gt_as_proposals=False)
    gt = torch.tensor([[10.0, 10.0, 110.0, 110.0], [0.0, 0.0, 120.0, 80.0], [500.0, 500.0, 600.0, 600.0]])
    gt_labels = torch.tensor([4, 5, 6])
    proposals = [torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 100.0, 100.0]])]
    # image 0: IoU 8100/11900 = 0.68 with its only gt; image 1: IoU 8000/11600 = 0.69 with gt 1, 0 with gt 2
    rois, labels, targets = label_and_sample_rois(
        proposals, [gt[:1], gt[1:]], [gt_labels[:1], gt_labels[1:]], cfg=cfg)
    assert torch.equal(rois[:, 0], torch.tensor([0.0, 1.0]))
    assert torch.equal(labels, torch.tensor([4, 5]))
    # centre 50 -> 60: dx = 10/100 = 0.1 -> /0.1 = 1; sizes equal -> 0
    torch.testing.assert_close(targets[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # centre (50,50) -> (60,40), size 100x100 -> 120x80
    expected = torch.tensor([1.0, -1.0, math.log(1.2) / 0.2, math.log(0.8) / 0.2])
    torch.testing.assert_close(targets[1], expected)


def test_candidate_takes_the_label_of_its_highest_iou_gt():
    cfg = replace(CFG, add_gt_as_proposals=False)
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [20.0, 0.0, 120.0, 100.0]])
    proposal = torch.tensor([[15.0, 0.0, 115.0, 100.0]])  # IoU 85/115 with gt 0, 95/105 with gt 1
    _, labels, targets = label_and_sample_rois([proposal], [gt], [torch.tensor([1, 2])], cfg=cfg)
    assert torch.equal(labels, torch.tensor([2]))
    torch.testing.assert_close(targets[0], torch.tensor([0.5, 0.0, 0.0, 0.0]))  # dx = 5/100 / 0.1


def test_image_without_gt_is_all_background_and_has_zero_box_loss():
    torch.manual_seed(0)
    proposals = [torch.cat((_fg_proposals(5), _bg_proposals(5))), _fg_proposals(3)]
    gt_boxes = [torch.zeros(0, 4), GT]
    gt_labels = [torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    rois, labels, targets = label_and_sample_rois(proposals, gt_boxes, gt_labels, cfg=CFG)
    first = rois[:, 0] == 0
    assert first.sum().item() == 10 and torch.all(labels[first] == 0)
    assert torch.all(targets[first] == 0)
    assert (rois[:, 0] == 1).sum().item() == 4 and torch.all(labels[~first] == 1)

    only_empty = label_and_sample_rois(proposals[:1], gt_boxes[:1], gt_labels[:1], cfg=CFG)
    deltas = torch.randn(10, 12, requires_grad=True)
    losses = fast_rcnn_losses(torch.randn(10, 3), deltas, only_empty[1], only_empty[2])
    assert losses["loss_box"].item() == 0.0
    losses["loss_box"].backward()
    assert torch.equal(deltas.grad, torch.zeros(10, 12))


def test_sample_false_keeps_every_fg_and_bg_of_every_image():
    proposals = [torch.cat((_fg_proposals(99), _bg_proposals(200))), _bg_proposals(3)]
    rois, labels, _ = label_and_sample_rois(
        proposals, [GT, GT], [torch.tensor([1]), torch.tensor([2])], cfg=CFG, sample=False)
    assert (rois[:, 0] == 0).sum().item() == 300 and (labels == 1).sum().item() == 100
    assert (rois[:, 0] == 1).sum().item() == 4 and (labels == 2).sum().item() == 1


def test_fast_rcnn_losses_on_hand_computed_values():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 0])
    deltas = torch.zeros(2, 12)
    deltas[0, 4:8] = torch.tensor([0.5, -2.0, 0.0, 0.1])  # class 1 columns
    deltas[0, 8:12] = 5.0  # another class: ignored
    deltas[1, :] = 3.0  # background row: ignored
    deltas.requires_grad_(True)
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    losses = fast_rcnn_losses(logits, deltas, labels, targets, sigma=1.0)
    ce0 = math.log(math.e + math.e**2 + 1.0) - 2.0
    ce1 = math.log(3.0)
    assert losses["loss_cls"].item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # smooth-L1 sigma 1: 0.5*0.25 + (2 - 0.5) + 0 + 0.5*0.01 = 1.63, over S = 2 RoIs
    assert losses["loss_box"].item() == pytest.approx(1.63 / 2, rel=1e-6)
    (losses["loss_cls"] + losses["loss_box"]).backward()
    torch.testing.assert_close(deltas.grad[0, 4:8], torch.tensor([0.25, -0.5, 0.0, 0.05]))
    assert deltas.grad[1].abs().sum().item() == 0.0


def test_fast_rcnn_losses_sigma_three():
    labels = torch.tensor([1])
    deltas = torch.zeros(1, 8)
    deltas[0, 4:8] = torch.tensor([0.1, 0.2, 0.0, 0.0])
    losses = fast_rcnn_losses(torch.zeros(1, 2), deltas, labels, torch.zeros(1, 4), sigma=3.0)
    # 0.1 < 1/9: 0.5*9*0.01 = 0.045; 0.2 >= 1/9: 0.2 - 0.5/9
    assert losses["loss_box"].item() == pytest.approx(0.045 + 0.2 - 0.5 / 9, rel=1e-6)
    assert losses["loss_cls"].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_fast_rcnn_losses_with_no_rois_are_zero_with_grad():
    logits = torch.zeros(0, 3, requires_grad=True)
    deltas = torch.zeros(0, 12, requires_grad=True)
    losses = fast_rcnn_losses(logits, deltas, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert losses["loss_cls"].item() == 0.0 and losses["loss_box"].item() == 0.0
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert logits.grad.shape == (0, 3)


def reference_sample(category, box_image, num_images, cfg, sample):
    """The former ``_sample`` (per-group counts by ``bincount``), unchanged."""
    order = torch.arange(category.shape[0], device=category.device)
    if sample:
        order = torch.argsort(torch.rand(category.shape[0], device=category.device))
    group = box_image * 3 + category
    order = order[torch.argsort(group[order], stable=True)]
    if not sample:
        return order[category[order] != 2]
    counts = torch.bincount(group, minlength=num_images * 3)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.shape[0], device=order.device) - starts[group[order]]
    per_image = counts.view(num_images, 3)
    batch = cfg.batch_size_per_image
    n_fg = per_image[:, 0].clamp(max=int(round(cfg.fg_fraction * batch)))
    n_bg = torch.minimum(batch - n_fg, per_image[:, 1])
    quota = torch.stack((n_fg, n_bg, torch.zeros_like(n_fg)), 1).view(-1)
    return order[rank < quota[group[order]]]


@pytest.mark.parametrize("seed", range(10))
def test_sampling_draws_exactly_what_the_bincount_version_drew(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 400, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist()
    box_image = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    category = torch.multinomial(torch.tensor([0.1, 0.6, 0.3]), box_image.shape[0], replacement=True,
                                 generator=gen) if box_image.numel() else box_image
    cfg = replace(CFG, batch_size_per_image=128)
    for sample in (True, False):
        torch.manual_seed(seed)
        got = roi_targets._sample(category, box_image, len(sizes), cfg, sample)
        torch.manual_seed(seed)
        assert torch.equal(got, reference_sample(category, box_image, len(sizes), cfg, sample))
        if sample:  # exact counts: min(32, #fg) fg and min(128 - fg, #bg) bg per image
            for i in range(len(sizes)):
                mine = category[got][box_image[got] == i]
                fg, bg = int((category[box_image == i] == 0).sum()), int((category[box_image == i] == 1).sum())
                assert int((mine == 0).sum()) == min(32, fg) and int((mine == 1).sum()) == min(128 - min(32, fg), bg)
