"""RoIAlign whose backward on the CPU is two batched matrix products instead of torchvision's scalar loop.

Shapes: N images, C channels, H x W feature map, S RoIs, P x P bins per RoI, g x g samples per bin.

torchvision's CPU ``roi_align`` backward scatters every sample of every bin into the map one channel at a
time: in a training step of the ``tiny`` preset (256 RoIs of 128 channels) it was a third of the step. Its
forward is kept (``torchvision.ops.roi_align``, the values are its own); the backward is the exact
transpose of that forward, written separably: a sample at ``(y, x)`` spreads its gradient bilinearly over
``(y_low | y_high) x (x_low | x_high)``, with weights that are a product of a y-part and an x-part, and a
sample outside ``[-1, H] x [-1, W]`` counts zero, which is again a product. So the gradient of RoI ``s``
is ``Wy[s]^T @ grad[s] @ Wx[s]`` with ``Wy[s]`` ``[P, H]`` the summed y-weights of each bin row (over its
g samples, divided by g x g) and ``Wx[s]`` ``[P, W]`` likewise, then summed into the RoI's image. The sample
positions follow torchvision's kernel (``aligned=True``: a half-pixel offset; float32 arithmetic in its
order; samples below 0 clamped to 0, the last row/column clamped), so the gradients agree with its
backward up to float summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

MAX_ELEMENTS = 48_000_000  # S*C*H*W of the dense per-RoI gradient; above it, torchvision's own backward


def _axis_weights(start: Tensor, size: Tensor, pooled: int, grid: int, length: int) -> Tensor:
    """``[S, P, length]``: per bin along one axis, the bilinear weight of each map position summed over the
    bin's ``grid`` samples (torchvision's ``bilinear_interpolate``; invalid samples weigh 0)."""
    s = start.shape[0]
    bin_size = size / pooled  # [S]
    p = torch.arange(pooled, dtype=start.dtype)[None, :, None]
    i = (torch.arange(grid, dtype=start.dtype) + 0.5)[None, None, :]
    pos = start[:, None, None] + p * bin_size[:, None, None] + i * bin_size[:, None, None] / grid  # [S, P, g]
    valid = (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0.0)
    low = pos.long()  # non-negative: truncation is floor
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    weights = torch.zeros(s, pooled, length, dtype=start.dtype)
    zero = torch.zeros_like(frac)
    weights.scatter_add_(2, low.reshape(s, pooled, -1), torch.where(valid, 1.0 - frac, zero).reshape(s, pooled, -1))
    weights.scatter_add_(2, high.reshape(s, pooled, -1), torch.where(valid, frac, zero).reshape(s, pooled, -1))
    return weights


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, pooled: int, scale: float, grid: int) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.shape, ctx.pooled, ctx.scale, ctx.grid = features.shape, pooled, scale, grid
        ctx.dtype = features.dtype
        return roi_align(features, rois, pooled, scale, grid, aligned=True)

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast("cpu", enabled=False):  # under bf16 autocast the products stay float32
            return _RoIAlign._backward(ctx, grad.float()).to(ctx.dtype), None, None, None, None

    @staticmethod
    def _backward(ctx, grad: Tensor) -> Tensor:
        (rois,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        pooled, grid = ctx.pooled, ctx.grid
        r = rois.to(grad.dtype)
        scale = torch.tensor(ctx.scale, dtype=grad.dtype)
        x1, y1 = r[:, 1] * scale - 0.5, r[:, 2] * scale - 0.5
        x2, y2 = r[:, 3] * scale - 0.5, r[:, 4] * scale - 0.5
        wy = _axis_weights(y1, y2 - y1, pooled, grid, h)  # [S, P, H]
        wx = _axis_weights(x1, x2 - x1, pooled, grid, w)  # [S, P, W]
        s = rois.shape[0]
        g = grad.reshape(s, c * pooled, pooled) @ (wx / (grid * grid))  # [S, C*P, W]
        g = g.reshape(s, c, pooled, w).transpose(1, 2).reshape(s, pooled, c * w)
        g = wy.transpose(1, 2) @ g  # [S, H, C*W]
        out = grad.new_zeros((n, h, c, w))
        out.index_add_(0, rois[:, 0].long(), g.view(s, h, c, w))
        return out.permute(0, 2, 1, 3)


def roi_align_aligned(features: Tensor, rois: Tensor, pooled: int, scale: float, sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align(..., aligned=True)``; on the CPU, with gradients to the features and a fixed
    ``sampling_ratio``, its backward is ``_RoIAlign``'s."""
    fast = (features.device.type == "cpu" and features.requires_grad and torch.is_grad_enabled()
            and sampling_ratio > 0 and features.dtype == torch.float32
            and rois.shape[0] * features.shape[1] * features.shape[2] * features.shape[3] <= MAX_ELEMENTS)
    if not fast:
        return roi_align(features, rois, pooled, scale, sampling_ratio, aligned=True)
    return _RoIAlign.apply(features, rois, pooled, scale, sampling_ratio)
