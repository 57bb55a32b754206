"""The Fast R-CNN head: RoI pooling of the shared features, the fc layers, the two predictors.

Shapes: N images, C feature channels, H×W feature grid, S RoIs, P pooled side (7 VGG16 / 6 ZF),
D head dimension (fc7 width), K classes without background.

RoIs are ``Tensor[S, 5]`` ``(image index, x1, y1, x2, y2)`` in scaled-image pixels, 0-based continuous.
RoIPool reproduces Caffe's ``roi_pooling_layer`` exactly: Caffe rounds py-faster-rcnn's *inclusive*
corners, which are ours minus one on x2, y2, so those are what ``torchvision.ops.roi_pool`` (same
rounding and bins as Caffe) is given; on the CPU without gradients ``roipool.roi_pool_table`` computes the
same values vectorised over channels. RoIAlign uses ``aligned=True``: the pixel-centre shift of half a
pixel is exactly our continuous convention.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_pool

from ..config import POOLERS
from ..errors import ConfigError
from .roialign_grad import roi_align_aligned
from .roipool import roi_pool_table


class RoIHead(nn.Module):
    """RoI pooler, ``head_top`` (fc6/fc7 or res5), ``cls_score`` (K+1) and ``bbox_pred`` (4(K+1)).

    ``head_top`` maps pooled ``Tensor[S, C, P, P]`` to ``Tensor[S, D]`` (built by ``backbones.py``).
    ``cls_score`` is initialised N(0, 0.01), ``bbox_pred`` N(0, 0.001), biases 0 (py-faster-rcnn).
    """

    def __init__(self, *, head_top: nn.Module, in_channels: int, head_dim: int, num_classes: int,
                 pool_size: int, pooler: str = "roipool", spatial_scale: float = 1.0 / 16,
                 sampling_ratio: int = 2) -> None:
        super().__init__()
        if pooler not in POOLERS:
            raise ConfigError(f"config key 'roi_head.pooler' is {pooler!r}; set it to one of: "
                              f"{', '.join(POOLERS)}")
        self.head_top = head_top
        self.in_channels = in_channels
        self.head_dim = head_dim
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.pooler = pooler
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.cls_score = nn.Linear(head_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(head_dim, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def pool(self, features: Tensor, rois: Tensor) -> Tensor:
        """Pooled ``Tensor[S, C, P, P]`` of ``rois`` ``Tensor[S, 5]`` on ``features`` ``[N, C, H, W]``."""
        dtype = torch.promote_types(features.dtype, rois.dtype)
        features = features.to(dtype)
        rois = rois.to(dtype)
        if self.pooler == "roipool":
            # Caffe quantises inclusive pixel indices: ours [x1, y1, x2, y2] is inclusive [x1, y1, x2-1, y2-1]
            inclusive = torch.cat((rois[:, :3], rois[:, 3:] - 1.0), 1)
            # a trace (frcnn export) records torchvision's op: the table is CPU-only Python
            if features.device.type == "cpu" and not torch.jit.is_tracing() and not (
                    torch.is_grad_enabled() and features.requires_grad):
                return roi_pool_table(features, inclusive, self.pool_size, self.spatial_scale)  # same values
            return roi_pool(features, inclusive, self.pool_size, self.spatial_scale)
        # the same values; on the CPU while training, a backward of two matrix products (roialign_grad.py)
        return roi_align_aligned(features, rois, self.pool_size, self.spatial_scale, self.sampling_ratio)

    def predict(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``(class_logits Tensor[S, K+1], box_deltas Tensor[S, 4(K+1)])`` from pooled features."""
        x = torch.flatten(self.head_top(pooled), 1)
        return self.cls_score(x), self.bbox_pred(x)

    def forward(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits ``[S, K+1]`` and class-specific box deltas ``[S, 4(K+1)]`` for ``rois`` ``[S, 5]``."""
        return self.predict(self.pool(features, rois))
