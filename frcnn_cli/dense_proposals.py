"""The paper's one-stage ablation (Sec. 4.1, "One-Stage Detection vs. Two-Stage Proposal + Detection";
Table 5): Fast R-CNN on **dense sliding windows** instead of proposals, trained and tested on them, emulating
OverFeat. "The 'proposals' are dense sliding windows of 3 scales (128, 256, 512) and 3 aspect ratios (1:1,
1:2, 2:1)" over the conv feature map; the detector regresses and classifies each window.

The windows (``DenseWindows``): the anchor templates of the model's config (``anchors.base_size``,
``anchors.scales``, and ``anchors.ratios`` for ``dense`` or the ratio 1:1 alone for ``dense-square``, 3 scales
x 1 ratio) placed at every cell of the image's ``ceil(h / stride) x ceil(w / stride)`` grid of feature cells
(the cells whose ``stride`` x ``stride`` block starts inside the scaled image; VGG16's conv5_3 map of a 600 x
1000 image: 38 x 63), cell-major and template-fastest as the anchors (``anchors.shift_templates``), clipped to
the image, and those narrower or lower than ``rpn.min_size`` original pixels dropped, as the RPN's. A
600 x 1000 image with the paper's 9 templates gets 38 * 63 * 9 = 21,546 windows (the paper: "~20k").

They depend only on the image's scaled size, not on the batch it is in or on any network output: at test
time ``DenseProposer`` (a ``model.rpn.Proposer`` standing in ``InferenceSettings``' ablation place) computes
them from the image sizes; in training ``DenseProposalSource`` gives each batch image the windows of its own
scaled (and flipped) image, and ``get(index)`` the windows in original pixels at the first training scale
(for the detector's per-class target statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .boxes import clip_boxes, small_box_mask
from .config import Config
from .data.images import compute_scale, resized_size
from .data.manifest import Manifest
from .model.anchors import generate_anchors, shift_templates

DENSE_KINDS = ("dense", "dense-square")  # 3 scales x the config's ratios; 3 scales x 1:1


def is_dense(spec: str | Path | None) -> bool:
    """Whether a ``--proposals`` / ``--test-proposals`` value names the dense windows (not an existing file)."""
    return spec is not None and str(spec) in DENSE_KINDS and not Path(spec).exists()


@dataclass(frozen=True)
class DenseWindows:
    """The dense windows of one kind: ``templates`` ``[A, 4]`` (cell (0, 0)), ``stride`` px between cells,
    windows below ``min_size`` original pixels dropped."""

    kind: str
    templates: Tensor
    stride: int
    min_size: float
    shape: tuple[int, int] = (0, 0)  # (scales, ratios) of the templates

    @classmethod
    def from_config(cls, cfg: Config, kind: str = "dense") -> DenseWindows:
        if kind not in DENSE_KINDS:
            raise ValueError(f"dense window kind must be one of {DENSE_KINDS}, got {kind!r}")
        ratios = cfg.anchors.ratios if kind == "dense" else (1.0,)
        templates = generate_anchors(cfg.anchors.base_size, ratios, cfg.anchors.scales)
        return cls(kind, templates, cfg.anchors.stride, cfg.rpn.min_size, (len(cfg.anchors.scales), len(ratios)))

    def describe(self) -> str:
        scales, ratios = self.shape
        return f"dense sliding windows ({self.kind}: {scales} scales x {ratios} ratios, every {self.stride} px)"

    def windows(self, height: int, width: int, scale: float = 1.0) -> Tensor:
        """``[R, 4]`` float32 windows of a scaled ``height`` x ``width`` image (scaled pixels) whose scale is
        ``scale`` (the min-size filter is in original pixels)."""
        rows, cols = math.ceil(height / self.stride), math.ceil(width / self.stride)
        boxes = shift_templates(self.templates, rows, cols, self.stride)
        boxes = clip_boxes(boxes, float(height), float(width))
        return boxes[small_box_mask(boxes, self.min_size * scale)]


@dataclass(frozen=True)
class DenseProposer:
    """Test-time proposals: every image's dense windows, score 0 (a ``model.rpn.Proposer``; it stands where an
    ablation stands in ``InferenceSettings``)."""

    dense: DenseWindows
    is_default: bool = False

    def proposer(self, settings) -> DenseProposer:
        return self

    def describe(self) -> str:
        return self.dense.describe()

    def __call__(self, anchors: Tensor, cls_logits: Tensor, deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                 *, keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]:
        out = []
        for (h, w), s in zip(image_sizes.tolist(), scales.tolist()):
            boxes = self.dense.windows(int(h), int(w), float(s)).to(deltas.device)
            out.append((boxes, torch.zeros(boxes.shape[0], device=deltas.device)))
        return out


class DenseProposalSource:
    """A detector stage's proposals when they are the dense windows (``train-detector --proposals dense``): what
    a ``ProposalStore`` is to the stage (``get``, ``check_manifest``, ``path``, ``attrs``) and the batches'
    proposals (``source``)."""

    def __init__(self, kind: str, manifest: Manifest, cfg: Config) -> None:
        self.dense = DenseWindows.from_config(cfg, kind)
        self.manifest, self.input = manifest, cfg.input
        self.path = Path(kind)
        self.attrs = {"source": "dense", "kind": kind, "checkpoint": ""}

    def check_manifest(self, manifest: Manifest, manifest_path) -> None:
        """Nothing to check: the windows are made for whatever images come."""

    def get(self, index: int) -> tuple[Tensor, Tensor]:
        """Image ``index``'s windows in original pixels at the first training scale, and zero scores."""
        rec = self.manifest.images[index]
        scale = compute_scale(rec.height, rec.width, self.input.train_scales[0], self.input.max_size)
        h, w = resized_size(rec.height, rec.width, scale)
        boxes = self.dense.windows(h, w, scale) / scale
        return boxes, torch.zeros(boxes.shape[0])

    def source(self, device: torch.device) -> Callable:
        """``proposals_for(batch)``: each image's windows of its own scaled (flipped) size, on ``device``."""
        def proposals_for(batch) -> list[Tensor]:
            return [self.dense.windows(int(h), int(w), float(s)).to(device, non_blocking=True)
                    for (h, w), s in zip(batch.image_sizes.tolist(), batch.scales.tolist())]

        return proposals_for
