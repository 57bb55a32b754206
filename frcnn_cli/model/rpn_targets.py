"""Anchor labelling and the 256-anchor sampling: the RPN's targets (py-faster-rcnn's anchor target layer).

Shapes: N images, M anchors per image (``anchors.py`` grid order), A anchors per cell, H x W feature grid
(M = H*W*A), G ground-truth boxes of an image (G_max: the most of any image of the batch), C objectness
outputs per anchor (2 softmax, 1 sigmoid). Labels: 1 object, 0 background, -1 ignored.

The training path (``anchor_targets``) never waits for the device: the images of a batch are labelled together
(the anchors are shared, the gt boxes padded to G_max with a validity mask), the sampling ranks random keys
instead of drawing index lists, and targets are masked with ``torch.where`` rather than boolean
indexing, so nothing reads a count back to the host (no ``.item()``, ``nonzero`` or ``.tolist()``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import BoxCoder, box_iou
from ..config import RPNConfig

_CODER = BoxCoder()  # the RPN's targets are not normalised


def pad_gt_boxes(gt_boxes: list[Tensor], device: torch.device | str) -> tuple[Tensor, Tensor]:
    """``(boxes [N, G_max, 4] float32, valid BoolTensor[N, G_max])``: each image's gt boxes in their order,
    then zero rows marked invalid; ``G_max >= 1`` so that an all-empty batch still has a gt axis."""
    g = max([b.shape[0] for b in gt_boxes] + [1])
    boxes = torch.zeros(len(gt_boxes), g, 4, dtype=torch.float32, device=device)
    valid = torch.zeros(len(gt_boxes), g, dtype=torch.bool, device=device)
    for i, b in enumerate(gt_boxes):  # a copy and a fill of host-known sizes each: no sync
        boxes[i, :b.shape[0]].copy_(b.to(device, torch.float32))
        valid[i, :b.shape[0]].fill_(True)
    return boxes, valid


def _inside(anchors: Tensor, image_sizes: Tensor, border: float, enabled: bool) -> Tensor:
    """``BoolTensor[N, M]``: anchors inside each ``(h, w)`` of ``image_sizes [N, 2]``, ``border`` px allowed
    (py-faster-rcnn: ``x2_inclusive < width + border``; the limit ``size + border`` is summed in float64 and
    rounded to the anchors' dtype, as when it is a Python number). All True when not ``enabled``."""
    n, m = image_sizes.shape[0], anchors.shape[0]
    if not enabled:
        return torch.ones(n, m, dtype=torch.bool, device=anchors.device)
    limits = (image_sizes.to(anchors.device, torch.float64) + border).to(anchors.dtype)  # [N, 2]
    low = (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)  # [M]
    return low & (anchors[:, 2] <= limits[:, 1:2]) & (anchors[:, 3] <= limits[:, 0:1])


def label_anchors_batch(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, image_sizes: Tensor, *,
                        positive_iou: float = 0.7, negative_iou: float = 0.3, allowed_border: float = 0.0,
                        ignore_cross_boundary: bool = True) -> tuple[Tensor, Tensor]:
    """Label every anchor of every image at once, without a host sync: ``(labels LongTensor[N, M] in {1, 0,
    -1}, matched_gt LongTensor[N, M])``.

    The paper's rule in py-faster-rcnn's order (RPN_CLOBBER_POSITIVES False): anchors crossing the image
    boundary (more than ``allowed_border`` pixels out) are ignored when ``ignore_cross_boundary``; inside
    anchors whose best IoU is < ``negative_iou`` are background; then every anchor tied at some ground
    truth's highest IoU (where that IoU is > 0) is an object, even below ``positive_iou``; then every anchor
    with best IoU >= ``positive_iou`` is an object. ``matched_gt`` is the index of each anchor's best ground
    truth (0 where there is none); without ground truth every inside anchor is background.

    ``anchors [M, 4]`` (shared), ``gt_boxes [N, G_max, 4]`` with ``gt_valid BoolTensor[N, G_max]``
    (``pad_gt_boxes``), ``image_sizes [N, 2]`` (h, w) on the anchors' device. IoU is one
    ``[M, N, G_max]`` tensor where pairs with an outside anchor or a padding gt are -1: below any real IoU,
    so the maxima, the first-index argmax and the tie rule see exactly the image's own pairs.
    """
    m, (n, g) = anchors.shape[0], gt_valid.shape
    inside = _inside(anchors, image_sizes, allowed_border, ignore_cross_boundary).t()  # [M, N]
    iou = box_iou(anchors.float(), gt_boxes.reshape(n * g, 4).float()).view(m, n, g)  # anchor-major
    iou = iou.masked_fill(~(inside[:, :, None] & gt_valid[None]), -1.0)
    max_iou, matched_gt = iou.max(dim=2)  # [M, N]
    gt_max = iou.max(dim=0).values  # [N, G_max]
    best_for_some_gt = ((iou == gt_max) & (gt_max > 0)).any(dim=2)
    positive = best_for_some_gt | (inside & (max_iou >= positive_iou))
    negative = inside & (max_iou < negative_iou)
    ignored = torch.full_like(matched_gt, -1)
    labels = torch.where(positive, 1, torch.where(negative, torch.zeros_like(ignored), ignored))
    return labels.t().contiguous(), matched_gt.t().contiguous()


def _smallest_keys(keys: Tensor, members: Tensor, limit: Tensor | int, k: int) -> Tensor:
    """``members`` (BoolTensor ``[..., M]``) whose key is among the ``limit`` smallest keys of the members of
    their row; ``limit`` an int or a ``[..., 1]`` tensor, at most ``k`` (a host bound for ``topk``).
    ``keys`` in [0, 1); the ``k`` smallest are found by ``topk``, cheaper than sorting the row."""
    k = max(0, min(k, keys.shape[-1]))
    masked = torch.where(members, keys, torch.full_like(keys, 2.0))
    values, index = masked.topk(k, dim=-1, largest=False, sorted=True)  # ascending: position = rank
    rank = torch.arange(k, device=keys.device)
    return torch.zeros_like(members).scatter_(-1, index, (values < 2.0) & (rank < limit))


def sample_labels(labels: Tensor, batch_size: int, positive_fraction: float) -> Tensor:
    """The mini-batch of each image: at most ``int(positive_fraction*batch_size)`` objects, background up to
    ``batch_size`` in all; the others become -1. ``labels LongTensor[..., M]`` (one image ``[M]`` or a
    batch ``[N, M]``, sampled row by row); returns a new tensor of the same shape.

    Uniform without replacement, as py-faster-rcnn's ``npr.choice(..., replace=False)``: every anchor gets a
    float64 key from ``torch.rand`` on the labels' device (global RNG), and the objects with the
    ``limit`` smallest keys among the objects are kept, likewise for background (equal keys, a chance of
    about 1e-8 per image, are still broken deterministically). The background limit
    ``batch_size - kept objects`` stays a tensor: no count reaches the host.
    """
    keys = torch.rand(labels.shape, dtype=torch.float64, device=labels.device)
    pos, neg = labels == 1, labels == 0
    pos_limit = int(positive_fraction * batch_size)
    keep_pos = _smallest_keys(keys, pos, pos_limit, pos_limit)
    keep_neg = _smallest_keys(keys, neg, batch_size - keep_pos.sum(dim=-1, keepdim=True), batch_size)
    dropped = (pos & ~keep_pos) | (neg & ~keep_neg)
    return torch.where(dropped, torch.full_like(labels, -1), labels)


def anchor_targets(anchors: Tensor, gt_boxes: list[Tensor], image_sizes: Tensor, *,
                   cfg: RPNConfig) -> tuple[Tensor, Tensor]:
    """The RPN's training targets of a batch: sampled labels ``LongTensor[N, M]`` (1 object, 0 background,
    -1 not in the minibatch) and regression targets ``[N, M, 4]`` (zero except on objects).

    ``anchors [M, 4]``, ``gt_boxes`` per image ``[G_i, 4]``, ``image_sizes [N, 2]`` (h, w). Each image's anchors
    are labelled (``label_anchors_batch``) and sampled (``sample_labels``: ``cfg.batch_size_per_image``
    anchors, ``cfg.positive_fraction`` objects at most); the targets are the unnormalised deltas of the
    matched gt box. No host sync.
    """
    gt, valid = pad_gt_boxes(gt_boxes, anchors.device)
    labels, matched = label_anchors_batch(
        anchors, gt, valid, image_sizes.to(anchors.device), positive_iou=cfg.positive_iou,
        negative_iou=cfg.negative_iou, allowed_border=cfg.allowed_border,
        ignore_cross_boundary=cfg.ignore_cross_boundary)
    labels = sample_labels(labels, cfg.batch_size_per_image, cfg.positive_fraction)
    n, m = labels.shape
    matched_boxes = gt.gather(1, matched[..., None].expand(n, m, 4))  # [N, M, 4]
    encoded = _CODER.encode(anchors.float().repeat(n, 1), matched_boxes.reshape(n * m, 4)).view(n, m, 4)
    return labels, torch.where((labels == 1)[..., None], encoded, torch.zeros_like(encoded))
