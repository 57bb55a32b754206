"""The paper's test-time proposal ablations (Table 1): RPN proposals without NMS, without the cls scores,
without the reg deltas, and with N proposals.

Shapes: N images, M = h*w*A anchors per image, C objectness outputs per anchor, R_i proposals of image i,
S = sum R_i RoIs, K classes without background.

What each switch does (Ren et al., Sec. 4.1, "Ablation Experiments on RPN"):

- ``nms=False``: the top N boxes by objectness, without NMS (the paper's row uses N = 6000).
- ``use_scores=False``: "the cls layer is removed at test-time (thus no NMS/ranking is used)": N proposals
  drawn at random, without replacement, from all of the image's (decoded, clipped, large enough) boxes.
  NMS needs a ranking, so ``nms`` has no effect here. The draw is seeded by ``seed`` and the image's key
  (its manifest index), so it does not depend on the batch size or the device. The proposals' "scores"
  are then the random priorities that picked them.
- ``use_regression=False``: "the proposals become anchor boxes": the anchors themselves, clipped to the
  image, then the usual min-size filter, pre-NMS top-N by objectness, NMS and top N.
- ``top_n``: N, the number of test proposals per image (default ``cfg.rpn.test_post_nms_top_n``, 300 for
  the paper's models).

The backbone and the RPN head run once (``FasterRCNN.forward`` with ``run_roi_head=False,
proposal_mode=None``); the ablated proposals are then built from the RPN outputs on the device, and the
RoI head runs on them (``model.roi_head``). With every switch on (the default), the proposals are
exactly the model's own test-time ones (``generate_proposals``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import BoxCoder, clip_boxes, small_box_mask
from .devices import autocast
from .model.detector import FasterRCNN, ForwardOutput
from .model.rpn import generate_proposals, objectness_scores, select_proposals


@dataclass(frozen=True)
class ProposalAblation:
    """Which parts of the RPN make the test proposals (Table 1 of the paper); the default changes nothing."""

    nms: bool = True
    use_scores: bool = True
    use_regression: bool = True
    top_n: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n must be a positive number of proposals, got {self.top_n}")

    @property
    def is_default(self) -> bool:
        """True when the proposals are the model's usual ones (every switch on, N from the config)."""
        return self.nms and self.use_scores and self.use_regression and self.top_n is None

    def describe(self) -> str:
        """A short human-readable name, e.g. ``"RPN proposals (no NMS, N=6000)"``."""
        parts = []
        if not self.use_scores:
            parts.append("no cls scores")
        elif not self.nms:
            parts.append("no NMS")
        if not self.use_regression:
            parts.append("no reg")
        if self.top_n is not None:
            parts.append(f"N={self.top_n}")
        return "RPN proposals" + (f" ({', '.join(parts)})" if parts else "")


def _random_priority(shape: tuple[int, int], keys: Sequence[int], seed: int, device: torch.device) -> Tensor:
    """``[N, M]`` uniform priorities; image i's row depends only on ``(seed, keys[i])``."""
    rows = []
    for key in keys:
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))
        rows.append(torch.rand(shape[1], generator=gen))
    return torch.stack(rows).to(device)


def ablated_proposals(model: FasterRCNN, out: ForwardOutput, image_sizes: Tensor, scales: Tensor,
                      ablation: ProposalAblation, *,
                      keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]:
    """Test proposals ``[(boxes [R_i, 4] scaled pixels, scores [R_i])]`` from the RPN outputs in ``out``
    (``anchors``, ``rpn_cls_logits``, ``rpn_deltas``) under ``ablation``.

    ``image_sizes [N, 2]`` (h, w scaled), ``scales [N]``; ``keys`` (default 0..N-1) seed each image's
    random draw when ``use_scores`` is off (give the manifest indices for batch-independent draws).
    """
    rpn = model.cfg.rpn
    top_n = rpn.test_post_nms_top_n if ablation.top_n is None else ablation.top_n
    device = out.rpn_deltas.device
    min_sizes = rpn.min_size * scales.to(device=device, dtype=torch.float32)
    scores = objectness_scores(out.rpn_cls_logits.detach())
    deltas = out.rpn_deltas.detach().float()
    n, m = scores.shape
    if ablation.use_regression and ablation.use_scores and ablation.nms:
        return generate_proposals(out.anchors, scores, deltas, image_sizes, min_sizes,
                                  pre_nms_top_n=rpn.test_pre_nms_top_n, post_nms_top_n=top_n,
                                  nms_thresh=rpn.nms_thresh)
    anchors = out.anchors.float()
    if ablation.use_regression:
        boxes = BoxCoder().decode(deltas.reshape(n * m, 4), anchors.repeat(n, 1)).view(n, m, 4)
    else:
        boxes = anchors[None].expand(n, m, 4)
    sizes = image_sizes.to(device=device, dtype=torch.float32)
    boxes = clip_boxes(boxes, sizes[:, 0:1], sizes[:, 1:2])
    valid = small_box_mask(boxes, min_sizes[:, None])
    if not ablation.use_scores:
        keys = range(n) if keys is None else keys
        priority = _random_priority((n, m), keys, ablation.seed, device)
        return select_proposals(boxes, priority, valid, pre_nms_top_n=top_n, post_nms_top_n=top_n,
                                nms_thresh=None)
    if not ablation.nms:
        return select_proposals(boxes, scores, valid, pre_nms_top_n=top_n, post_nms_top_n=top_n,
                                nms_thresh=None)
    return select_proposals(boxes, scores, valid, pre_nms_top_n=rpn.test_pre_nms_top_n,
                            post_nms_top_n=top_n, nms_thresh=rpn.nms_thresh)


def _rois(proposals: list[Tensor]) -> Tensor:
    """``[S, 5]``: each proposal with its image index in front, grouped by image."""
    rows = [torch.cat((torch.full_like(p[:, :1], float(i)), p), 1) for i, p in enumerate(proposals)]
    return torch.cat(rows, 0)


@torch.no_grad()
def ablated_forward(model: FasterRCNN, images: Tensor, image_sizes: Tensor, scales: Tensor,
                    ablation: ProposalAblation, *, keys: Sequence[int] | None = None) -> ForwardOutput:
    """A test-time forward whose RoI head sees the ablated proposals; ``model.detect`` works on the result.

    ``images [N, 3, H, W]`` (padded batch), ``image_sizes [N, 2]``, ``scales [N]`` on the model's device.
    The backbone runs once; bf16 autocast on CUDA as the other inference paths (``cfg.solver.amp``).
    """
    with autocast(images.device, model.cfg.solver.amp):
        out = model(images, image_sizes, scales, run_roi_head=False, proposal_mode=None)
        found = ablated_proposals(model, out, image_sizes, scales, ablation, keys=keys)
        out.proposals = [boxes.float() for boxes, _ in found]
        out.proposal_scores = [s for _, s in found]
        out.rois = _rois(out.proposals)
        out.class_logits, out.box_deltas = model.roi_head(out.features, out.rois)
    return out
