"""The Region Proposal Network head, proposal generation, and the proposal strategies ``FasterRCNN`` runs.

Shapes: N images, Cin feature channels, H x W feature grid, A anchors per cell, M = H*W*A anchors per image
(flat index ``(h*W + w)*A + a``, see ``anchors.py``), C objectness outputs per anchor (2 for the paper's
softmax, 1 for sigmoid), R_i proposals kept for image i.

A *proposer* turns the RPN's outputs into proposals (``Proposer``). ``RPNProposer`` is the paper's proposal
layer with the numbers of a ``ProposalSettings`` value (training, test or dump: ``ProposalSettings.from_config``);
the Table 1 ablations (``frcnn_cli.ablations``) are other proposers. ``FasterRCNN.forward`` runs whichever it
is given, so the model never looks its proposal numbers up by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..boxes import BoxCoder, clip_boxes, small_box_mask
from ..config import OBJECTNESS, RPNConfig

OBJECTNESS_CHANNELS = {"softmax": 2, "sigmoid": 1}
PROPOSAL_MODES = ("train", "test", "dump")  # joint training, detections, proposal files


@dataclass(frozen=True)
class ProposalSettings:
    """The proposal layer's numbers: ``pre_nms_top_n`` boxes by objectness (0 = all), NMS at ``nms_thresh``,
    ``post_nms_top_n`` kept (0 = all), boxes smaller than ``min_size`` original-image pixels dropped."""

    pre_nms_top_n: int
    post_nms_top_n: int
    nms_thresh: float
    min_size: float

    @classmethod
    def from_config(cls, rpn: RPNConfig, mode: str) -> ProposalSettings:
        """The settings of ``rpn`` for ``mode``: "train" (joint training), "test" or "dump" (proposal files)."""
        top_n = {"train": (rpn.train_pre_nms_top_n, rpn.train_post_nms_top_n),
                 "test": (rpn.test_pre_nms_top_n, rpn.test_post_nms_top_n),
                 "dump": (rpn.dump_pre_nms_top_n, rpn.dump_post_nms_top_n)}
        if mode not in top_n:
            raise ValueError(f"mode must be one of {PROPOSAL_MODES}, got {mode!r}")
        pre, post = top_n[mode]
        return cls(pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=rpn.nms_thresh, min_size=rpn.min_size)


class Proposer(Protocol):
    """Proposals ``[(boxes [R_i, 4] scaled pixels, scores [R_i])]`` from the RPN's outputs: ``anchors [M, 4]``,
    ``cls_logits [N, M, C]``, ``deltas [N, M, 4]`` (both detached), ``image_sizes [N, 2]`` (h, w), ``scales
    [N]``; ``keys`` name the images (manifest indices) for proposers that draw at random."""

    def __call__(self, anchors: Tensor, cls_logits: Tensor, deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                 *, keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]: ...


@dataclass(frozen=True)
class RPNProposer:
    """The paper's proposal layer (``generate_proposals``) with ``settings``."""

    settings: ProposalSettings

    def __call__(self, anchors: Tensor, cls_logits: Tensor, deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                 *, keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]:
        s = self.settings
        min_sizes = s.min_size * scales.to(device=deltas.device, dtype=torch.float32)
        return generate_proposals(anchors, objectness_scores(cls_logits), deltas, image_sizes, min_sizes,
                                  pre_nms_top_n=s.pre_nms_top_n, post_nms_top_n=s.post_nms_top_n,
                                  nms_thresh=s.nms_thresh)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs for objectness (A*C channels) and box deltas (A*4).

    Channel layouts are py-faster-rcnn's: objectness channel ``c*A + a`` (all background scores first,
    then all foreground), delta channel ``4*a + coord``. Weights N(0, 0.01), biases 0.
    """

    def __init__(self, in_channels: int, conv_channels: int, num_anchors: int, objectness: str = "softmax"):
        super().__init__()
        if objectness not in OBJECTNESS:
            raise ValueError(f"objectness must be one of {OBJECTNESS}, got {objectness!r}")
        self.num_anchors = int(num_anchors)
        self.objectness = objectness
        self.num_outputs = OBJECTNESS_CHANNELS[objectness]
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(conv_channels, self.num_anchors * self.num_outputs, kernel_size=1)
        self.bbox_pred = nn.Conv2d(conv_channels, self.num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``features [N, Cin, H, W]`` -> ``(cls_logits [N, H*W*A, C], deltas [N, H*W*A, 4])``, grid order.

        In eval mode the two 1x1 convs run in float32 even under autocast, so the outputs are float32: bf16
        logits give the top 2000 objectness scores only about 830 distinct values, and NMS would order the
        ties arbitrarily (docs/reproducing-the-paper.md). The cost is two 1x1 convs; training is unchanged.
        """
        n, _, h, w = features.shape
        x = F.relu(self.conv(features))
        a, c = self.num_anchors, self.num_outputs
        if self.training or not torch.is_autocast_enabled(x.device.type):
            raw_logits, raw_deltas = self.cls_logits(x), self.bbox_pred(x)
        else:
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                raw_logits, raw_deltas = self.cls_logits(x), self.bbox_pred(x)
        logits = raw_logits.view(n, c, a, h, w).permute(0, 3, 4, 2, 1).reshape(n, h * w * a, c)
        deltas = raw_deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4)
        return logits, deltas


def objectness_scores(cls_logits: Tensor) -> Tensor:
    """Foreground probability ``Tensor[N, M]`` of ``cls_logits [N, M, C]`` (C=2: softmax, C=1: sigmoid)."""
    if cls_logits.shape[-1] == 2:
        return torch.softmax(cls_logits.float(), dim=-1)[..., 1]
    return torch.sigmoid(cls_logits.float()[..., 0])


@torch.no_grad()
def generate_proposals(anchors: Tensor, scores: Tensor, deltas: Tensor, image_sizes: Tensor,
                       min_sizes: Tensor, *, pre_nms_top_n: int, post_nms_top_n: int,
                       nms_thresh: float) -> list[tuple[Tensor, Tensor]]:
    """Proposals of every image: ``[(boxes [R_i, 4], scores [R_i])]`` sorted by score, descending.

    py-faster-rcnn's proposal layer, batched over images: decode every anchor (``BoxCoder()``, no
    normalisation), clip to the image's ``(h, w)`` in ``image_sizes [N, 2]``, drop boxes narrower or lower
    than ``min_sizes [N]`` (scaled pixels) (``candidate_boxes``), keep the ``pre_nms_top_n`` best of the rest
    (0 = all), NMS (IoU > ``nms_thresh`` suppressed; one ``batched_nms`` call with the image as group), keep the
    ``post_nms_top_n`` best (0 = all). As py-faster-rcnn, the min-size drop comes before the top-N cut,
    so an image gets ``pre_nms_top_n`` real candidates whenever it has them. Boxes are in scaled-image
    pixels. Inputs: ``anchors [M, 4]``, ``scores [N, M]``, ``deltas [N, M, 4]``.
    """
    boxes, valid = candidate_boxes(anchors, deltas, image_sizes, min_sizes)
    return select_proposals(boxes, scores.float(), valid, pre_nms_top_n=pre_nms_top_n,
                            post_nms_top_n=post_nms_top_n, nms_thresh=nms_thresh)


def candidate_boxes(anchors: Tensor, deltas: Tensor, image_sizes: Tensor, min_sizes: Tensor, *,
                    decode: bool = True) -> tuple[Tensor, Tensor]:
    """The proposal layer's candidates before any ranking: ``(boxes [N, M, 4], valid BoolTensor [N, M])``.

    Every anchor (``anchors [M, 4]``) of each image moved by its ``deltas [N, M, 4]`` (``BoxCoder()``, no
    normalisation; ``decode=False``: the anchors themselves, the paper's "no reg" ablation), clipped to the
    image's ``(h, w)`` in ``image_sizes [N, 2]``; ``valid``: at least ``min_sizes [N]`` scaled pixels wide and
    high. Shared by ``generate_proposals`` and the Table 1 ablations (``ablations.AblatedProposer``)."""
    n, m = deltas.shape[:2]
    if decode:
        boxes = BoxCoder().decode(deltas.float().reshape(n * m, 4), anchors.float().repeat(n, 1)).view(n, m, 4)
    else:
        boxes = anchors.float()[None].expand(n, m, 4)
    sizes = image_sizes.to(boxes.device, boxes.dtype)
    boxes = clip_boxes(boxes, sizes[:, 0:1], sizes[:, 1:2])
    valid = small_box_mask(boxes, min_sizes.to(boxes.device, boxes.dtype)[:, None])
    return boxes, valid


def select_proposals(boxes: Tensor, priority: Tensor, valid: Tensor, *, pre_nms_top_n: int,
                     post_nms_top_n: int, nms_thresh: float | None) -> list[tuple[Tensor, Tensor]]:
    """Per image the best boxes by ``priority``: ``[(boxes [R_i, 4], priority [R_i])]``, descending.

    ``boxes [N, M, 4]``, ``priority [N, M]``, ``valid`` BoolTensor ``[N, M]`` (boxes that may be chosen).
    Keeps the ``pre_nms_top_n`` highest valid boxes (0 = all), suppresses with NMS at ``nms_thresh``
    (None: no NMS; one ``batched_nms`` call with the image as group), then keeps ``post_nms_top_n``
    (0 = all). The proposal layer's selection, shared by ``generate_proposals`` and the test-time ablations
    (boxes already made: decoded or anchors; any ranking: objectness or random).

    Host syncs on CUDA: one to compact the valid candidates, those inside ``batched_nms`` (torchvision's
    NMS reads its result back), and one for the per-image counts (``_split_by_image``).
    """
    n, m = priority.shape
    ranked = torch.where(valid, priority.float(), torch.full_like(priority, float("-inf"), dtype=torch.float))
    k = m if pre_nms_top_n <= 0 else min(pre_nms_top_n, m)
    top_priority, top_idx = ranked.topk(k, dim=1, sorted=True)  # [N, k]
    flat = valid.gather(1, top_idx).reshape(n * k).nonzero().squeeze(1)  # a sync: how many are valid
    cand_boxes = boxes.gather(1, top_idx[..., None].expand(n, k, 4)).reshape(n * k, 4)[flat]
    cand_priority = top_priority.reshape(n * k)[flat]
    cand_image = flat // k  # grouped by image, sorted by priority in each
    if nms_thresh is None:
        keep = torch.arange(cand_image.shape[0], device=boxes.device)
    else:
        keep = batched_nms(cand_boxes.float(), cand_priority, cand_image, nms_thresh)
    return [(cand_boxes[sel], cand_priority[sel]) for sel in _split_by_image(keep, cand_image[keep], n,
                                                                             post_nms_top_n)]


def _split_by_image(keep: Tensor, kept_image: Tensor, n: int, top_n: int) -> list[Tensor]:
    """``keep [K]`` (image ``kept_image [K]`` each) split into ``n`` index tensors, the order of ``keep``
    kept within an image and at most ``top_n`` each (0 = all). One stable sort by image, the group
    boundaries by ``searchsorted`` (``bincount`` would read its maximum back on CUDA) and a single
    ``.tolist()`` of starts and counts: the only host sync."""
    image, order = torch.sort(kept_image, stable=True)
    bounds = torch.searchsorted(image, torch.arange(n + 1, dtype=image.dtype, device=image.device))
    counts = bounds[1:] - bounds[:-1]
    if top_n > 0:
        counts = counts.clamp(max=top_n)
    starts, counts = torch.stack((bounds[:-1], counts)).tolist()
    grouped = keep[order]
    return [grouped[start:start + count] for start, count in zip(starts, counts)]
