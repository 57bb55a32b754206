"""The smooth-L1 loss of Fast R-CNN, with Caffe's ``sigma`` (3 for the RPN, 1 for the detector)."""

from __future__ import annotations

from torch import Tensor


def smooth_l1(x: Tensor, sigma: float) -> Tensor:
    """Elementwise ``0.5 * (sigma * x)**2`` if ``|x| < 1 / sigma**2`` else ``|x| - 0.5 / sigma**2``."""
    s2 = sigma * sigma
    ax = x.abs()
    return (ax < 1.0 / s2).to(x.dtype) * 0.5 * s2 * x * x + (ax >= 1.0 / s2).to(x.dtype) * (ax - 0.5 / s2)
