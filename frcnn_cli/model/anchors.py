"""Anchor templates (the paper's 3 scales x 3 aspect ratios) and their grid over a feature map.

Shapes: A anchors per cell, H x W feature grid (stride ``stride`` pixels), M = H*W*A anchors of an image.
Anchors are boxes ``x1 y1 x2 y2`` in scaled-image pixels, 0-based continuous (py-faster-rcnn's inclusive
anchor ``[x1, y1, x2, y2]`` is ours ``[x1, y1, x2 + 1, y2 + 1]``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import AnchorConfig

_CACHE_SIZE = 64  # distinct (H, W, device) grids kept; training images give a few dozen sizes


def _mkanchors(ws: Tensor, hs: Tensor, x_ctr: float, y_ctr: float) -> Tensor:
    """py-faster-rcnn's inclusive anchors of widths ``ws`` and heights ``hs`` around one centre."""
    return torch.stack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1),
                        x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)), dim=1)


def generate_anchors(base_size: int = 16, ratios: Sequence[float] = (0.5, 1, 2),
                     scales: Sequence[float] = (8, 16, 32)) -> Tensor:
    """The A = len(ratios)*len(scales) anchor templates of cell (0, 0): ``Tensor[A, 4]`` float32.

    py-faster-rcnn's ``generate_anchors`` step by step (base ``[0, 0, base-1, base-1]``; per ratio
    ``ws = round(sqrt(base^2 / ratio))``, ``hs = round(ws * ratio)`` with numpy's half-to-even rounding;
    then ``ws * scale``, ``hs * scale`` as floats, so non-integer scales work), computed in float64 and
    converted to our convention (+1 on x2, y2). Ratio-major, scale-minor: row ``a = i_ratio*S + i_scale``.
    Default row 0 is ``[-84, -40, 100, 56]`` (184 x 96).
    """
    f64 = torch.float64
    w = h = float(base_size)
    x_ctr = y_ctr = 0.5 * (w - 1)
    ratio_t = torch.tensor([float(r) for r in ratios], dtype=f64)
    scale_t = torch.tensor([float(s) for s in scales], dtype=f64)
    ws = torch.round(torch.sqrt(w * h / ratio_t))
    hs = torch.round(ws * ratio_t)
    all_ws = (ws[:, None] * scale_t[None, :]).reshape(-1)
    all_hs = (hs[:, None] * scale_t[None, :]).reshape(-1)
    pfr = _mkanchors(all_ws, all_hs, x_ctr, y_ctr)
    return (pfr + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=f64)).to(torch.float32)


def shift_templates(templates: Tensor, height, width, stride: int) -> Tensor:
    """``Tensor[height*width*A, 4]``: ``templates [A, 4]`` shifted to every cell of a ``height`` x ``width`` grid
    (flat index ``(h*W + w)*A + a``). ``height``/``width`` are ints or 0-dim tensors (a traced graph's sizes,
    ``frcnn_cli.export``)."""
    device = templates.device
    shift_x = torch.arange(width, dtype=torch.float32, device=device) * stride
    shift_y = torch.arange(height, dtype=torch.float32, device=device) * stride
    sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W]
    shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    return (shifts + templates[None]).reshape(-1, 4)


class AnchorGrid:
    """All anchors of an H x W feature map: the templates shifted by ``stride`` pixels per cell.

    ``grid(H, W, device)`` is ``Tensor[H*W*A, 4]`` with flat index ``(h*W + w)*A + a`` (anchor fastest,
    then column, then row), as py-faster-rcnn's anchor-target and proposal layers; cell (h, w) is shifted by
    ``(w*stride, h*stride)``. Grids are cached per (H, W, device); callers must not modify them in place.
    """

    def __init__(self, *, base_size: int, ratios: Sequence[float], scales: Sequence[float],
                 stride: int) -> None:
        self.base_size = int(base_size)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)
        self.stride = int(stride)
        self.templates = generate_anchors(self.base_size, self.ratios, self.scales)
        self.num_anchors = int(self.templates.shape[0])
        self._cache: OrderedDict[tuple[int, int, torch.device], Tensor] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: AnchorConfig) -> AnchorGrid:
        """The grid of a config's ``anchors`` section."""
        return cls(base_size=cfg.base_size, ratios=cfg.ratios, scales=cfg.scales, stride=cfg.stride)

    def grid(self, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
        """``Tensor[height*width*A, 4]`` float32: the anchors of a ``height`` x ``width`` feature map."""
        device = torch.device(device if device is not None else "cpu")
        key = (int(height), int(width), device)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        anchors = shift_templates(self.templates.to(device), key[0], key[1], self.stride)
        self._cache[key] = anchors
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return anchors

    def __repr__(self) -> str:
        return (f"AnchorGrid(base_size={self.base_size}, ratios={self.ratios}, scales={self.scales}, "
                f"stride={self.stride})")
