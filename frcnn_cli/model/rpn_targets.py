"""Anchor labelling, the 256-anchor sampling and the RPN loss (py-faster-rcnn's anchor target layer).

Shapes: N images, M anchors per image (``anchors.py`` grid order), A anchors per cell, H x W feature grid
(M = H*W*A), G ground-truth boxes of an image, C objectness outputs per anchor (2 softmax, 1 sigmoid).
Labels: 1 object, 0 background, -1 ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import BoxCoder, box_iou
from ..config import RPNConfig
from .anchors import inside_mask
from .losses import smooth_l1


def label_anchors(anchors: Tensor, gt_boxes: Tensor, image_size: tuple[int, int], *,
                  positive_iou: float = 0.7, negative_iou: float = 0.3, allowed_border: float = 0.0,
                  ignore_cross_boundary: bool = True) -> tuple[Tensor, Tensor]:
    """Label every anchor of one image: ``(labels LongTensor[M] in {1, 0, -1}, matched_gt LongTensor[M])``.

    The paper's rule in py-faster-rcnn's order (RPN_CLOBBER_POSITIVES False): anchors crossing the image
    boundary (more than ``allowed_border`` pixels out of ``image_size = (h, w)``) are ignored when
    ``ignore_cross_boundary``; inside anchors whose best IoU is < ``negative_iou`` are background; then every
    anchor tied at some ground truth's highest IoU (where that IoU is > 0) is an object, even below
    ``positive_iou``; then every anchor with best IoU >= ``positive_iou`` is an object. ``matched_gt`` is the
    index of each anchor's best ground truth (0 where there is none). With no ground truth every inside
    anchor is background.
    """
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
    iou = torch.where(inside[:, None], iou, torch.full_like(iou, -1.0))  # outside anchors never match
    max_iou, matched_gt = iou.max(dim=1)
    gt_max = iou.max(dim=0).values  # [G]
    best_for_some_gt = ((iou == gt_max[None, :]) & (gt_max[None, :] > 0)).any(dim=1)
    labels[inside & (max_iou < negative_iou)] = 0
    labels[best_for_some_gt] = 1
    labels[inside & (max_iou >= positive_iou)] = 1
    return labels, matched_gt


def _keep_at_most(labels: Tensor, value: int, limit: int) -> None:
    """Set all but a random ``limit`` of the entries equal to ``value`` to -1 (in place)."""
    idx = torch.nonzero(labels == value).squeeze(1)
    if idx.numel() > limit:
        drop = idx[torch.randperm(idx.numel(), device=labels.device)[max(limit, 0):]]
        labels[drop] = -1


def sample_labels(labels: Tensor, batch_size: int, positive_fraction: float) -> Tensor:
    """The mini-batch of one image: at most ``int(positive_fraction*batch_size)`` objects, background up to
    ``batch_size`` in all; the others become -1. A random subset (``torch.randperm`` on the labels' device,
    global RNG), as py-faster-rcnn's ``npr.choice(..., replace=False)``. Returns a new ``LongTensor[M]``.
    """
    labels = labels.clone()
    _keep_at_most(labels, 1, int(positive_fraction * batch_size))
    num_pos = int((labels == 1).sum())
    _keep_at_most(labels, 0, batch_size - num_pos)
    return labels


def _anchors_per_cell(anchors: Tensor) -> int:
    """A, read off the grid: the leading anchors share cell (0, 0)'s centre (all templates are concentric)."""
    centres = (anchors[:, :2] + anchors[:, 2:]) * 0.5
    same = (centres == centres[0]).all(dim=1)
    differs = torch.nonzero(~same)
    return int(differs[0, 0]) if differs.numel() else int(anchors.shape[0])


def _targets(anchors: Tensor, gt_boxes: list[Tensor], image_sizes: Tensor,
             cfg: RPNConfig) -> tuple[Tensor, Tensor]:
    """Sampled labels ``[N, M]`` and regression targets ``[N, M, 4]`` (zero except on object anchors)."""
    sizes = image_sizes.tolist()
    coder = BoxCoder()
    all_labels, all_targets = [], []
    for gt, (h, w) in zip(gt_boxes, sizes):
        labels, matched = label_anchors(
            anchors, gt, (h, w), positive_iou=cfg.positive_iou, negative_iou=cfg.negative_iou,
            allowed_border=cfg.allowed_border, ignore_cross_boundary=cfg.ignore_cross_boundary)
        labels = sample_labels(labels, cfg.batch_size_per_image, cfg.positive_fraction)
        targets = torch.zeros_like(anchors, dtype=torch.float32)
        pos = labels == 1
        if gt.shape[0] > 0:
            gt = gt.to(anchors.device, torch.float32)
            targets[pos] = coder.encode(anchors[pos].float(), gt[matched[pos]])
        all_labels.append(labels)
        all_targets.append(targets)
    return torch.stack(all_labels), torch.stack(all_targets)


def rpn_losses(cls_logits: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: list[Tensor],
               image_sizes: Tensor, *, cfg: RPNConfig) -> dict[str, Tensor]:
    """``{"loss_rpn_cls", "loss_rpn_box"}`` for ``cls_logits [N, M, C]``, ``deltas [N, M, 4]``.

    Each image's anchors are labelled (``label_anchors``) and sampled (``sample_labels``,
    ``cfg.batch_size_per_image`` anchors, ``cfg.positive_fraction`` objects at most). The classification
    term is cross-entropy (softmax, C=2) or binary cross-entropy (sigmoid, C=1) on the sampled anchors; the
    box term is the smooth-L1 (``sigma = cfg.box_loss_sigma``) of ``deltas - targets`` summed over the 4
    coordinates of the object anchors. Normalisation, ``cfg.loss_normalization``:

    * ``"sampled"`` (py-faster-rcnn): both terms divided by the number of sampled anchors of all images
      (the cls term is then the mean cross-entropy);
    * ``"paper"`` (Eq. 1): cls summed / (``batch_size_per_image`` * N) (N_cls = 256 per image), box summed
      * 10 / (N * H*W) (lambda = 10, N_reg = the number of anchor locations H*W of the map, with A read
      off the anchor grid).

    The box term is then multiplied by ``cfg.box_loss_weight``. An image without objects adds nothing to
    the box term; a batch without objects gives an exact 0.0 that still has a gradient.
    """
    n, m, _ = cls_logits.shape
    labels, targets = _targets(anchors, gt_boxes, image_sizes, cfg)
    sampled = labels >= 0
    pos = labels == 1
    logits = cls_logits.float()[sampled]
    if logits.shape[-1] == 1:
        cls_sum = F.binary_cross_entropy_with_logits(logits[:, 0], labels[sampled].float(), reduction="sum")
    else:
        cls_sum = F.cross_entropy(logits, labels[sampled], reduction="sum")
    box_sum = smooth_l1(deltas.float()[pos] - targets[pos], cfg.box_loss_sigma).sum()
    if cfg.loss_normalization == "paper":
        locations = m // _anchors_per_cell(anchors)
        loss_cls = cls_sum / float(cfg.batch_size_per_image * n)
        loss_box = box_sum * (10.0 / float(n * locations))
    else:
        num_sampled = max(int(sampled.sum()), 1)
        loss_cls = cls_sum / num_sampled
        loss_box = box_sum / num_sampled
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box * cfg.box_loss_weight}
