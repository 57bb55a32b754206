"""The whole detector as one traceable graph, image in, detections out: what ``frcnn export`` writes.

Shapes: H x W the input image, h x w the image at the test scale, fh x fw the feature grid, A anchors per
cell, M = fh*fw*A anchors, R proposals, K classes without background, D detections.

``DeployedDetector`` runs on one uint8 RGB image ``[3, H, W]`` of any size what ``Predictor.run`` runs on a
batch: the test-scale resize (``data.images.compute_scale``/``resized_size``, bilinear as
``data.resize``), ``normalize``, zero padding to ``input.size_divisor``, the backbone, the RPN head, the
proposal layer, the RoI head and the detections (``postprocess_detections``). It reuses the model's modules
and the library's functions (``BoxCoder``, ``clip_boxes``, ``small_box_mask``, ``objectness_scores``,
``anchors.shift_templates``, ``normalize``); what the library does with Python numbers read from tensors
(``.tolist()`` splits per image, ``AnchorGrid``'s cache keyed by ints, the Python ``round`` of the scale
rule) has a single-image tensor equivalent here, and ``tests/test_export_graph.py`` compares each with the
library function it stands for, so the two cannot drift.

Every size the graph uses is read from a tensor's shape at run time (``torch._shape_as_tensor``), so a
trace of it (TorchScript, ONNX) works for any H, W. The CPU-only kernels of ``Predictor`` (Winograd convs,
the table RoIPool) are not traced: the export copy is never ``place_model``-d, and ``RoIHead.pool`` takes
torchvision's op while tracing; they give the same values up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from ..boxes import BoxCoder, clip_boxes, small_box_mask
from ..config import InputConfig
from ..data.images import normalize
from ..model.anchors import shift_templates
from ..model.detector import FasterRCNN
from ..model.postprocess import DetectionSettings, class_boxes
from ..model.rpn import ProposalSettings, objectness_scores


def shape_of(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """int64 ``[len(dims)]``: ``x``'s sizes along ``dims``, read at run time in a trace."""
    return torch._shape_as_tensor(x)[list(dims)]


def scale_and_size(original: Tensor, test_scale: int, max_size: int) -> tuple[Tensor, Tensor]:
    """``(scale float64 [], size int64 [2])`` of an image of ``original`` (h, w) int64 ``[2]``: ``compute_scale``
    (shorter side to ``test_scale`` unless the longer would exceed ``max_size``) and ``resized_size``, in
    float64 with round-half-to-even as Python's ``round``."""
    hw = original.to(torch.float64)
    short, long = hw.min(), hw.max()
    scale = hw.new_tensor(float(test_scale)) / short  # a true division, as Python's (x / t is 1/t * x)
    capped = hw.new_tensor(float(max_size)) / long
    scale = torch.where(torch.round(scale * long) > max_size, capped, scale)
    return scale, torch.round(hw * scale).clamp(min=1).to(torch.int64)


def preprocess(image: Tensor, input_cfg: InputConfig) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 ``[3, H, W]`` RGB -> ``(padded [1, 3, h', w'], scale float32 [], size (h, w) int64 [2])``: the
    test-scale image as ``data.images.inference_item`` and ``collate`` make it (bilinear, align_corners=False,
    no antialias, one channel plane at a time as ``data.resize``; normalised; zeros to a multiple of
    ``size_divisor`` below and to the right)."""
    scale, size = scale_and_size(shape_of(image, (1, 2)), input_cfg.test_scale, input_cfg.max_size)
    planes = F.interpolate(image.float()[:, None], size=(size[0], size[1]), mode="bilinear", align_corners=False)
    x = normalize(planes[:, 0], input_cfg)
    divisor = input_cfg.size_divisor
    pad = (-size) % divisor  # (h, w) rows and columns to add
    x = F.pad(x, (0, pad[1], 0, pad[0]))
    return x[None], scale.to(torch.float32), size


def image_proposals(anchors: Tensor, scores: Tensor, deltas: Tensor, size: Tensor, min_size: Tensor,
                    settings: ProposalSettings) -> tuple[Tensor, Tensor]:
    """``rpn.generate_proposals`` of one image: ``(boxes [R, 4], scores [R])``, score-descending.

    ``anchors [M, 4]``, ``scores [M]`` (objectness), ``deltas [M, 4]``, ``size`` (h, w) ``[2]`` of the scaled
    image, ``min_size`` ``[]`` scaled pixels. Decode, clip, drop small boxes, the ``pre_nms_top_n`` best valid
    (0 = all), NMS, the ``post_nms_top_n`` best (0 = all)."""
    boxes = BoxCoder().decode(deltas.float(), anchors.float())
    limits = size.to(boxes.dtype)
    boxes = clip_boxes(boxes, limits[0], limits[1])
    valid = small_box_mask(boxes, min_size)
    ranked = torch.where(valid, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float))
    count = shape_of(ranked, (0,))
    if settings.pre_nms_top_n > 0:
        count = torch.clamp(count, max=settings.pre_nms_top_n)
    top_scores, top_index = ranked.topk(count[0], sorted=True)
    chosen = valid[top_index].nonzero().squeeze(1)
    boxes, top_scores = boxes[top_index][chosen], top_scores[chosen]
    keep = nms(boxes, top_scores, settings.nms_thresh)
    if settings.post_nms_top_n > 0:
        keep = keep[:settings.post_nms_top_n]
    return boxes[keep], top_scores[keep]


def image_detections(class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, scale: Tensor,
                     original: Tensor, *, box_coder: BoxCoder, settings: DetectionSettings,
                     real: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``postprocess_detections`` of one image: ``(boxes [D, 4] original pixels, scores [D], labels [D] in
    0..K-1)``, score-descending.

    ``class_logits [R, K+1]``, ``box_deltas [R, 4(K+1)]``, ``proposals [R, 4]`` scaled pixels, ``scale`` ``[]``,
    ``original`` (H, W) ``[2]``; ``real`` ``[]``: only the first ``real`` rows are proposals (the rest are
    ``DeployedDetector``'s sentinel; None: all). Per-class NMS is one NMS of the boxes shifted apart by class
    (torchvision's coordinate trick, by ``max(H, W) + 1`` pixels per class: the boxes are clipped to the
    image), so that an image without candidates gives empty outputs without reducing an empty tensor."""
    num_classes = class_logits.shape[1] - 1
    boxes = class_boxes(box_deltas, proposals.float(), box_coder, num_classes) / scale
    limits = original.to(torch.float32)
    boxes = clip_boxes(boxes, limits[0], limits[1])
    scores = torch.softmax(class_logits.float(), dim=1)[:, 1:]
    if real is not None:
        rows = torch.arange(shape_of(scores, (0,))[0], device=scores.device)
        scores = torch.where(rows[:, None] < real, scores, torch.zeros_like(scores))
    row, col = torch.nonzero(scores > settings.score_thresh, as_tuple=True)
    boxes, scores = boxes[row, col], scores[row, col]
    offsets = (col + 1).to(boxes.dtype) * (limits.max() + 1.0)
    keep = nms(boxes + offsets[:, None], scores, settings.nms_thresh)
    if settings.detections_per_image > 0:
        keep = keep[:settings.detections_per_image]
    return boxes[keep], scores[keep], col[keep]


class DeployedDetector(nn.Module):
    """``model`` with the test-time settings ``proposals``/``detections`` and its config's input rules as one
    module: ``forward(image uint8 [3, H, W]) -> (boxes [D, 4], scores [D], labels [D] in 0..K-1)``, boxes
    in the input image's pixels (0-based continuous x1 y1 x2 y2). ``model`` is used as given (eval mode, plain
    modules: give a copy that was never ``place_model``-d)."""

    def __init__(self, model: FasterRCNN, *, proposals: ProposalSettings, detections: DetectionSettings) -> None:
        super().__init__()
        self.backbone, self.rpn, self.roi_head = model.backbone, model.rpn, model.roi_head
        self.input_cfg = model.cfg.input
        self.stride = model.anchor_grid.stride
        self.register_buffer("templates", model.anchor_grid.templates.clone(), persistent=False)
        self.box_coder = model.box_coder
        self.proposal_settings = proposals
        self.detection_settings = detections
        self.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, scale, size = preprocess(image, self.input_cfg)
        features = self.backbone(x)
        cls_logits, deltas = self.rpn(features)
        grid = shape_of(features, (2, 3))
        anchors = shift_templates(self.templates, grid[0], grid[1], self.stride)
        min_size = self.proposal_settings.min_size * scale
        proposals, _ = image_proposals(anchors, objectness_scores(cls_logits)[0], deltas[0], size, min_size,
                                       self.proposal_settings)
        # one sentinel RoI after the proposals, whose scores are masked: the RoI head never sees an empty
        # batch (ONNX Runtime's Reshape fusion turns [R, K+1, 4] into [0, -1, 4], which fails when R = 0)
        boxes = torch.cat((proposals, proposals.new_zeros(1, 4)), 0)
        rois = torch.cat((torch.zeros_like(boxes[:, :1]), boxes), 1)
        class_logits, box_deltas = self.roi_head(features, rois)
        return image_detections(class_logits, box_deltas, boxes, scale, shape_of(image, (1, 2)),
                                box_coder=self.box_coder, settings=self.detection_settings,
                                real=shape_of(proposals, (0,))[0])
