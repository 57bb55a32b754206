"""The training losses: the RPN's (Eq. 1 of the paper) and Fast R-CNN's multi-task loss, with Caffe's smooth L1.

The targets files label and sample (``rpn_targets.anchor_targets``, ``roi_targets.label_and_sample_rois``);
this file scores predictions against those targets. Every loss is a masked sum on the device: no host sync.

Shapes: N images, M anchors per image, C objectness outputs per anchor (2 softmax, 1 sigmoid), S sampled
RoIs, K classes without background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import RPNConfig


def smooth_l1(x: Tensor, sigma: float) -> Tensor:
    """Elementwise ``0.5 * (sigma * x)**2`` if ``|x| < 1 / sigma**2`` else ``|x| - 0.5 / sigma**2`` (Caffe's
    ``sigma``: 3 for the RPN, 1 for the detector)."""
    s2 = sigma * sigma
    ax = x.abs()
    return (ax < 1.0 / s2).to(x.dtype) * 0.5 * s2 * x * x + (ax >= 1.0 / s2).to(x.dtype) * (ax - 0.5 / s2)


def rpn_losses(cls_logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor, *, cfg: RPNConfig,
               anchors_per_cell: int) -> dict[str, Tensor]:
    """``{"loss_rpn_cls", "loss_rpn_box"}`` for ``cls_logits [N, M, C]``, ``deltas [N, M, 4]``.

    ``labels LongTensor[N, M]`` and ``targets [N, M, 4]`` are ``rpn_targets.anchor_targets``' sampled labels
    (1 object, 0 background, -1 not sampled) and regression targets. The classification
    term is cross-entropy (softmax, C=2) or binary cross-entropy (sigmoid, C=1) on the sampled anchors; the
    box term is the smooth-L1 (``sigma = cfg.box_loss_sigma``) of ``deltas - targets`` summed over the 4
    coordinates of the object anchors. Both are masked sums over all anchors (no host sync). Normalisation,
    ``cfg.loss_normalization``:

    * ``"sampled"`` (py-faster-rcnn): both terms divided by the number of sampled anchors of all images
      (at least 1; the cls term is then the mean cross-entropy);
    * ``"paper"`` (Eq. 1): cls summed / (``batch_size_per_image`` * N) (N_cls = 256 per image), box summed
      * 10 / (N * H*W) (lambda = 10, N_reg = the number of anchor locations H*W = M / A of the map, A =
      ``anchors_per_cell``).

    The box term is then multiplied by ``cfg.box_loss_weight``. An image without objects adds nothing to
    the box term; a batch without objects gives an exact 0.0 that still has a gradient.
    """
    n, m, _ = cls_logits.shape
    sampled, pos = labels >= 0, labels == 1
    logits = cls_logits.float()
    if logits.shape[-1] == 1:
        per_anchor = F.binary_cross_entropy_with_logits(logits[..., 0], pos.float(), reduction="none")
        cls_sum = torch.where(sampled, per_anchor, torch.zeros_like(per_anchor)).sum()
    else:
        cls_sum = F.cross_entropy(logits.reshape(n * m, -1), labels.reshape(n * m), ignore_index=-1,
                                  reduction="sum")
    per_coord = smooth_l1(deltas.float() - targets, cfg.box_loss_sigma)
    box_sum = torch.where(pos[..., None], per_coord, torch.zeros_like(per_coord)).sum()
    if cfg.loss_normalization == "paper":
        locations = m // int(anchors_per_cell)
        loss_cls = cls_sum / float(cfg.batch_size_per_image * n)
        loss_box = box_sum * (10.0 / (n * locations))
    else:
        num_sampled = sampled.sum().clamp(min=1)
        loss_cls = cls_sum / num_sampled
        loss_box = box_sum / num_sampled
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box * cfg.box_loss_weight}


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, targets: Tensor, *,
                     sigma: float = 1.0) -> dict[str, Tensor]:
    """The Fast R-CNN multi-task loss (py-faster-rcnn's SoftmaxWithLoss + SmoothL1Loss).

    ``class_logits`` ``Tensor[S, K+1]``, ``box_deltas`` ``Tensor[S, 4(K+1)]``, ``labels`` ``LongTensor[S]``,
    ``targets`` ``Tensor[S, 4]``. ``loss_cls``: cross-entropy averaged over the S RoIs. ``loss_box``:
    smooth-L1 (``sigma``) of the label's 4 delta columns against the targets, summed over foreground
    RoIs and divided by S (all sampled RoIs, as py-faster-rcnn). S == 0 gives two zero losses that
    still carry a (zero) gradient.
    """
    num = class_logits.shape[0]
    if num == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box": zero.clone()}
    loss_cls = F.cross_entropy(class_logits.float(), labels)
    rows = torch.arange(num, device=box_deltas.device)
    pred = box_deltas.float().view(num, -1, 4)[rows, labels]
    per_coord = smooth_l1(pred - targets.float(), sigma)
    per_coord = torch.where((labels > 0)[:, None], per_coord, torch.zeros_like(per_coord))
    return {"loss_cls": loss_cls, "loss_box": per_coord.sum() / num}
