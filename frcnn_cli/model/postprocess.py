"""Detections from the Fast R-CNN head's outputs (py-faster-rcnn ``test.py::im_detect`` + ``test_net``).

Shapes: N images, R proposals of all images (R_i of image i), K classes without background,
D detections of one image.

Per image and class: softmax scores, class-specific boxes decoded from the proposals, mapped to the
original image (divided by the scale) and clipped to it, kept when ``score > score_thresh`` (strict),
per-class NMS (suppress IoU > ``nms_thresh``, as py-faster-rcnn's default GPU NMS), then the
``detections_per_image`` highest scores over all classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ..boxes import BoxCoder, clip_boxes
from ..config import RoIHeadConfig


@dataclass(frozen=True)
class DetectionSettings:
    """The test-time rules of ``postprocess_detections``: keep ``score > score_thresh``, per-class NMS at
    ``nms_thresh``, at most ``detections_per_image`` (0 = all)."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.3
    detections_per_image: int = 100

    @classmethod
    def from_config(cls, roi_head: RoIHeadConfig) -> DetectionSettings:
        """The settings a config's ``roi_head`` section holds (py-faster-rcnn's 0.05, 0.3, 100)."""
        return cls(score_thresh=roi_head.score_thresh, nms_thresh=roi_head.nms_thresh,
                   detections_per_image=roi_head.detections_per_image)

    def with_score_floor(self, score_thresh: float) -> DetectionSettings:
        """These settings with the threshold lowered to ``score_thresh`` (never raised)."""
        return self if score_thresh >= self.score_thresh else DetectionSettings(
            score_thresh, self.nms_thresh, self.detections_per_image)


def _class_boxes(box_deltas: Tensor | None, proposals: Tensor, box_coder: BoxCoder, num_classes: int,
                 no_regression: bool) -> Tensor:
    """Foreground boxes ``Tensor[R, K, 4]`` in scaled-image coordinates."""
    if no_regression:
        return proposals[:, None, :].expand(-1, num_classes, 4)
    boxes = box_coder.decode(box_deltas.float(), proposals)
    return boxes.view(proposals.shape[0], num_classes + 1, 4)[:, 1:]


def _top_per_image(keep: Tensor, image: Tensor, num_images: int, limit: int) -> Tensor:
    """The first ``limit`` of ``keep`` (sorted by score) in each image, grouped by image, score-descending."""
    keep = keep[torch.argsort(image[keep], stable=True)]
    if limit <= 0:
        return keep
    counts = torch.bincount(image[keep], minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.shape[0], device=keep.device) - starts[image[keep]]
    return keep[rank < limit]


@torch.no_grad()
def postprocess_detections(class_logits: Tensor, box_deltas: Tensor | None, proposals: list[Tensor],
                           image_sizes: Tensor, scales: Tensor, *, box_coder: BoxCoder,
                           score_thresh: float = 0.05, nms_thresh: float = 0.3,
                           detections_per_image: int = 100, original_sizes: Tensor | None = None,
                           no_regression: bool = False) -> list[dict[str, Tensor]]:
    """Final detections of every image.

    ``class_logits`` ``Tensor[R, K+1]`` and ``box_deltas`` ``Tensor[R, 4(K+1)]`` (normalised as
    ``box_coder``'s means/stds) belong to ``proposals`` (``proposals[i]``: ``Tensor[R_i, 4]`` in
    scaled-image coordinates, concatenated in image order). ``image_sizes`` ``[N, 2]`` (h, w scaled),
    ``scales`` ``[N]``, ``original_sizes`` ``[N, 2]`` (h, w; default ``image_sizes / scales``).
    ``no_regression=True`` scores the proposals themselves (the paper's Table 1 ablation; ``box_deltas``
    may then be None). ``detections_per_image <= 0`` keeps all.

    Returns per image ``{"boxes": Tensor[D, 4] (original pixels), "scores": Tensor[D],
    "labels": LongTensor[D] in 1..K}``, sorted by score descending.
    """
    num_images = len(proposals)
    num_classes = class_logits.shape[1] - 1
    device = class_logits.device
    props = torch.cat(proposals, 0).to(device=device, dtype=torch.float32)
    counts = torch.tensor([p.shape[0] for p in proposals], device=device)
    image = torch.repeat_interleave(torch.arange(num_images, device=device), counts)

    scale = scales.to(device=device, dtype=torch.float32)
    if original_sizes is None:
        limits = image_sizes.to(device=device, dtype=torch.float32) / scale[:, None]
    else:
        limits = original_sizes.to(device=device, dtype=torch.float32)
    boxes = _class_boxes(box_deltas, props, box_coder, num_classes, no_regression) / scale[image, None, None]
    boxes = clip_boxes(boxes, limits[image, 0, None], limits[image, 1, None])

    scores = torch.softmax(class_logits.float(), dim=1)[:, 1:]
    row, col = torch.nonzero(scores > score_thresh, as_tuple=True)
    boxes, scores, labels, image = boxes[row, col], scores[row, col], col + 1, image[row]
    keep = batched_nms(boxes, scores, image * (num_classes + 1) + labels, nms_thresh)
    keep = _top_per_image(keep, image, num_images, detections_per_image)

    per_image = torch.bincount(image[keep], minlength=num_images).tolist()
    # one gather for the batch, then views per image: no device op per image
    parts = (boxes[keep].split(per_image), scores[keep].split(per_image), labels[keep].split(per_image))
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(*parts)]
