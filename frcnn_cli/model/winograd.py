"""Winograd convolution F(m×m, 3×3) for the CPU inference path (Lavin & Gray, *Fast Algorithms for
Convolutional Neural Networks*, 2016).

Shapes: N images, C input and K output channels, H x W map, m x m output tile, a = m + 2 input tile,
T = ceil(H/m) * ceil(W/m) tiles per image.

A 3×3 convolution (stride 1, padding 1) of each a×a input tile ``d`` with a kernel ``g`` is
``Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A``: the kernel transform ``U = G g Gᵀ`` is computed once (in float64), the
input transform ``V = Bᵀ d B`` and the output transform are a few additions per element, and the
channel sums become a² matrix products ``[T, C] @ [C, K]``. F(4×4, 3×3) needs 36 products per 16
outputs where the direct convolution needs 144: 4× fewer multiply-adds. The transforms read and write
memory, so the gain needs enough channels (VGG16's conv3–conv5 and the RPN conv on a 2-core Zen 3:
each 0.4–0.7× the time of oneDNN's direct convolution; conv1/conv2 are slower this way).

The result equals the direct convolution up to float rounding: measured against float64, the relative
error of F(4×4) is about 1e-5 of the output's range (the direct fp32 convolution's about 1e-6; cuDNN
picks Winograd kernels for fp32 convolutions on GPUs, with TF32 about 1e-3). F(2×2, 3×3) is as exact as
the direct convolution. ``WinogradConv2d`` is an ``nn.Conv2d`` (same parameters, same state-dict keys)
that takes this path for float32 CPU tensors without autograd and the ordinary one otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (Bᵀ, G, Aᵀ) per output tile size m (Lavin & Gray, Sec. 4.1 and 4.2)
_TRANSFORMS: dict[int, tuple[list[list[float]], list[list[float]], list[list[float]]]] = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}

MIN_CHANNELS = 128  # below this (input or output) the transforms cost more than the products save
MIN_PIXELS = 256  # smaller maps (e.g. 12x16) run the direct convolution: too few tiles per product


def kernel_transform(weight: Tensor, tile: int) -> Tensor:
    """``U [a*a, C, K]`` for ``weight [K, C, 3, 3]``: ``G g Gᵀ`` in float64, rounded once to float32.

    Row ``p = iw * a + ih`` holds position ``(ih, iw)`` of the a×a transformed kernel (the order of
    ``_input_transform``'s output)."""
    g = torch.tensor(_TRANSFORMS[tile][1], dtype=torch.float64, device=weight.device)
    u = torch.einsum("ir,kcrs,js->jick", g, weight.detach().double(), g)
    a = tile + 2
    return u.reshape(a * a, weight.shape[1], weight.shape[0]).float().contiguous()


def _combine(out: Tensor, coefficients: list[float], terms: list[Tensor]) -> None:
    """``out = Σ coefficients[j] * terms[j]`` (in place, zero coefficients skipped): one fused add per
    pair with a unit coefficient first, then ``add_``."""
    pairs = [(c, t) for c, t in zip(coefficients, terms) if c != 0]
    unit = next((i for i, (c, _) in enumerate(pairs) if c == 1), None)
    if unit is None:
        torch.mul(pairs[0][1], pairs[0][0], out=out)
        rest = pairs[1:]
    elif len(pairs) > 1:
        first = pairs.pop(unit)[1]
        c, t = pairs.pop(0)
        torch.add(first, t, alpha=c, out=out)
        rest = pairs
    else:
        out.copy_(pairs[0][1])
        rest = []
    for c, t in rest:
        out.add_(t, alpha=c)


def _input_transform(slab: Tensor, tile: int, tiles_w: int, v: Tensor) -> None:
    """``v [a, a, R, tiles_w, C]`` = ``Bᵀ d B`` of every tile ``d`` of ``slab [R*m + 2, W', C]`` (a band of
    R tile rows, zero-padded); ``v[iw, ih]`` is position ``(ih, iw)``."""
    bt = _TRANSFORMS[tile][0]
    a, rows_out = tile + 2, v.shape[2]
    rows = [slab[j:j + tile * rows_out:tile] for j in range(a)]  # [R, W', C] each
    along_h = slab.new_empty(a, rows_out, slab.shape[1], slab.shape[2])
    for i in range(a):
        _combine(along_h[i], bt[i], rows)
    cols = [along_h[:, :, j:j + tile * tiles_w:tile] for j in range(a)]  # [a, R, tiles_w, C] each
    for i in range(a):
        _combine(v[i], bt[i], cols)


def _output_transform(products: Tensor, tile: int, out: Tensor) -> None:
    """``out [R, m, tiles_w, m, K]`` = ``Aᵀ M A`` of ``products [a, a, R, tiles_w, K]``."""
    at = _TRANSFORMS[tile][2]
    a = tile + 2
    along_w = products.new_empty(tile, a, *products.shape[2:])
    for j in range(tile):
        _combine(along_w[j], at[j], list(products))
    for jh in range(tile):
        for jw in range(tile):
            _combine(out[:, jh, :, jw], at[jh], list(along_w[jw]))


def _band_rows(tiles_w: int, channels: int) -> int:
    """Tile rows per band: matrix products of at least 256 rows, and about 32 K floats of input per tile
    position (the band's temporaries, ~5 MB, stay in cache). Tuned on a Zen 3 core: 0.34–0.6× the
    direct convolution's time for 128–512 channels, where whole-image temporaries were 0.5–1.9×."""
    return max(-(-256 // tiles_w), (1 << 15) // max(1, tiles_w * channels), 1)


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None, tile: int) -> Tensor:
    """The 3×3, stride-1, padding-1 convolution of ``x [N, C, H, W]`` with the transformed kernel
    ``u [a*a, C, K]`` (``kernel_transform``) plus ``bias [K]``: ``[N, K, H, W]`` in channels-last layout.

    Bands of tile rows, one at a time: the temporaries stay small (in cache, reused by the allocator)."""
    n, c, h, w = x.shape
    a, k = tile + 2, u.shape[2]
    tiles_h, tiles_w = -(-h // tile), -(-w // tile)
    band = min(_band_rows(tiles_w, max(c, k)), tiles_h)
    out = x.new_empty(n, h, w, k)
    slab = x.new_empty(band * tile + 2, tiles_w * tile + 2, c)
    v = x.new_empty(a, a, band, tiles_w, c)
    products = x.new_empty(a * a, band * tiles_w, k)
    tiles = x.new_empty(band, tile, tiles_w, tile, k)
    for i, image in enumerate(x.permute(0, 2, 3, 1)):
        for r0 in range(0, tiles_h, band):
            rows = min(band, tiles_h - r0)
            y0, y1 = r0 * tile - 1, min((r0 + rows) * tile + 1, h)  # image rows of the slab
            slab.zero_()
            slab[max(0, -y0):y1 - y0, 1:w + 1] = image[max(y0, 0):y1]
            v_band = v[:, :, :rows]
            _input_transform(slab[:rows * tile + 2], tile, tiles_w, v_band)
            vm = v_band.reshape(a * a, rows * tiles_w, c)
            pm = products[:, :rows * tiles_w]
            for p in range(a * a):
                torch.mm(vm[p], u[p], out=pm[p])
            _output_transform(pm.view(a, a, rows, tiles_w, k), tile, tiles[:rows])
            valid = min(rows * tile, h - r0 * tile)
            out[i, r0 * tile:r0 * tile + valid] = tiles[:rows].view(rows * tile, tiles_w * tile, k)[:valid, :w]
    if bias is not None:
        out.add_(bias)
    return out.permute(0, 3, 1, 2)


class WinogradConv2d(nn.Conv2d):
    """A 3×3, stride-1, padding-1 ``nn.Conv2d`` that runs float32 CPU inference as Winograd F(m×m, 3×3).

    Same parameters and state-dict keys as the convolution it replaces; with autograd, on other devices
    or dtypes it is that convolution. The transformed kernel is cached and recomputed when the weight
    changes (in-place updates such as ``load_state_dict`` bump the tensor's version; ``.to()`` gives it
    new storage)."""

    def __init__(self, in_channels: int, out_channels: int, tile: int = 4) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.tile = tile
        self._cache: tuple[tuple, Tensor] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, tile: int = 4) -> WinogradConv2d:
        new = cls(conv.in_channels, conv.out_channels, tile)
        new.weight, new.bias = conv.weight, conv.bias  # shared, not copied
        return new

    def _transformed(self) -> Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, kernel_transform(self.weight, self.tile))
        return self._cache[1]

    def forward(self, x: Tensor) -> Tensor:
        fast = (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.shape[-2] * x.shape[-1] >= MIN_PIXELS
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)))
        if not fast:
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return winograd_conv3x3(x, self._transformed(), self.bias, self.tile)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", winograd F({self.tile}x{self.tile}, 3x3)"


def eligible(conv: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """A plain 3×3 convolution (stride 1, padding 1, no dilation or groups) with enough channels."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and min(conv.in_channels, conv.out_channels) >= min_channels)


def use_winograd(model: nn.Module, tile: int = 4, min_channels: int = MIN_CHANNELS) -> list[str]:
    """Replace every eligible convolution of ``model`` by a ``WinogradConv2d`` (in place, sharing the
    parameters). Returns the replaced modules' names."""
    replaced = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if eligible(child, min_channels):
                setattr(module, child_name, WinogradConv2d.from_conv(child, tile))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced
