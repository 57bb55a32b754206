"""Detections from the Fast R-CNN head's outputs (py-faster-rcnn ``test.py::im_detect`` + ``test_net``).

Shapes: N images, R proposals of all images (R_i of image i), K classes without background,
D detections of one image.

Per image and class: softmax scores, class-specific boxes decoded from the proposals, mapped to the
original image (divided by the scale) and clipped to it, kept when ``score > score_thresh`` (strict),
per-class NMS (suppress IoU > ``nms_thresh``, as py-faster-rcnn's default GPU NMS), then the
``detections_per_image`` highest scores over all classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
        return self if score_thresh >= self.score_thresh else replace(self, score_thresh=score_thresh)


def class_boxes(box_deltas: Tensor, proposals: Tensor, box_coder: BoxCoder, num_classes: int) -> Tensor:
    """Class-specific boxes ``Tensor[R, K, 4]`` (foreground classes, scaled-image pixels): ``proposals [R, 4]``
    moved by ``box_deltas [R, 4(K+1)]`` (``box_coder``'s normalisation); the export graph decodes with it too."""
    boxes = box_coder.decode(box_deltas.float(), proposals)
    return boxes.view(proposals.shape[0], num_classes + 1, 4)[:, 1:]


ONE_NMS_CALL_BOXES = 5000  # torchvision's batched_nms runs one NMS up to 20000 coordinates on CUDA, then one per group


def nms_per_image(boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, num_images: int, nms_thresh: float,
                  *, num_classes: int, one_call_max: int | None = None) -> Tensor:
    """Per-class NMS within each image: the kept indices of the candidates ``boxes [C, 4]``, ``scores [C]``,
    ``labels [C]`` (1..K) of ``image [C]`` (ascending), by descending score within each image.

    Up to ``one_call_max`` candidates (None: any number) one ``batched_nms`` over (image, class) groups; beyond,
    one ``batched_nms`` per image over its classes. On CUDA torchvision's ``batched_nms`` turns a large call into
    one NMS per group, each reading its result back: a batch of 32 images and 20 classes made 640 host syncs
    instead of 32. The kept boxes are the same either way (NMS never compares two groups)."""
    if one_call_max is None or boxes.shape[0] <= one_call_max:
        return batched_nms(boxes, scores, image * (num_classes + 1) + labels, nms_thresh)
    keeps, start = [], 0
    for count in torch.bincount(image, minlength=num_images).tolist():
        if count:
            part = slice(start, start + count)
            keeps.append(batched_nms(boxes[part], scores[part], labels[part], nms_thresh) + start)
        start += count
    return torch.cat(keeps)


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
def postprocess_detections(class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                           image_sizes: Tensor, scales: Tensor, *, box_coder: BoxCoder,
                           settings: DetectionSettings = DetectionSettings(),
                           original_sizes: Tensor | None = None) -> list[dict[str, Tensor]]:
    """Final detections of every image, by the rules of ``settings`` (default py-faster-rcnn's: score > 0.05,
    per-class NMS 0.3, at most 100; ``detections_per_image <= 0`` keeps all).

    ``class_logits`` ``Tensor[R, K+1]`` and ``box_deltas`` ``Tensor[R, 4(K+1)]`` (normalised as
    ``box_coder``'s means/stds) belong to ``proposals`` (``proposals[i]``: ``Tensor[R_i, 4]`` in
    scaled-image coordinates, concatenated in image order). ``image_sizes`` ``[N, 2]`` (h, w scaled),
    ``scales`` ``[N]``, ``original_sizes`` ``[N, 2]`` (h, w; default ``image_sizes / scales``).

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
    boxes = class_boxes(box_deltas, props, box_coder, num_classes) / scale[image, None, None]
    boxes = clip_boxes(boxes, limits[image, 0, None], limits[image, 1, None])

    scores = torch.softmax(class_logits.float(), dim=1)[:, 1:]
    row, col = torch.nonzero(scores > settings.score_thresh, as_tuple=True)
    boxes, scores, labels, image = boxes[row, col], scores[row, col], col + 1, image[row]
    one_call = ONE_NMS_CALL_BOXES if device.type == "cuda" else None
    keep = nms_per_image(boxes, scores, labels, image, num_images, settings.nms_thresh, num_classes=num_classes,
                         one_call_max=one_call)
    keep = _top_per_image(keep, image, num_images, settings.detections_per_image)

    per_image = torch.bincount(image[keep], minlength=num_images).tolist()
    # one gather for the batch, then views per image: no device op per image
    parts = (boxes[keep].split(per_image), scores[keep].split(per_image), labels[keep].split(per_image))
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(*parts)]
