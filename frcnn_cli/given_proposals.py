"""Proposals handed to a detector in place of its own RPN's: the paper's unshared evaluation (a step-2 detector
on the step-1 RPN's proposals: Table 1 58.7, Table 2 68.5), a detector trained on Selective Search tested on
an RPN's proposals (Table 1's "SS / RPN" ablations), and external proposals at test time.

Each is a proposal strategy (``model.rpn.Proposer``) that stands where an ablation stands in
``InferenceSettings`` (``ablation=``: ``proposer(settings)``, ``is_default``, ``describe()``), so the detector
runs its usual forward and detection rules (``Predictor``):

- ``GivenProposals``: boxes held in memory, one ``[R, 4]`` tensor (original pixels) per manifest index;
- ``StoredProposals``: a proposal store read image by image (``prepare proposals`` or ``dump-proposals``);
- ``proposals_of``: every image's test proposals from a ``Predictor`` of another model (its RPN, with its
  test-time settings and any Table 1 ablation), for ``GivenProposals``.

Shapes: N images in a batch, R proposals of an image; ``keys`` are the batch's manifest indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .callbacks import Progress
from .data.manifest import Manifest
from .data.proposal_store import ProposalStore


def _keys(keys: Sequence[int] | None, count: int) -> Sequence[int]:
    if keys is None:
        raise ValueError("given proposals need the batch's manifest indices (keys=)")
    if len(keys) != count:
        raise ValueError(f"{len(keys)} keys for a batch of {count} images")
    return keys


@dataclass(frozen=True)
class GivenProposals:
    """Fixed proposals: ``boxes[key]`` ``[R, 4]`` original pixels for the image of manifest index ``key``,
    scaled like the image; their scores are 0 (a ``model.rpn.Proposer``)."""

    boxes: Sequence[Tensor]
    label: str = "given proposals"
    is_default: bool = False

    def proposer(self, settings) -> GivenProposals:
        return self

    def describe(self) -> str:
        return self.label

    def __call__(self, anchors: Tensor, cls_logits: Tensor, deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                 *, keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]:
        out = []
        for i, key in enumerate(keys if keys is not None else range(len(scales))):
            boxes = self.boxes[key].to(deltas.device, torch.float32) * scales[i].to(torch.float32)
            out.append((boxes, torch.zeros(boxes.shape[0], device=deltas.device)))
        return out


@dataclass(frozen=True)
class StoredProposals:
    """The proposals of a proposal store (already checked against the manifest), the first ``top_n`` of each
    image (all when None), scaled like the image, with their stored scores (a ``model.rpn.Proposer``)."""

    store: ProposalStore
    top_n: int | None = None
    is_default: bool = False

    def proposer(self, settings) -> StoredProposals:
        return self

    def describe(self) -> str:
        cap = f", top {self.top_n}" if self.top_n is not None else ""
        return f"proposals of {self.store.path}{cap}"

    def __call__(self, anchors: Tensor, cls_logits: Tensor, deltas: Tensor, image_sizes: Tensor, scales: Tensor,
                 *, keys: Sequence[int] | None = None) -> list[tuple[Tensor, Tensor]]:
        out = []
        for i, key in enumerate(_keys(keys, len(scales))):
            boxes, scores = self.store.get(int(key))
            boxes, scores = boxes[: self.top_n], scores[: self.top_n]
            scaled = boxes.to(deltas.device) * scales[i].to(device=deltas.device, dtype=torch.float32)
            out.append((scaled, scores.to(deltas.device)))
        return out


def proposals_of(predictor, manifest: Manifest, *, batch_size: int = 1,
                 progress: Progress | None = None) -> list[Tensor]:
    """Every manifest image's test proposals (original pixels, by score) from the predictor's RPN (or its
    ablation), in manifest order."""
    found: list = [None] * len(manifest.images)
    done = 0
    for batch in predictor.manifest_batches(manifest, batch_size=batch_size):
        result = predictor.run(batch, detections=False, proposals=True)
        for index, (boxes, _) in zip(batch.indices.tolist(), result.proposals):
            found[index] = boxes
        done += len(batch)
        if progress is not None:
            progress(done, len(manifest.images))
    return found
