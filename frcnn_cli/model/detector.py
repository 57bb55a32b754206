"""Faster R-CNN: a backbone, an RPN head and a Fast R-CNN head as three named parts.

Shapes: N images, H×W padded input, h×w feature grid, C feature channels, A anchors per cell,
M = h*w*A anchors, R_i proposals of image i, G_i gt boxes of image i, S RoIs, K classes without
background.

The parts are ``backbone`` (the shared convs), ``rpn`` (``RPNHead``) and ``roi_head`` (``RoIHead``, which
holds the backbone's ``head_top``: fc6/fc7 or res5); the model's state dict keys are ``backbone.*``,
``rpn.*`` and ``roi_head.*``, and checkpoints store each part apart. ``forward`` computes what it is
asked for and returns it in a ``ForwardOutput``; losses (``losses``) and detections (``detect``) are
separate, so a validation loss and detections come from one forward in eval mode.

``forward`` is the only forward pass there is: training, inference, the proposal dumps, the paper's Table 1
ablations and ``frcnn bench`` all call it. What it cannot know by itself is handed in as a value: the
proposal strategy (``proposer``: ``rpn.RPNProposer`` with training, test or dump settings, or an ablation)
and the detection rules (``detect(settings=…)``). The model never reads a test-time number from its config.

Boxes (targets, proposals, rois) are in scaled-image pixels, 0-based continuous (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..boxes import BoxCoder
from ..config import Config
from ..data.targets import Targets
from ..errors import ConfigError
from .anchors import AnchorGrid
from .backbones import build_backbone
from .losses import fast_rcnn_losses, rpn_losses
from .postprocess import DetectionSettings, postprocess_detections
from .roi_head import RoIHead
from .roi_targets import label_and_sample_rois
from .rpn import Proposer, RPNHead
from .rpn_targets import anchor_targets


@dataclass
class ForwardOutput:
    """Everything one forward computed; a field is None where it was not computed.

    ``features`` ``[N, C, h, w]``; ``anchors`` ``[M, 4]``; ``rpn_cls_logits`` ``[N, M, 1|2]``;
    ``rpn_deltas`` ``[N, M, 4]``; ``proposals[i]`` ``[R_i, 4]`` (scaled-image pixels, from the RPN or
    given) and ``proposal_scores[i]`` ``[R_i]`` (None for given proposals); ``rois`` ``[S, 5]`` (image
    index, box; grouped by image); ``roi_labels`` ``LongTensor[S]`` and ``roi_targets`` ``[S, 4]`` when
    the RoIs were labelled; ``class_logits`` ``[S, K+1]``; ``box_deltas`` ``[S, 4(K+1)]``.
    """

    features: Tensor | None = None
    anchors: Tensor | None = None
    rpn_cls_logits: Tensor | None = None
    rpn_deltas: Tensor | None = None
    proposals: list[Tensor] | None = None
    proposal_scores: list[Tensor] | None = None
    rois: Tensor | None = None
    roi_labels: Tensor | None = None
    roi_targets: Tensor | None = None
    class_logits: Tensor | None = None
    box_deltas: Tensor | None = None


def _rois_from_proposals(proposals: list[Tensor]) -> Tensor:
    """``Tensor[S, 5]``: every proposal with its image index in front."""
    rows = [torch.cat((torch.full_like(p[:, :1], float(i)), p), 1) for i, p in enumerate(proposals)]
    return torch.cat(rows, 0)


def _prefix_match(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


class FasterRCNN(nn.Module):
    """The whole detector, built from a ``Config`` and the class names (``classes[k-1]`` is label k)."""

    part_names = ("backbone", "rpn", "roi_head")

    def __init__(self, cfg: Config, classes: list[str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.classes = list(classes)
        parts = build_backbone(cfg.backbone)
        if parts.stride != cfg.anchors.stride:
            raise ConfigError(f"config key 'anchors.stride' is {cfg.anchors.stride} but the {cfg.backbone} "
                              f"backbone has stride {parts.stride}; set anchors.stride={parts.stride}")
        self.frozen_prefixes = parts.frozen_prefixes
        self.backbone_parts = parts  # a plain dataclass: its modules are registered below, once
        self.anchor_grid = AnchorGrid.from_config(cfg.anchors)
        self.box_coder = BoxCoder(means=cfg.roi_head.box_target_means, stds=cfg.roi_head.box_target_stds)
        self.backbone = parts.shared
        self.rpn = RPNHead(parts.out_channels, cfg.rpn.conv_channels, self.anchor_grid.num_anchors,
                           cfg.rpn.objectness)
        self.roi_head = RoIHead(head_top=parts.head_top, in_channels=parts.out_channels,
                                head_dim=parts.head_dim, num_classes=len(self.classes),
                                pool_size=parts.pool_size, pooler=cfg.roi_head.pooler,
                                spatial_scale=1.0 / parts.stride, sampling_ratio=cfg.roi_head.sampling_ratio)

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (without background)."""
        return len(self.classes)

    # ----------------------------------------------------------------------------------------------
    # forward

    def forward(self, images: Tensor, image_sizes: Tensor, scales: Tensor, *, targets: Targets | None = None,
                proposals: list[Tensor] | None = None, run_rpn: bool = True, run_roi_head: bool = True,
                proposer: Proposer | None = None, image_keys: Sequence[int] | None = None,
                sample_rois: bool | None = None) -> ForwardOutput:
        """Run the parts asked for on ``images`` ``[N, 3, H, W]``.

        ``image_sizes`` ``LongTensor[N, 2]``: (h, w) of each scaled image inside the padded batch;
        ``scales`` ``[N]``: the scale of each. The RPN (``run_rpn``) gives objectness and deltas for every
        anchor; ``proposer`` (``rpn.Proposer``) turns them into proposals without autograd, unless
        ``proposals`` (``[R_i, 4]`` scaled pixels, e.g. read from a proposal file) are given. ``image_keys``
        (manifest indices) go to the proposer (the random ablation seeds each image's draw with its key).
        With ``run_roi_head`` the RoIs are: with ``targets`` and ``sample_rois`` (default ``self.training``)
        a labelled random minibatch; with ``targets`` and not ``sample_rois`` every proposal, labelled (no gt
        boxes added: the same RoIs as without targets, so ``detect`` works on the output); without
        ``targets`` every proposal.
        """
        out = ForwardOutput(features=self.backbone(images))
        if run_rpn:
            self._run_rpn(out, image_sizes, scales, proposer if proposals is None else None, image_keys)
        if proposals is not None:
            out.proposals = [p.to(device=images.device, dtype=torch.float32) for p in proposals]
        if not run_roi_head:
            return out
        if out.proposals is None:
            raise ValueError("the RoI head needs proposals: give proposals=…, or run_rpn=True with a proposer")
        self._select_rois(out, targets, self.training if sample_rois is None else sample_rois)
        out.class_logits, out.box_deltas = self.roi_head(out.features, out.rois)
        return out

    def _run_rpn(self, out: ForwardOutput, image_sizes: Tensor, scales: Tensor, proposer: Proposer | None,
                 image_keys: Sequence[int] | None) -> None:
        h, w = out.features.shape[-2:]
        out.anchors = self.anchor_grid.grid(h, w, out.features.device)
        out.rpn_cls_logits, out.rpn_deltas = self.rpn(out.features)
        if proposer is None:
            return
        with torch.no_grad():
            found = proposer(out.anchors, out.rpn_cls_logits.detach(), out.rpn_deltas.detach(), image_sizes, scales,
                             keys=image_keys)
        out.proposals = [boxes.float() for boxes, _ in found]
        out.proposal_scores = [s for _, s in found]

    def _select_rois(self, out: ForwardOutput, targets: Targets | None, sample: bool) -> None:
        if targets is None:
            out.rois = _rois_from_proposals(out.proposals)
            return
        cfg = self.cfg.roi_head
        if not sample:
            # label every proposal and nothing else, so the RoIs are exactly the test-time ones
            cfg = replace(cfg, add_gt_as_proposals=False, bg_iou_lo=0.0,
                          bg_iou_hi=max(cfg.bg_iou_hi, cfg.fg_iou))
        out.rois, out.roi_labels, out.roi_targets = label_and_sample_rois(
            out.proposals, targets.boxes, targets.labels, cfg=cfg, sample=sample)

    # ----------------------------------------------------------------------------------------------
    # losses and detections

    def losses(self, out: ForwardOutput, targets: Targets, image_sizes: Tensor) -> dict[str, Tensor]:
        """The losses ``out`` allows: ``loss_rpn_cls``, ``loss_rpn_box`` when the RPN ran; ``loss_cls``,
        ``loss_box`` when the RoI head ran on labelled RoIs."""
        result: dict[str, Tensor] = {}
        if out.rpn_cls_logits is not None:
            labels, deltas = anchor_targets(out.anchors, targets.boxes, image_sizes, cfg=self.cfg.rpn)
            result.update(rpn_losses(out.rpn_cls_logits, out.rpn_deltas, labels, deltas, cfg=self.cfg.rpn,
                                     anchors_per_cell=self.anchor_grid.num_anchors))
        if out.class_logits is not None and out.roi_labels is not None:
            result.update(fast_rcnn_losses(out.class_logits, out.box_deltas, out.roi_labels, out.roi_targets,
                                           sigma=self.cfg.roi_head.box_loss_sigma))
        return result

    def detect(self, out: ForwardOutput, image_sizes: Tensor, scales: Tensor,
               original_sizes: Tensor | None = None, *, settings: DetectionSettings) -> list[dict[str, Tensor]]:
        """Detections per image (``{"boxes" [D, 4] original pixels, "scores" [D], "labels" [D] in 1..K}``)
        from ``out.rois`` and the head outputs, with the threshold, NMS and cap of ``settings``
        (``DetectionSettings.from_config(cfg.roi_head)`` for the config's own)."""
        if out.class_logits is None:
            raise ValueError("detect needs the RoI head's outputs: run forward with run_roi_head=True")
        num_images = image_sizes.shape[0]
        counts = torch.bincount(out.rois[:, 0].long(), minlength=num_images).tolist()
        proposals = list(torch.split(out.rois[:, 1:], counts))  # rois are grouped by image
        return postprocess_detections(out.class_logits, out.box_deltas, proposals, image_sizes, scales,
                                      box_coder=self.box_coder, settings=settings, original_sizes=original_sizes)

    # ----------------------------------------------------------------------------------------------
    # freezing

    def _select(self, parts_or_prefixes: str | Iterable[str]) -> list[nn.Parameter]:
        wanted = [parts_or_prefixes] if isinstance(parts_or_prefixes, str) else list(parts_or_prefixes)
        named = list(self.named_parameters())
        chosen: list[nn.Parameter] = []
        for prefix in wanted:
            hits = [p for name, p in named if _prefix_match(name, prefix)]
            if not hits and prefix not in self.part_names:
                raise ValueError(f"no parameter of the model starts with {prefix!r}; "
                                 f"parts are {self.part_names}")
            chosen += hits
        return chosen

    def freeze(self, parts_or_prefixes: str | Iterable[str]) -> None:
        """Stop training a part ("backbone", "rpn", "roi_head") or parameters under a name prefix
        (e.g. "roi_head.head_top"). Frozen parameters get no gradient, so SGD leaves them untouched."""
        for p in self._select(parts_or_prefixes):
            p.requires_grad_(False)

    def unfreeze(self, parts_or_prefixes: str | Iterable[str]) -> None:
        """Train again what ``freeze`` froze (the paper's never-trained layers stay as the caller sets)."""
        for p in self._select(parts_or_prefixes):
            p.requires_grad_(True)

    def apply_paper_freezing(self) -> None:
        """Freeze the backbone layers the paper never trains (VGG16 conv1_x, conv2_x; ResNet conv1, layer1;
        BatchNorm of ResNet is frozen by construction). Call after any ``unfreeze("backbone")``."""
        for name, param in self.backbone.named_parameters():
            if name.startswith(self.frozen_prefixes):  # each prefix ends with "."
                param.requires_grad_(False)
