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
that takes this path for float32 CPU tensors and the ordinary one otherwise.

Training (a conv whose weight or input needs a gradient) goes through ``_TrainedConv3x3``: on batches of
at least ``MIN_TRAIN_PIXELS`` the forward, the input gradient (itself a 3×3 convolution, with the
flipped, transposed kernel) and the weight gradient (the adjoint of the forward's transforms) are all
Winograd; smaller ones run the direct forward and input gradient and take the weight gradient as nine
matrix products over shifted rows of the padded input (``conv3x3_weight_grad``). Both spare oneDNN's
backward-weights kernel, 3.5–4.5× slower on channels-last tensors than on NCHW ones here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

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
# with gradients the kernel transforms (forward, flipped, and the weight gradient's adjoint; about 20 ms each
# for 512x512 channels) are redone at every step: below this many pixels per batch they cost more than they save
MIN_TRAIN_PIXELS = 1024

# Under the CPU's bf16 autocast an eligible conv either runs oneDNN's direct convolution in bf16 (as autocast casts
# it) or stays Winograd F(4x4) in float32 (autocast off for it). Per kind of CPU (``devices.cpu_bf16_kind``): the
# least ``in_channels * out_channels`` from which Winograd float32 is the faster (None: never). The measured rows
# and the estimates are in benchmarks/conv_algorithms.py (``--bf16``) and docs/benchmarks.md.
BF16_WINOGRAD_FROM: dict[str | None, int | None] = {
    None: MIN_CHANNELS * MIN_CHANNELS,  # bf16 emulated (AVX2 Zen 3, measured): the bf16 conv is 7.5-12x float32's
    "avx512_bf16": 256 * 512,  # estimate (Zen 4): bf16 ~0.49x the float32 direct conv, Winograd 0.33-0.41x from here
    "forced": 256 * 512,  # FRCNN_CPU_BF16=1: taken for AVX512-BF16
    "amx": None,  # estimate: AMX's bf16 tiles outrun any float32 path
}


def bf16_conv_path(kind: str | None, in_channels: int, out_channels: int) -> str:
    """``"winograd"`` (float32) or ``"bf16"`` (oneDNN's direct convolution): the faster path under the CPU's bf16
    autocast for an eligible conv of ``in_channels -> out_channels`` on a CPU of ``kind``
    (``BF16_WINOGRAD_FROM``)."""
    start = BF16_WINOGRAD_FROM.get(kind, BF16_WINOGRAD_FROM["forced"])
    return "winograd" if start is not None and in_channels * out_channels >= start else "bf16"


def choose_bf16_paths(model: nn.Module, kind: str | None) -> list[str]:
    """Set each ``WinogradConv2d`` of ``model`` to its ``bf16_conv_path`` on a CPU of ``kind``; returns the names
    of those that stay Winograd float32 under bf16 autocast."""
    kept = []
    for name, module in model.named_modules():
        if isinstance(module, WinogradConv2d):
            module.winograd_under_bf16 = bf16_conv_path(kind, module.in_channels, module.out_channels) == "winograd"
            if module.winograd_under_bf16:
                kept.append(name)
    return kept


def _kernel_matrix(tile: int, device: torch.device) -> Tensor:
    """``[a*a, 9]`` float64: row ``p = iw * a + ih`` maps a 3×3 kernel (flattened) to position ``(ih, iw)``
    of ``G g Gᵀ``."""
    g = torch.tensor(_TRANSFORMS[tile][1], dtype=torch.float64, device=device)
    return torch.einsum("ir,js->jirs", g, g).reshape((tile + 2) ** 2, 9)


def kernel_transform(weight: Tensor, tile: int, flipped: bool = False) -> Tensor:
    """``U [a*a, C, K]`` for ``weight [K, C, 3, 3]``: ``G g Gᵀ`` in float64, rounded once to float32.

    One matrix product ``[a*a, 9] @ [9, K*C]`` (a transposed view of the weight: no copy of its layout),
    whose result ``[a*a, K, C]`` is returned as the transposed view ``[a*a, C, K]``. With ``flipped`` it is
    the kernel of the input gradient, ``weight.transpose(0, 1).flip(2, 3)`` (``[a*a, K, C]``, contiguous):
    the flip reverses the kernel matrix's columns. Row ``p = iw * a + ih`` holds position ``(ih, iw)`` of
    the a×a transformed kernel (the order of ``_input_transform``'s output)."""
    m = _kernel_matrix(tile, weight.device)
    if flipped:
        m = m.flip(1)
    k, c = weight.shape[:2]
    u = (m @ weight.detach().reshape(k * c, 9).double().T).float().view(m.shape[0], k, c)
    return u if flipped else u.transpose(1, 2)


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


def _gradient_transform(slab: Tensor, tile: int, tiles_w: int, out: Tensor) -> None:
    """``out [a, a, R, tiles_w, K]`` = ``A dY Aᵀ`` of every m×m tile ``dY`` of ``slab [R*m, tiles_w*m, K]``
    (output gradients, zero beyond the map); ``out[iw, ih]`` is position ``(ih, iw)``: the adjoint of
    ``_output_transform``."""
    at = _TRANSFORMS[tile][2]
    a, rows_out = tile + 2, out.shape[2]
    rows = [slab[j::tile] for j in range(tile)]  # row j of every tile: [R, W', K] each
    along_h = slab.new_empty(a, rows_out, slab.shape[1], slab.shape[2])
    for i in range(a):
        _combine(along_h[i], [at[j][i] for j in range(tile)], rows)
    cols = [along_h[:, :, j::tile] for j in range(tile)]  # [a, R, tiles_w, K] each
    for i in range(a):
        _combine(out[i], [at[j][i] for j in range(tile)], cols)


def _band_rows(tiles_w: int, channels: int) -> int:
    """Tile rows per band: matrix products of at least 256 rows, and about 32 K floats of input per tile
    position (the band's temporaries, ~5 MB, stay in cache). Tuned on a Zen 3 core: 0.34–0.6× the
    direct convolution's time for 128–512 channels, where whole-image temporaries were 0.5–1.9×."""
    return max(-(-256 // tiles_w), (1 << 15) // max(1, tiles_w * channels), 1)


def _transformed_band(image: Tensor, r0: int, rows: int, slab: Tensor, v: Tensor) -> Tensor:
    """``[a*a, rows*tiles_w, C]``: the input transforms of tile rows ``r0 … r0+rows-1`` of ``image [H, W, C]``
    (zero padding of 1 around it), through the buffers ``slab [band*m + 2, tiles_w*m + 2, C]`` and
    ``v [a, a, band, tiles_w, C]``."""
    h, w, c = image.shape
    a, tiles_w = v.shape[0], v.shape[3]
    tile = a - 2
    y0, y1 = r0 * tile - 1, min((r0 + rows) * tile + 1, h)  # image rows of the slab
    slab.zero_()
    slab[max(0, -y0):y1 - y0, 1:w + 1] = image[max(y0, 0):y1]
    v_band = v[:, :, :rows]
    _input_transform(slab[:rows * tile + 2], tile, tiles_w, v_band)
    return v_band.reshape(a * a, rows * tiles_w, c)


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None, tile: int) -> Tensor:
    """The 3×3, stride-1, padding-1 convolution of ``x [N, C, H, W]`` with the transformed kernel
    ``u [a*a, C, K]`` (``kernel_transform``) plus ``bias [K]``: ``[N, K, H, W]`` in channels-last layout.

    Bands of tile rows, one at a time: the temporaries stay small (in cache, reused by the allocator)."""
    n, c, h, w = x.shape
    a, k = tile + 2, u.shape[2]
    tiles_h, tiles_w = -(-h // tile), -(-w // tile)
    band = min(_band_rows(tiles_w, max(c, k)), tiles_h)
    out = torch.empty((n, k, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)  # no view
    out_nhwc = out.permute(0, 2, 3, 1)
    slab = x.new_empty(band * tile + 2, tiles_w * tile + 2, c)
    v = x.new_empty(a, a, band, tiles_w, c)
    products = x.new_empty(a * a, band * tiles_w, k)
    tiles = x.new_empty(band, tile, tiles_w, tile, k)
    for i, image in enumerate(x.permute(0, 2, 3, 1)):
        for r0 in range(0, tiles_h, band):
            rows = min(band, tiles_h - r0)
            vm = _transformed_band(image, r0, rows, slab, v)
            pm = products[:, :rows * tiles_w]
            for p in range(a * a):
                torch.mm(vm[p], u[p], out=pm[p])
            _output_transform(pm.view(a, a, rows, tiles_w, k), tile, tiles[:rows])
            valid = min(rows * tile, h - r0 * tile)
            out_nhwc[i, r0 * tile:r0 * tile + valid] = tiles[:rows].view(rows * tile, tiles_w * tile, k)[:valid, :w]
    if bias is not None:
        out_nhwc.add_(bias)
    return out


def winograd_weight_grad(x: Tensor, grad: Tensor, tile: int) -> Tensor:
    """The weight gradient ``[K, C, 3, 3]`` of the 3×3, stride-1, padding-1 convolution of ``x [N, C, H, W]``
    with output gradient ``grad [N, K, H, W]``, as Winograd: per tile position ``p`` the gradient of the
    transformed kernel is ``Σ_tiles V[p]ᵀ Ŷ[p]`` (``V = Bᵀ d B`` as in the forward, ``Ŷ = A dY Aᵀ``), one
    ``[C, T] @ [T, K]`` product per position (4× fewer multiply-adds than the direct sum), and the kernel
    gradient is ``Gᵀ (…) G``: the adjoint of ``kernel_transform``'s matrix, in float64."""
    n, c, h, w = x.shape
    a, k = tile + 2, grad.shape[1]
    tiles_h, tiles_w = -(-h // tile), -(-w // tile)
    band = min(_band_rows(tiles_w, max(c, k)), tiles_h)
    slab = x.new_empty(band * tile + 2, tiles_w * tile + 2, c)
    v = x.new_empty(a, a, band, tiles_w, c)
    grad_slab = grad.new_empty(band * tile, tiles_w * tile, k)
    yhat = grad.new_empty(a, a, band, tiles_w, k)
    acc = x.new_zeros(a * a, c, k)
    for image, g_image in zip(x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)):
        for r0 in range(0, tiles_h, band):
            rows = min(band, tiles_h - r0)
            vm = _transformed_band(image, r0, rows, slab, v)
            valid = min(rows * tile, h - r0 * tile)
            grad_slab.zero_()
            grad_slab[:valid, :w] = g_image[r0 * tile:r0 * tile + valid]
            _gradient_transform(grad_slab[:rows * tile], tile, tiles_w, yhat[:, :, :rows])
            ym = yhat[:, :, :rows].reshape(a * a, rows * tiles_w, k)
            for p in range(a * a):
                acc[p].addmm_(vm[p].T, ym[p])
    weight_grad = _kernel_matrix(tile, x.device).T @ acc.view(a * a, c * k).double()  # [9, C*K]
    return weight_grad.to(x.dtype).view(3, 3, c, k).permute(3, 2, 0, 1).contiguous()


def conv3x3_weight_grad(x: Tensor, grad: Tensor) -> Tensor:
    """The weight gradient ``[K, C, 3, 3]`` of a 3×3, stride-1, padding-1 convolution of ``x [N, C, H, W]``
    with output gradient ``grad [N, K, H, W]``, as nine matrix products per image.

    With ``x`` zero-padded to ``[H+2, W+2, C]`` and ``grad`` to ``[H, W+2, K]`` (two zero columns), both
    flattened to rows, the tap ``(r, s)`` is ``gradᵀ @ x[r*(W+2) + s:][:L]``: contiguous slices, no
    unfolded copy, and the zero columns cancel the rows that wrap around. oneDNN's backward-weights
    kernel takes 1.3–1.6× this time on NCHW tensors and 3.5–4.5× on channels-last ones (2 Zen 3 cores)."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    x_pad = x.new_zeros(n, h + 2, w + 2, c)
    x_pad[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    g_pad = grad.new_zeros(n, h, w + 2, k)
    g_pad[:, :, :w] = grad.permute(0, 2, 3, 1)
    rows = h * (w + 2) - 2  # the last two rows of g_pad are padding: the last tap stays inside x_pad
    out = x.new_zeros(3, 3, k, c)
    for xi, gi in zip(x_pad.view(n, -1, c), g_pad.view(n, -1, k)):
        g_t = gi[:rows].T
        for r in range(3):
            for s in range(3):
                start = r * (w + 2) + s
                out[r, s].addmm_(g_t, xi[start:start + rows])
    return out.permute(2, 3, 0, 1).contiguous()


class _TrainedConv3x3(torch.autograd.Function):
    """A 3×3, stride-1, padding-1 convolution with gradients on the CPU. ``u`` given: forward, input
    gradient (itself such a convolution, with the flipped, transposed kernel) and weight gradient
    (``winograd_weight_grad``) as Winograd; ``u`` None: forward and input gradient direct, the weight
    gradient by ``conv3x3_weight_grad``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, u: Tensor | None, tile: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.tile, ctx.winograd, ctx.has_bias = tile, u is not None, bias is not None
        if u is None:
            return F.conv2d(x, weight, bias, padding=1)
        return winograd_conv3x3(x, u, bias, tile)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] and ctx.winograd:
            grad_x = winograd_conv3x3(grad, kernel_transform(weight, ctx.tile, flipped=True), None, ctx.tile)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=1)
        if ctx.needs_input_grad[1] and ctx.winograd:
            grad_w = winograd_weight_grad(x, grad, ctx.tile)
        elif ctx.needs_input_grad[1]:
            grad_w = conv3x3_weight_grad(x, grad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class WinogradConv2d(nn.Conv2d):
    """A 3×3, stride-1, padding-1 ``nn.Conv2d`` that runs float32 CPU convolutions as Winograd F(m×m, 3×3).

    Same parameters and state-dict keys as the convolution it replaces; on other devices or dtypes, and
    on maps too small for the transforms to pay (``MIN_PIXELS``; with gradients ``MIN_TRAIN_PIXELS`` per
    batch, since the kernel transform is redone after every weight update), it is that convolution. The
    transformed kernel is cached and recomputed when the weight changes (in-place updates such as
    ``load_state_dict`` or an optimizer step bump the tensor's version; ``.to()`` gives it new storage).

    Under the CPU's bf16 autocast it is the bf16 direct convolution, or with ``winograd_under_bf16``
    (``choose_bf16_paths``) Winograd in float32 with autocast off: never Winograd's products in bf16, whose
    transforms would amplify bf16's rounding."""

    winograd_under_bf16 = False

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
        if x.dim() != 4:  # an unbatched [C, H, W] input, as nn.Conv2d allows
            return F.conv2d(x, self.weight, self.bias, padding=1)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            if not self.winograd_under_bf16:
                return F.conv2d(x, self.weight, self.bias, padding=1)  # oneDNN's bf16 convolution
            with torch.autocast("cpu", enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        cpu_fp32 = x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
        params = (self.weight, self.bias) if self.bias is not None else (self.weight,)
        grads = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
        if cpu_fp32 and grads:
            winograd = h * w >= MIN_PIXELS and n * h * w >= MIN_TRAIN_PIXELS
            u = self._transformed() if winograd else None
            return _TrainedConv3x3.apply(x, self.weight, self.bias, u, self.tile)
        if not cpu_fp32 or h * w < MIN_PIXELS:
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
