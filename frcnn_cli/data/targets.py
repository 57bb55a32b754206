"""Ground truth of a batch, in scaled-image pixels, as the model's losses take it.

Shapes: N images, G_i boxes of image i. Boxes are 0-based continuous ``x1 y1 x2 y2``; labels are
``1..K`` (0 is background, never a target). Lives in ``data`` so that the data pipeline can build it
without importing the model; ``frcnn_cli.model.detector`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Targets:
    """Per-image ground truth: ``boxes[i]`` ``Tensor[G_i, 4]`` float, ``labels[i]`` ``LongTensor[G_i]``."""

    boxes: list[Tensor]
    labels: list[Tensor]

    def __len__(self) -> int:
        return len(self.boxes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Targets:
        """A copy on ``device``."""
        return Targets(
            boxes=[b.to(device, non_blocking=non_blocking) for b in self.boxes],
            labels=[lab.to(device, non_blocking=non_blocking) for lab in self.labels],
        )

    def pin_memory(self) -> Targets:
        """Page-locked copies (called by the DataLoader when ``pin_memory=True``)."""
        return Targets(boxes=[b.pin_memory() for b in self.boxes],
                       labels=[lab.pin_memory() for lab in self.labels])
