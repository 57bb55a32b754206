"""The batched, sync-free anchor targets against the per-image implementation they replaced.

``reference_label_anchors`` is the former ``label_anchors`` (one image, boolean-mask assignment), kept here
verbatim as the reference: the batched labelling must equal it exactly, image by image, on random cases
built on an integer grid so that ties at a gt's best IoU are frequent. The sampling is checked for its exact
counts and, loosely, for uniformity; targets and losses against the same rules written with indexing.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import inside_mask, label_anchors, rpn_losses_of

from frcnn_cli.boxes import BoxCoder, box_iou
from frcnn_cli.config import RPNConfig
from frcnn_cli.model.anchors import AnchorGrid
from frcnn_cli.model.losses import smooth_l1
from frcnn_cli.model.rpn_targets import (
    anchor_targets,
    label_anchors_batch,
    pad_gt_boxes,
    sample_labels,
)


def reference_label_anchors(anchors, gt_boxes, image_size, *, positive_iou=0.7, negative_iou=0.3,
                            allowed_border=0.0, ignore_cross_boundary=True):
    """The former per-image ``label_anchors``, unchanged."""
    m = anchors.shape[0]
    device = anchors.device
    if ignore_cross_boundary:
        inside = inside_mask(anchors, image_size[0], image_size[1], allowed_border)
    else:
        inside = torch.ones(m, dtype=torch.bool, device=device)
    labels = torch.full((m,), -1, dtype=torch.long, device=device)
    if gt_boxes.shape[0] == 0:
        labels[inside] = 0
        return labels, torch.zeros(m, dtype=torch.long, device=device)
    iou = box_iou(anchors.float(), gt_boxes.to(device, torch.float32))
    iou = torch.where(inside[:, None], iou, torch.full_like(iou, -1.0))
    max_iou, matched_gt = iou.max(dim=1)
    gt_max = iou.max(dim=0).values
    best_for_some_gt = ((iou == gt_max[None, :]) & (gt_max[None, :] > 0)).any(dim=1)
    labels[inside & (max_iou < negative_iou)] = 0
    labels[best_for_some_gt] = 1
    labels[inside & (max_iou >= positive_iou)] = 1
    return labels, matched_gt


def _random_boxes(gen: torch.Generator, n: int, extent: int, max_side: int) -> torch.Tensor:
    """``n`` boxes with integer corners, some sticking out of ``[0, extent]`` (cross-boundary anchors)."""
    xy = torch.randint(-4, extent, (n, 2), generator=gen).float()
    wh = torch.randint(1, max_side, (n, 2), generator=gen).float()
    return torch.cat((xy, xy + wh), 1)


def _random_batch(seed: int):
    """Shared anchors (random templates on a stride-4 grid, which ties IoUs, plus loose random boxes),
    per-image gt lists (some empty) and image sizes ``[N, 2]``."""
    gen = torch.Generator().manual_seed(seed)
    templates = _random_boxes(gen, 3, 4, 16)
    shifts = torch.arange(0, 40, 4.0)
    sy, sx = torch.meshgrid(shifts, shifts, indexing="ij")
    grid = (torch.stack((sx, sy, sx, sy), -1).reshape(-1, 1, 4) + templates).reshape(-1, 4)
    loose = _random_boxes(gen, int(torch.randint(0, 100, (1,), generator=gen)), 40, 16)
    anchors = torch.cat((grid, loose))
    n = int(torch.randint(1, 5, (1,), generator=gen))
    counts = torch.randint(0, 6, (n,), generator=gen).tolist()
    gt = [_random_boxes(gen, g, 36, 14) for g in counts]
    sizes = torch.randint(24, 44, (n, 2), generator=gen)
    return anchors, gt, sizes


SETTINGS = [{}, {"allowed_border": 2.0}, {"allowed_border": 0.1}, {"ignore_cross_boundary": False},
            {"positive_iou": 0.5, "negative_iou": 0.2}]


@pytest.mark.parametrize("settings", SETTINGS)
def test_batched_labelling_equals_the_per_image_reference_on_random_tied_cases(settings):
    ties = 0
    for seed in range(60):
        anchors, gt, sizes = _random_batch(seed)
        boxes, valid = pad_gt_boxes(gt, "cpu")
        labels, matched = label_anchors_batch(anchors, boxes, valid, sizes, **settings)
        assert labels.shape == matched.shape == (len(gt), anchors.shape[0])
        for i, (g, (h, w)) in enumerate(zip(gt, sizes.tolist())):
            ref_labels, ref_matched = reference_label_anchors(anchors, g, (h, w), **settings)
            assert torch.equal(labels[i], ref_labels), (seed, i)
            assert torch.equal(matched[i], ref_matched), (seed, i)
            single = label_anchors(anchors, g, (h, w), **settings)
            assert torch.equal(single[0], ref_labels) and torch.equal(single[1], ref_matched)
            if g.shape[0]:
                iou = box_iou(anchors, g)
                ties += int(((iou == iou.max(dim=0).values) & (iou > 0)).sum(dim=0).gt(1).sum())
    assert ties > 50  # the cases do exercise the tie rule


def test_an_all_empty_batch_labels_every_inside_anchor_background():
    anchors, _, sizes = _random_batch(3)
    boxes, valid = pad_gt_boxes([torch.zeros(0, 4)] * sizes.shape[0], "cpu")
    assert boxes.shape == (sizes.shape[0], 1, 4) and not valid.any()
    labels, matched = label_anchors_batch(anchors, boxes, valid, sizes)
    for i, (h, w) in enumerate(sizes.tolist()):
        assert torch.equal(labels[i], torch.where(inside_mask(anchors, h, w), 0, -1))
    assert not matched.any()


@pytest.mark.parametrize(("pos", "neg", "ignored"), [(300, 1000, 7), (10, 1000, 0), (10, 20, 5), (200, 0, 3),
                                                     (0, 300, 1), (0, 0, 4), (128, 128, 0), (129, 100, 2)])
def test_sampled_counts_are_min_128_pos_and_min_256_minus_kept_neg(pos, neg, ignored):
    torch.manual_seed(pos + neg)
    rows = torch.stack([torch.tensor([1] * pos + [0] * neg + [-1] * ignored)[torch.randperm(pos + neg + ignored)]
                        for _ in range(5)])
    sampled = sample_labels(rows, 256, 0.5)
    kept_pos = min(128, pos)
    assert ((sampled == 1).sum(dim=1) == kept_pos).all()
    assert ((sampled == 0).sum(dim=1) == min(256 - kept_pos, neg)).all()
    assert (sampled[sampled != rows] == -1).all()  # only ever drops
    assert not torch.equal(sampled[0], sampled[1]) or pos + neg <= 256 - max(0, pos - 128)


def test_sampling_is_uniform_over_candidates_and_subsets():
    torch.manual_seed(0)
    draws = 6000
    # 10 positives (4 kept), 10 negatives (8 - 4 = 4 kept), 3 ignored, shuffled: each kept with p = 0.4
    row = torch.tensor([1, 0, -1, 1, 1, 0, 0, 1, 0, 1, 0, 1, -1, 1, 0, 0, 1, 0, 1, 0, -1, 0, 1])
    sampled = sample_labels(row.expand(draws, -1), 8, 0.5)
    for value in (1, 0):
        chosen = (sampled == value).sum(dim=0)[row == value].float() / draws
        assert ((chosen - 0.4).abs() < 0.04).all(), chosen  # about 6 standard deviations
    # 4 positives, 2 kept: the 6 pairs each about 1/6 of the draws
    pairs = sample_labels(torch.tensor([1, 1, 1, 1]).expand(draws, -1), 4, 0.5) == 1
    counts = {pair: int(pairs[:, list(pair)].all(dim=1).sum()) for pair in itertools.combinations(range(4), 2)}
    assert sum(counts.values()) == draws
    assert all(abs(c / draws - 1 / 6) < 0.03 for c in counts.values()), counts


def test_sampling_of_a_batch_is_per_row_and_on_the_labels_device_rng():
    labels = torch.tensor([1] * 300 + [0] * 1000).expand(3, -1)
    torch.manual_seed(5)
    first = sample_labels(labels, 256, 0.5)
    torch.manual_seed(5)
    assert torch.equal(sample_labels(labels, 256, 0.5), first)
    assert not torch.equal(first[0], first[1])  # rows draw independently


def _vgg_batch():
    anchors = AnchorGrid(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32), stride=16).grid(20, 26, "cpu")
    gen = torch.Generator().manual_seed(1)
    gt = [_random_boxes(gen, 6, 300, 200) + torch.tensor([20.0, 20.0, 20.0, 20.0]), torch.zeros(0, 4),
          _random_boxes(gen, 40, 380, 90) + torch.tensor([10.0, 10.0, 10.0, 10.0])]
    return anchors, gt, torch.tensor([[320, 416], [300, 400], [400, 416]])


def test_targets_are_the_reference_labels_sampled_with_deltas_of_the_matched_gt():
    anchors, gt, sizes = _vgg_batch()
    cfg = RPNConfig()
    torch.manual_seed(0)
    labels, targets = anchor_targets(anchors, gt, sizes, cfg=cfg)
    coder = BoxCoder()
    many_positives = False
    for i, (g, (h, w)) in enumerate(zip(gt, sizes.tolist())):
        ref, matched = reference_label_anchors(anchors, g, (h, w))
        num_pos, num_neg = int((ref == 1).sum()), int((ref == 0).sum())
        many_positives |= num_pos > 128
        assert (labels[i][labels[i] != ref] == -1).all()
        assert int((labels[i] == 1).sum()) == min(128, num_pos)
        assert int((labels[i] == 0).sum()) == min(256 - min(128, num_pos), num_neg)
        pos = labels[i] == 1
        expected = torch.zeros_like(targets[i])
        if g.shape[0]:
            expected[pos] = coder.encode(anchors[pos], g[matched[pos]])
        assert torch.equal(targets[i], expected)
    assert many_positives  # image 3 has more than 128 positives


def _reference_losses(logits, deltas, labels, targets, cfg, locations):
    """The former loss: indexing of the sampled and object anchors, a host normaliser."""
    sampled, pos = labels >= 0, labels == 1
    picked = logits.float()[sampled]
    if picked.shape[-1] == 1:
        cls_sum = F.binary_cross_entropy_with_logits(picked[:, 0], labels[sampled].float(), reduction="sum")
    else:
        cls_sum = F.cross_entropy(picked, labels[sampled], reduction="sum")
    box_sum = smooth_l1(deltas.float()[pos] - targets[pos], cfg.box_loss_sigma).sum()
    n = labels.shape[0]
    if cfg.loss_normalization == "paper":
        return cls_sum / float(cfg.batch_size_per_image * n), box_sum * (10.0 / float(n * locations))
    num = max(int(sampled.sum()), 1)
    return cls_sum / num, box_sum / num


@pytest.mark.parametrize(("objectness", "normalization"),
                         [("softmax", "sampled"), ("sigmoid", "sampled"), ("softmax", "paper")])
def test_masked_losses_equal_the_indexed_losses(objectness, normalization):
    anchors, gt, sizes = _vgg_batch()
    cfg = replace(RPNConfig(), objectness=objectness, loss_normalization=normalization, box_loss_weight=1.5)
    torch.manual_seed(2)
    logits = torch.randn(3, anchors.shape[0], 2 if objectness == "softmax" else 1)
    deltas = torch.randn(3, anchors.shape[0], 4) * 0.5
    torch.manual_seed(7)
    labels, targets = anchor_targets(anchors, gt, sizes, cfg=cfg)
    torch.manual_seed(7)  # the same draw inside rpn_losses
    losses = rpn_losses_of(logits, deltas, anchors, gt, sizes, cfg=cfg)
    cls, box = _reference_losses(logits, deltas, labels, targets, cfg, locations=20 * 26)
    assert losses["loss_rpn_cls"].item() == pytest.approx(cls.item(), rel=1e-6)
    assert losses["loss_rpn_box"].item() == pytest.approx(1.5 * box.item(), rel=1e-6)
