"""Fast R-CNN's truncated-SVD compression of the fully connected layers (Girshick, Fast R-CNN, Sec. 3.1).

Shapes: I input features, O output features, r the kept rank, S RoIs.

A fully connected layer ``y = W x + b`` with ``W`` ``[O, I]`` is factorised as ``W ≈ U_r Σ_r V_rᵀ``
(the ``r`` largest singular values) and replaced by two layers without a non-linearity between them:
``I → r`` with weight ``Σ_r V_rᵀ`` ``[r, I]`` and no bias, then ``r → O`` with weight ``U_r`` ``[O, r]``
and the original bias. The multiply-adds per RoI drop from ``O·I`` to ``r·(I + O)``: for VGG16's fc6
(25088 → 4096) at r = 1024 from 102.8 M to 29.9 M, 3.4× fewer (Fast R-CNN: top 1024 singular values
of fc6 and 256 of fc7, mAP 66.9 → 66.6 on VOC07). ``r = min(O, I)`` reproduces the layer up to float
rounding.

Compression is for inference only: the factorised layers change the state dict's keys, so a compressed
model must never be written as a checkpoint or trained; compress after loading the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class SVDLinear(nn.Sequential):
    """A truncated-SVD factorised ``nn.Linear``: ``reduce`` (I → r, no bias) then ``expand`` (r → O, bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(in_features, rank, bias=False)
        self.expand = nn.Linear(rank, out_features, bias=True)

    @property
    def rank(self) -> int:
        return self.reduce.out_features


def _top_singular_pair(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(reduce [r, I], expand [O, r])`` with ``expand @ reduce`` the best rank-r approximation of ``weight``.

    From the eigenvectors of the smaller Gram matrix rather than a full SVD (minutes for VGG16's fc6 on
    a CPU): with ``U_r`` the top-r eigenvectors of ``W Wᵀ`` (the left singular vectors), ``U_r U_rᵀ W``
    is the truncated SVD, split as ``Σ_r V_rᵀ = U_rᵀ W`` and ``U_r``. When ``O > I`` the right singular
    vectors ``V_r`` of ``Wᵀ W`` give ``V_rᵀ`` and ``W V_r = U_r Σ_r``. Either way the product is an
    orthogonal projection of ``W``, so at full rank it is ``W`` up to float rounding.
    """
    out_features, in_features = weight.shape
    if out_features <= in_features:
        _, vecs = torch.linalg.eigh(weight @ weight.T)  # eigenvalues ascending
        u = vecs[:, -rank:].flip(1)
        return u.T @ weight, u
    _, vecs = torch.linalg.eigh(weight.T @ weight)
    v = vecs[:, -rank:].flip(1)
    return v.T.contiguous(), weight @ v


@torch.no_grad()
def factorize_linear(layer: nn.Linear, rank: int) -> SVDLinear:
    """The rank-``rank`` truncated SVD of ``layer`` (rank capped at ``min(O, I)``) as an ``SVDLinear``.

    Computed in float32 on the layer's device (seconds on a GPU; VGG16's fc6, 4096 x 25088, takes
    about a minute on a 2-core CPU); the new weights take the layer's dtype and device.
    """
    if rank < 1:
        raise ConfigError(f"config key 'roi_head.fc_svd_rank' is {rank}; give a positive rank (e.g. 1024) "
                          f"or 0 to switch the compression off")
    weight = layer.weight
    out_features, in_features = weight.shape
    rank = min(int(rank), out_features, in_features)
    reduce_w, expand_w = _top_singular_pair(weight.detach().float(), rank)
    fact = SVDLinear(in_features, out_features, rank).to(device=weight.device, dtype=weight.dtype)
    fact.reduce.weight.copy_(reduce_w)
    fact.expand.weight.copy_(expand_w)
    if layer.bias is not None:
        fact.expand.bias.copy_(layer.bias)
    else:
        fact.expand.bias.zero_()
    return fact


def _replace_linears(module: nn.Module, rank: int, prefix: str, done: list[str]) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, SVDLinear):
            continue  # already compressed: compressing twice would only lose accuracy
        if isinstance(child, nn.Linear):
            setattr(module, name, factorize_linear(child, rank))
            done.append(path)
        else:
            _replace_linears(child, rank, path + ".", done)


def compress_fc_svd(model: nn.Module, rank: int) -> list[str]:
    """Replace every ``nn.Linear`` of the region head's ``head_top`` (fc6, fc7) by its rank-``rank``
    truncated SVD, in place; returns the names of the replaced layers (``roi_head.head_top.…``).

    ``model`` is a ``FasterRCNN`` (anything with ``roi_head.head_top``); the class-score and box
    predictors stay as they are (Fast R-CNN compresses fc6 and fc7 only). Layers already compressed
    are left alone, so calling it twice is harmless. A head without fully connected layers (ResNet's
    res5) is returned unchanged with an empty list. Inference only: see the module docstring.
    """
    head_top = model.roi_head.head_top
    done: list[str] = []
    _replace_linears(head_top, rank, "roi_head.head_top.", done)
    return done
