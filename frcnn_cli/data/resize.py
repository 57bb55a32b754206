"""Bilinear resizing of decoded uint8 images to float32, as ``torch.nn.functional.interpolate(bilinear,
align_corners=False, antialias=False)`` of ``image.float()`` (the policy: ``frcnn_cli.data.images``).

Two things differ from calling ``interpolate`` on ``image.float()[None]``:

- The channels go to ATen as three 1-channel planes. With ``[1, 3, H, W]`` ATen picks its channels-last
  kernel when it runs on one thread (a DataLoader worker) and its generic kernel otherwise, and the two
  differ by up to 1e-2 of 255; the planes always take the generic kernel (outputs of ``h + w <= 128`` take
  the channels-last one on any thread count), so a worker and the main process give the same values.
- An image shrunk to less than half its height never exists as a whole float copy (a 6000x4000 photo:
  290 MB): ``_resize_by_rows`` converts the two source rows of each output row, a band at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_ROW_BAND_BYTES = 8 << 20  # float source rows converted at a time by _resize_by_rows


def _bilinear(planes: Tensor, size: tuple[int, int]) -> Tensor:
    """Float ``[P, H, W]`` -> ``[P, h, w]``; 1-channel planes: ATen's kernel does not depend on the threads."""
    return F.interpolate(planes[:, None], size=size, mode="bilinear", align_corners=False, antialias=False)[:, 0]


def _linear_taps(in_size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (first, second) and the second's weight of each output position along one axis,
    computed in float32 as ATen's bilinear kernel does (``align_corners=False``)."""
    scale = torch.tensor(float(in_size)) / out_size
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    first = src.floor().long().clamp_(max=in_size - 1)
    second = torch.where(first < in_size - 1, first + 1, first)
    return first, second, (src - first).clamp_(0, 1)


def _resize_by_rows(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``_bilinear(image.float(), size)`` converting only the two source rows of each output row to float,
    ``_ROW_BAND_BYTES`` of them at a time. Each pair of rows is resized across by ``_bilinear`` (its height
    kept, which is exact), then mixed with the row weights as ATen's kernel computes ``t0 * w0 + t1 * w1``
    with the compiler's FMA: ``t1 * w1`` rounded, ``t0 * w0`` exact (in float64), one rounding of the sum.
    The values equal ``_bilinear``'s to the last bit on the development machine (the tests check one ulp),
    and within one float32 ulp where the kernel is compiled without FMA."""
    height, width = image.shape[-2:]
    first, second, weight = _linear_taps(height, size[0])
    out = torch.empty((3, *size))
    band = max(1, _ROW_BAND_BYTES // (24 * width))
    for start in range(0, size[0], band):
        rows = slice(start, start + band)
        pairs = torch.cat([image.index_select(1, first[rows]), image.index_select(1, second[rows])]).float()
        lines = _bilinear(pairs, (pairs.shape[1], size[1]))
        w = weight[rows, None]
        out[:, rows] = lines[:3].double() * (1 - w).double() + (lines[3:] * w).double()
    return out


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 ``[3, H, W]`` -> float32 ``[3, h, w]``, bilinear (module docstring): shrinking to less than half
    the height (and at least 128 columns, where ATen keeps one kernel) goes row by row, in little memory."""
    height, width = image.shape[-2:]
    if size == (height, width):
        return image.float()
    if height > 2 * size[0] and size[1] >= 128:
        return _resize_by_rows(image, size)
    return _bilinear(image.float(), size)
