"""Box arithmetic and the paper's box coder.

Boxes are ``Tensor[N, 4]`` ``x1 y1 x2 y2`` in absolute pixels, 0-based continuous: width is ``x2 - x1``.
py-faster-rcnn's inclusive boxes ``[x1, y1, x2, y2]`` are ours ``[x1, y1, x2 + 1, y2 + 1]``; under that map
its +1 IoU, centres, clipping and min-size test are exactly the plain formulas below.

Shapes: N, M boxes; C classes whose deltas sit side by side (``4*C`` columns).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

_EPS = 1e-6


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box, ``Tensor[N]``; degenerate boxes have area 0."""
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return w * h


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (``[N, 4]``) with every box of ``b`` (``[M, 4]``): ``Tensor[N, M]``.

    Pairs with no overlap, and degenerate boxes, give 0 (never NaN).
    """
    area_a = box_area(a)
    area_b = box_area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=_EPS), torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, height, width) -> Tensor:
    """Clamp x to ``[0, width]`` and y to ``[0, height]``; works on ``[..., 4*C]``.

    ``height``/``width`` may be numbers or tensors broadcastable over the leading dimensions
    (e.g. ``Tensor[N, 1]`` for boxes ``[N, R, 4]``).
    """
    shape = boxes.shape
    b = boxes.reshape(*shape[:-1], shape[-1] // 4, 4)
    if isinstance(width, Tensor):  # shaped like the leading dims: add the (box, coordinate) axes
        width = width.to(boxes.dtype)[..., None, None]
    if isinstance(height, Tensor):
        height = height.to(boxes.dtype)[..., None, None]
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x = torch.minimum(torch.maximum(b[..., 0::2], zero), torch.as_tensor(width, dtype=boxes.dtype,
                                                                         device=boxes.device))
    y = torch.minimum(torch.maximum(b[..., 1::2], zero), torch.as_tensor(height, dtype=boxes.dtype,
                                                                         device=boxes.device))
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1).reshape(shape)


def small_box_mask(boxes: Tensor, min_size) -> Tensor:
    """True where both sides are at least ``min_size`` (a number or a tensor broadcastable to ``[...]``)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w >= min_size) & (h >= min_size)


def flip_boxes(boxes: Tensor, width) -> Tensor:
    """Mirror boxes horizontally in an image ``width`` wide: ``x1' = W - x2``, ``x2' = W - x1``."""
    flipped = boxes.clone()
    flipped[..., 0] = width - boxes[..., 2]
    flipped[..., 2] = width - boxes[..., 0]
    return flipped


@lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``Tensor[len(values)]`` on ``device``, made once (a host-to-device copy is a sync on CUDA); read-only.

    Made outside inference mode, so a tensor first cached by inference can still be saved for backward.
    """
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


class BoxCoder:
    """The paper's parameterisation (Eq. 2), optionally normalised by target means/stds.

    ``t_x = (x - x_a) / w_a``, ``t_y = (y - y_a) / h_a``, ``t_w = log(w / w_a)``, ``t_h = log(h / h_a)``
    with centres ``x = x1 + w/2``; encoded targets are ``(t - mean) / std``. ``decode`` clamps ``t_w, t_h``
    at ``clamp`` before ``exp`` so a wild prediction cannot overflow.
    """

    def __init__(self, *, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0),
                 clamp: float = math.log(1000.0 / 16)) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clamp = clamp

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return _constant(self.means, like.dtype, like.device), _constant(self.stds, like.dtype, like.device)

    def encode(self, reference: Tensor, boxes: Tensor) -> Tensor:
        """Deltas ``Tensor[N, 4]`` that move ``reference[i]`` onto ``boxes[i]``."""
        rw = (reference[:, 2] - reference[:, 0]).clamp(min=_EPS)
        rh = (reference[:, 3] - reference[:, 1]).clamp(min=_EPS)
        rx = reference[:, 0] + 0.5 * rw
        ry = reference[:, 1] + 0.5 * rh
        bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=_EPS)
        bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=_EPS)
        bx = boxes[:, 0] + 0.5 * bw
        by = boxes[:, 1] + 0.5 * bh
        t = torch.stack(((bx - rx) / rw, (by - ry) / rh, torch.log(bw / rw), torch.log(bh / rh)), dim=1)
        mean, std = self._stats(t)
        return (t - mean) / std

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Boxes ``Tensor[N, 4*C]`` from deltas ``Tensor[N, 4*C]`` applied to ``reference [N, 4]``."""
        n = deltas.shape[0]
        d = deltas.reshape(n, deltas.shape[1] // 4, 4)
        reference = reference.to(deltas.dtype)
        mean, std = self._stats(d)
        d = d * std + mean
        w = (reference[:, 2] - reference[:, 0])[:, None]
        h = (reference[:, 3] - reference[:, 1])[:, None]
        cx = reference[:, 0][:, None] + 0.5 * w
        cy = reference[:, 1][:, None] + 0.5 * h
        pcx = d[..., 0] * w + cx
        pcy = d[..., 1] * h + cy
        pw = torch.exp(d[..., 2].clamp(max=self.clamp)) * w
        ph = torch.exp(d[..., 3].clamp(max=self.clamp)) * h
        out = torch.stack((pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph), dim=2)
        return out.reshape(n, deltas.shape[1])
