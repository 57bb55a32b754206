"""RoI labelling and sampling for Fast R-CNN: the detector's training targets.

py-faster-rcnn alt-opt (``roi_data_layer/minibatch.py::_sample_rois``): per image the candidates are its
proposals plus its ground-truth boxes; a candidate is foreground when its best IoU with a gt box is
``>= fg_iou`` (label = that gt's class), background when ``bg_iou_lo <= IoU < bg_iou_hi`` (label 0), and
ignored otherwise. Per image ``min(round(fg_fraction * batch), #fg)`` foreground and
``min(batch - n_fg, #bg)`` background RoIs are drawn uniformly without replacement: no padding, so a
batch may hold fewer RoIs. Regression targets are the normalised deltas of the matched gt box
(``BoxCoder(means, stds).encode``), zeros for background.

All images are labelled and sampled together; on CUDA the only host sync is the final selection of the
variable number S of RoIs (one ``nonzero``), which the RoI head needs to size its input.

Shapes: N images, R_i proposals of image i, G_i gt boxes of image i, C candidates of all images
(proposals + gt), S sampled RoIs, K classes without background.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import BoxCoder, box_iou
from ..config import RoIHeadConfig

# candidate categories; the sort below puts each image's fg before its bg before its ignored
_FG, _BG, _IGNORED = 0, 1, 2


def _flat_with_image_index(tensors: list[Tensor], device) -> Tensor:
    """``LongTensor[sum n_i]`` holding ``i`` for every row of ``tensors[i]`` (fills of host-known sizes: no
    host-to-device copy and no ``repeat_interleave`` count read back)."""
    parts = [torch.full((t.shape[0],), i, dtype=torch.long, device=device) for i, t in enumerate(tensors)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)


def _candidates(proposals: list[Tensor], gt_boxes: list[Tensor], add_gt: bool) -> tuple[Tensor, Tensor]:
    """All candidates ``[C, 4]`` of all images and their image index ``[C]``."""
    per_image = [torch.cat((p, g.to(device=p.device, dtype=p.dtype)), 0) if add_gt else p
                 for p, g in zip(proposals, gt_boxes)]
    device = proposals[0].device
    return torch.cat(per_image, 0), _flat_with_image_index(per_image, device)


def _match(boxes: Tensor, box_image: Tensor, gt_boxes: list[Tensor], gt_labels: list[Tensor]
           ) -> tuple[Tensor, Tensor, Tensor]:
    """Best IoU ``[C]`` of each candidate with a gt of its own image; that gt ``[C, 4]`` and label ``[C]``.

    One IoU matrix over all images, with pairs of different images masked out; a zero dummy gt (image -1)
    keeps the matrix non-empty, so candidates of an image without gt get IoU 0.
    """
    device = boxes.device
    dummy_box = boxes.new_zeros(1, 4)
    dummy_label = torch.zeros(1, dtype=torch.long, device=device)
    all_gt = torch.cat([g.to(device=device, dtype=boxes.dtype) for g in gt_boxes] + [dummy_box], 0)
    all_labels = torch.cat([lab.to(device=device, dtype=torch.long) for lab in gt_labels] + [dummy_label], 0)
    gt_image = torch.cat((_flat_with_image_index(gt_boxes, device),
                          torch.full((1,), -1, dtype=torch.long, device=device)))
    iou = box_iou(boxes, all_gt).masked_fill(box_image[:, None] != gt_image[None, :], -1.0)
    max_iou, matched = iou.max(dim=1)
    return max_iou.clamp(min=0.0), all_gt[matched], all_labels[matched]


def _group_starts(sorted_group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """First position ``[num_groups]`` and size ``[num_groups]`` of each group id in ``sorted_group``
    (ascending), by ``searchsorted``: ``bincount`` would read its maximum back to the host on CUDA."""
    ids = torch.arange(num_groups + 1, dtype=sorted_group.dtype, device=sorted_group.device)
    bounds = torch.searchsorted(sorted_group, ids)
    return bounds[:-1], bounds[1:] - bounds[:-1]


def _sample(category: Tensor, box_image: Tensor, num_images: int, cfg: RoIHeadConfig, sample: bool) -> Tensor:
    """Indices of the kept candidates, grouped by image, fg before bg (random order within with sampling).

    A random permutation (``argsort`` of ``torch.rand`` keys), stably sorted by (image, category): each
    group's first ``quota`` entries are a uniform draw without replacement. Counts and quotas stay on the
    device; the one host sync is the final variable-length selection (``S`` must be known to size the RoIs).
    """
    order = torch.arange(category.shape[0], device=category.device)
    if sample:
        order = torch.argsort(torch.rand(category.shape[0], device=category.device))
    group = box_image * 3 + category
    order = order[torch.argsort(group[order], stable=True)]
    if not sample:
        return order[category[order] != _IGNORED]  # the one sync
    sorted_group = group[order]
    starts, counts = _group_starts(sorted_group, num_images * 3)
    rank = torch.arange(order.shape[0], device=order.device) - starts[sorted_group]
    per_image = counts.view(num_images, 3)
    batch = cfg.batch_size_per_image
    n_fg = per_image[:, _FG].clamp(max=int(round(cfg.fg_fraction * batch)))
    n_bg = torch.minimum(batch - n_fg, per_image[:, _BG])
    quota = torch.stack((n_fg, n_bg, torch.zeros_like(n_fg)), 1).view(-1)
    return order[rank < quota[sorted_group]]  # the one sync


@torch.no_grad()
def label_and_sample_rois(proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor], *,
                          cfg: RoIHeadConfig, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Label the candidates of every image and draw the Fast R-CNN minibatch.

    ``proposals[i]``: ``Tensor[R_i, 4]``, ``gt_boxes[i]``: ``Tensor[G_i, 4]`` (scaled-image coordinates),
    ``gt_labels[i]``: ``LongTensor[G_i]`` in 1..K. Candidates are the proposals, plus the gt boxes when
    ``cfg.add_gt_as_proposals``. With ``sample=False`` every foreground and background candidate is kept
    (for a validation loss over all RoIs). An image without gt has only IoU-0 candidates: all background
    when ``cfg.bg_iou_lo`` is 0 (the alt-opt value).

    Returns ``rois`` ``Tensor[S, 5]`` (image index, x1, y1, x2, y2), ``labels`` ``LongTensor[S]`` (0 =
    background) and ``targets`` ``Tensor[S, 4]`` (normalised deltas to the matched gt; zeros for bg),
    grouped by image, each image's foreground first. Constants: computed without autograd.
    """
    boxes, box_image = _candidates(proposals, gt_boxes, cfg.add_gt_as_proposals)
    max_iou, matched_boxes, matched_labels = _match(boxes, box_image, gt_boxes, gt_labels)
    fg = max_iou >= cfg.fg_iou
    bg = (max_iou >= cfg.bg_iou_lo) & (max_iou < cfg.bg_iou_hi)
    category = torch.where(fg, _FG, torch.where(bg, _BG, _IGNORED))
    keep = _sample(category, box_image, len(proposals), cfg, sample)

    kept_boxes = boxes[keep]
    is_fg = category[keep] == _FG
    labels = torch.where(is_fg, matched_labels[keep], 0)
    coder = BoxCoder(means=cfg.box_target_means, stds=cfg.box_target_stds)
    targets = coder.encode(kept_boxes, matched_boxes[keep])
    targets = torch.where(is_fg[:, None], targets, torch.zeros_like(targets))
    rois = torch.cat((box_image[keep, None].to(kept_boxes.dtype), kept_boxes), 1)
    return rois, labels, targets
