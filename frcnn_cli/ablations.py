"""The paper's test-time proposal ablations (Table 1): RPN proposals without NMS, without the cls scores,
without the reg deltas, and with N proposals.

Shapes: N images, M = h*w*A anchors per image, C objectness outputs per anchor, R_i proposals of image i.

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
  the paper's models): it sets ``ProposalSettings.post_nms_top_n`` of the test settings.

An ablation is a proposal strategy (``model.rpn.Proposer``): ``ProposalAblation.proposer(settings)`` gives the
object ``FasterRCNN.forward`` runs in place of the RPN's own proposal layer; the backbone, the RPN head and
the RoI head are the model's usual forward. With every switch on, the proposals are exactly the model's own
test-time ones (``RPNProposer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .model.rpn import ProposalSettings, Proposer, RPNProposer, candidate_boxes, objectness_scores, select_proposals


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

    def proposer(self, settings: ProposalSettings) -> Proposer:
        """The proposal strategy of these switches on top of the test ``settings`` (``top_n``, when given,
        replaces their ``post_nms_top_n``); the model's own ``RPNProposer`` when every switch is on."""
        if self.top_n is not None:
            settings = ProposalSettings(settings.pre_nms_top_n, self.top_n, settings.nms_thresh, settings.min_size)
        if self.nms and self.use_scores and self.use_regression:
            return RPNProposer(settings)
        return AblatedProposer(self, settings)


def _random_priority(shape: tuple[int, int], keys: Sequence[int], seed: int, device: torch.device) -> Tensor:
    """``[N, M]`` uniform priorities; image i's row depends only on ``(seed, keys[i])``."""
    rows = []
    for key in keys:
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))
        rows.append(torch.rand(shape[1], generator=gen))
    return torch.stack(rows).to(device)


@dataclass(frozen=True)
class AblatedProposer:
    """Test proposals under ``ablation`` with the numbers of ``settings`` (a ``model.rpn.Proposer``)."""

    ablation: ProposalAblation
    settings: ProposalSettings

    def __call__(self, anchors: Tensor, cls_logits: Tensor, deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                 *, keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]:
        """``[(boxes [R_i, 4] scaled pixels, scores [R_i])]`` from the RPN outputs (``anchors [M, 4]``,
        ``cls_logits [N, M, C]``, ``deltas [N, M, 4]``), ``image_sizes [N, 2]`` (h, w scaled), ``scales
        [N]``; ``keys`` (default 0..N-1) seed each image's random draw when ``use_scores`` is off (give the
        manifest indices for batch-independent draws)."""
        ablation, s = self.ablation, self.settings
        device = deltas.device
        min_sizes = s.min_size * scales.to(device=device, dtype=torch.float32)
        scores = objectness_scores(cls_logits)
        n, m = scores.shape
        boxes, valid = candidate_boxes(anchors, deltas, image_sizes, min_sizes, decode=ablation.use_regression)
        top_n = s.post_nms_top_n
        if not ablation.use_scores:
            keys = range(n) if keys is None else keys
            priority = _random_priority((n, m), keys, ablation.seed, device)
            return select_proposals(boxes, priority, valid, pre_nms_top_n=top_n, post_nms_top_n=top_n,
                                    nms_thresh=None)
        if not ablation.nms:
            return select_proposals(boxes, scores, valid, pre_nms_top_n=top_n, post_nms_top_n=top_n,
                                    nms_thresh=None)
        return select_proposals(boxes, scores, valid, pre_nms_top_n=s.pre_nms_top_n, post_nms_top_n=top_n,
                                nms_thresh=s.nms_thresh)
