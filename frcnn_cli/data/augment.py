"""Augmentation of training images, behind ``cfg.input`` switches (on in ``tiny``, off in the paper presets).

- **Scale** (``input.train_scales``): the shorter side an image is shown at. One listed scale: always that one.
  Several: one of them per image, as py-faster-rcnn's multi-scale training; with ``input.scale_jitter`` a
  value drawn uniformly from ``min(train_scales)`` to ``max(train_scales)`` instead (``max_size`` still caps
  the longer side). Boxes (and stored proposals) are multiplied by the image's scale exactly, as at a fixed
  scale; with the jitter on they are then clipped to the rescaled image, which is ``round(side * scale)``
  pixels and may end half a pixel inside a box that touched the border.
- **Photometric jitter** (``input.photometric`` = p > 0): brightness, contrast and saturation, in that order,
  each by a factor drawn from ``[1 - p, 1 + p]`` (torchvision's ``ColorJitter(p, p, p)`` formulas on pixel
  values in ``[0, 255]``, clamped after each), on the rescaled image before normalisation; boxes unchanged.
- **Horizontal flip** (``input.flip``): every image once as it is and once mirrored per epoch (``images.py``).

Every draw is a pure function of ``(seed, epoch, entry)``: a resumed run, and the DataLoader's worker
processes, see exactly the images of an uninterrupted run in one process. Validation and test images are
never augmented. Shapes: G boxes, H x W pixels.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..boxes import clip_boxes
from ..config import InputConfig

_SCALE_STREAM, _COLOUR_STREAM = 1, 2  # separate random streams, so one switch does not move the other's draws
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601)


def training_scale(input_cfg: InputConfig, seed: int, epoch: int, entry: int) -> float:
    """The shorter-side target of training entry ``entry`` in ``epoch`` (see the module docstring)."""
    scales = input_cfg.train_scales
    if len(scales) == 1 or min(scales) == max(scales):
        return scales[0]
    if input_cfg.scale_jitter:
        rng = np.random.default_rng([seed, epoch, entry, _SCALE_STREAM])
        return float(rng.uniform(min(scales), max(scales)))
    rng = np.random.default_rng([seed, epoch, entry])  # the draw multi-scale training always made
    return scales[int(rng.integers(len(scales)))]


def colour_factors(input_cfg: InputConfig, seed: int, epoch: int, entry: int) -> tuple[float, float, float] | None:
    """``(brightness, contrast, saturation)`` factors of an entry, each in ``[1 - p, 1 + p]``; None when off."""
    p = input_cfg.photometric
    if p <= 0:
        return None
    rng = np.random.default_rng([seed, epoch, entry, _COLOUR_STREAM])
    low, high = 1.0 - p, 1.0 + p
    return tuple(float(v) for v in rng.uniform(low, high, size=3))


def _gray(image: Tensor) -> Tensor:
    """``[1, H, W]`` luma of an RGB ``[3, H, W]`` image."""
    weights = image.new_tensor(_LUMA)[:, None, None]
    return (image * weights).sum(0, keepdim=True)


def jitter_colours(image: Tensor, factors: tuple[float, float, float]) -> Tensor:
    """RGB float ``[3, H, W]`` in ``[0, 255]`` with its brightness, contrast and saturation scaled by ``factors``
    (1, 1, 1: unchanged), each result clamped to ``[0, 255]`` (torchvision's ``adjust_*`` on float images)."""
    brightness, contrast, saturation = factors
    out = (image * brightness).clamp_(0, 255)
    mean = _gray(out).mean()
    out = (mean + contrast * (out - mean)).clamp_(0, 255)
    gray = _gray(out)
    return (gray + saturation * (out - gray)).clamp_(0, 255)


def boxes_inside(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes ``[G, 4]`` of a rescaled image of ``size`` (h, w) clipped to it."""
    return clip_boxes(boxes, size[0], size[1]) if boxes.numel() else boxes


def describe(input_cfg: InputConfig, flip: bool | None = None) -> str:
    """The augmentation a config asks for, in words (the training plan's note)."""
    parts = []
    scales = input_cfg.train_scales
    if len(set(scales)) > 1 and input_cfg.scale_jitter:
        parts.append(f"shorter side drawn from {min(scales)}-{max(scales)} px")
    elif len(set(scales)) > 1:
        parts.append(f"shorter side one of {', '.join(str(s) for s in scales)} px")
    if input_cfg.photometric > 0:
        parts.append(f"brightness/contrast/saturation ×[{1 - input_cfg.photometric:g}, {1 + input_cfg.photometric:g}]")
    if input_cfg.flip if flip is None else flip:
        parts.append("horizontal flips")
    return ", ".join(parts) or "none"

