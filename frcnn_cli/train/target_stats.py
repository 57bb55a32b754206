"""Per-class box-target statistics of a detector step (``roi_head.box_target_norm = "dataset"``).

py-faster-rcnn's alternating optimisation (``roi_data_layer/roidb.py::add_bbox_regression_targets``): before a
Fast R-CNN step, every candidate RoI of the training roidb (the stored proposals and the ground-truth boxes,
flipped copies included) whose best IoU with a ground truth is at least 0.5 gets the raw deltas to that box;
per class, their mean and standard deviation normalise the targets during training, and at every snapshot
``bbox_pred`` is un-normalised (``W *= std``, ``b = b * std + mean``) so that the saved model predicts raw
deltas and needs nothing at test time.

frcnn does the same with its own decoder in mind: the saved ``bbox_pred`` predicts the deltas that
``FasterRCNN.box_coder`` (``roi_head.box_target_means/stds``) decodes, so inference, ``detect``, ``eval`` and
every tool see an ordinary checkpoint. During training the targets the model's sampler encodes with those
fixed numbers (``q``) are re-normalised per class (``(q * S + M - mean_c) / std_c``) before the loss; a
checkpoint (final, best or the copy validation runs) gets ``bbox_pred`` folded: ``W' = W * std_c / S``,
``b' = (b * std_c + mean_c - M) / S``; the resumable state keeps the unfolded weights. A class with fewer
than two foreground targets (or a degenerate spread) keeps the fixed numbers. Shapes: K classes without
background, D the head's width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..boxes import BoxCoder, box_iou
from ..config import Config
from ..data.images import record_targets
from ..data.manifest import Manifest
from ..data.proposal_store import ProposalStore
from ..model.detector import ForwardOutput

_MIN_STD = 1e-6
_RAW = BoxCoder()


@dataclass(frozen=True)
class TargetStats:
    """``means``/``stds`` ``[K+1, 4]`` (float64, row 0 background: the fixed numbers) of the raw targets
    ``(dx, dy, dw, dh)`` per class; ``counts`` ``[K+1]`` foreground targets measured per class."""

    means: Tensor
    stds: Tensor
    counts: Tensor

    def to_dict(self) -> dict:
        """Plain lists, for a checkpoint's provenance."""
        return {"means": [[round(v, 6) for v in row] for row in self.means.tolist()],
                "stds": [[round(v, 6) for v in row] for row in self.stds.tolist()],
                "counts": [int(c) for c in self.counts.tolist()]}


def _image_targets(boxes: Tensor, gt: Tensor, labels: Tensor, fg_iou: float) -> tuple[Tensor, Tensor]:
    """Raw targets ``[F, 4]`` and labels ``[F]`` of the candidates ``boxes`` whose best IoU with ``gt`` is at
    least ``fg_iou``."""
    if gt.shape[0] == 0 or boxes.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    best, matched = box_iou(boxes, gt).max(dim=1)
    fg = best >= fg_iou
    return _RAW.encode(boxes[fg], gt[matched[fg]]), labels[matched[fg]]


def compute_target_stats(store: ProposalStore, manifest: Manifest, cfg: Config) -> TargetStats:
    """The per-class statistics over every training image's candidates (its stored proposals, and its
    non-difficult gt boxes when ``roi_head.add_gt_as_proposals``), mirrored copies included when
    ``input.flip`` (mirroring negates ``dx`` and keeps the rest)."""
    k = len(manifest.classes)
    sums = torch.zeros(k + 1, 4, dtype=torch.float64)
    squares = torch.zeros(k + 1, 4, dtype=torch.float64)
    counts = torch.zeros(k + 1, dtype=torch.float64)
    for index, rec in enumerate(manifest.images):
        gt, labels = record_targets(rec)
        gt = gt.double()
        boxes = store.get(index)[0].double().reshape(-1, 4)
        if cfg.roi_head.add_gt_as_proposals:
            boxes = torch.cat((boxes, gt))
        targets, classes = _image_targets(boxes, gt, labels, cfg.roi_head.fg_iou)
        copies = [targets]
        if cfg.input.flip:
            copies.append(targets * torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
        for t in copies:
            sums.index_add_(0, classes, t)
            squares.index_add_(0, classes, t * t)
            counts.index_add_(0, classes, torch.ones(len(classes), dtype=torch.float64))
    return _finish(sums, squares, counts, cfg)


def _finish(sums: Tensor, squares: Tensor, counts: Tensor, cfg: Config) -> TargetStats:
    n = counts.clamp(min=1)[:, None]
    means = sums / n
    stds = (squares / n - means * means).clamp(min=0).sqrt()
    fixed_m = torch.tensor(cfg.roi_head.box_target_means, dtype=torch.float64).expand_as(means)
    fixed_s = torch.tensor(cfg.roi_head.box_target_stds, dtype=torch.float64).expand_as(stds)
    usable = (counts >= 2)[:, None] & (stds > _MIN_STD).all(dim=1, keepdim=True)
    usable[0] = False  # background has no targets
    return TargetStats(torch.where(usable, means, fixed_m), torch.where(usable, stds, fixed_s), counts.long())


def _coder_stats(coder: BoxCoder, like: Tensor) -> tuple[Tensor, Tensor]:
    return (torch.tensor(coder.means, dtype=like.dtype, device=like.device),
            torch.tensor(coder.stds, dtype=like.dtype, device=like.device))


class TargetNormaliser:
    """``prepare_losses`` of the training loop: re-normalises ``out.roi_targets`` per class, in place."""

    def __init__(self, stats: TargetStats, coder: BoxCoder, device: torch.device) -> None:
        self.means = stats.means.to(device, torch.float32)
        self.stds = stats.stds.to(device, torch.float32)
        self.coder = coder

    def __call__(self, out: ForwardOutput) -> None:
        if out.roi_targets is None:
            return
        q, labels = out.roi_targets, out.roi_labels
        fixed_m, fixed_s = _coder_stats(self.coder, q)
        raw = q * fixed_s + fixed_m
        p = (raw - self.means.to(q.dtype)[labels]) / self.stds.to(q.dtype)[labels]
        out.roi_targets = torch.where((labels > 0)[:, None], p, torch.zeros_like(p))


def folded_bbox_pred(weight: Tensor, bias: Tensor, stats: TargetStats, coder: BoxCoder) -> tuple[Tensor, Tensor]:
    """``bbox_pred``'s ``weight [4(K+1), D]`` and ``bias [4(K+1)]`` trained on per-class normalised targets,
    turned into those predicting the deltas ``coder`` decodes (computed in float64)."""
    m, s = stats.means.reshape(-1), stats.stds.reshape(-1)
    fixed_m, fixed_s = (t.repeat(len(stats.counts)) for t in _coder_stats(coder, m))
    gain = s / fixed_s
    w = (weight.double() * gain[:, None].to(weight.device)).to(weight.dtype)
    b = ((bias.double().cpu() * s + m - fixed_m) / fixed_s).to(bias.device, bias.dtype)
    return w, b


@contextlib.contextmanager
def folded(layer: nn.Linear, stats: TargetStats | None, coder: BoxCoder) -> Iterator[None]:
    """Inside, ``layer`` (the model's ``roi_head.bbox_pred``) holds the folded weights (a checkpoint is
    written, or validation copies the model); after, exactly the training weights again (the same tensors)."""
    if stats is None:
        yield
        return
    weight, bias = layer.weight.data, layer.bias.data
    layer.weight.data, layer.bias.data = folded_bbox_pred(weight, bias, stats, coder)
    try:
        yield
    finally:
        layer.weight.data, layer.bias.data = weight, bias
