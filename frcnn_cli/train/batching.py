"""Batches on the training device, and the proposals of a detector stage read from the HDF5 store."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from ..data.images import scale_and_flip_proposals
from ..data.proposal_store import ProposalStore
from ..dense_proposals import DenseProposalSource


def device_batches(loader: Iterable, device: torch.device, *, channels_last: bool = False,
                   proposals_for: Callable | None = None) -> Iterator:
    """``(ImageBatch, Targets, proposals)`` from the loader, moved to ``device`` (non-blocking from pinned
    memory). ``proposals_for(batch)`` (a detector stage's stored proposals, else None) reads the batch's
    indices, scales and flips while they are still on the host, so no device sync is needed for them.

    Starting a DataLoader iterator draws its workers' base seed from the global RNG; it is started under
    ``fork_rng`` so that the global stream (anchor and RoI sampling, dropout) is the same whether a run
    starts at iteration 0 or resumes at k with the RNG state saved there.
    """
    with torch.random.fork_rng(devices=[]):
        iterator = iter(loader)
    for batch, targets in iterator:
        proposals = proposals_for(batch) if proposals_for is not None else None
        batch = batch.to(device, non_blocking=True)
        if channels_last:
            batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        yield batch, targets.to(device, non_blocking=True), proposals


def proposal_source(store: ProposalStore | DenseProposalSource, device: torch.device) -> Callable:
    """``proposals_for(batch)``: each image's stored proposals, scaled and flipped like the image, on
    ``device``; ``batch`` is the loader's (host) batch. The dense windows (Table 5) are made for each image's
    own scaled size instead.

    Flipped training images get their proposals by flipping the stored ones, as py-faster-rcnn.
    """
    if isinstance(store, DenseProposalSource):
        return store.source(device)
    def proposals_for(batch) -> list[torch.Tensor]:
        out = []
        indices = batch.indices.tolist()
        scales = batch.scales.tolist()
        flipped = batch.flipped.tolist()
        widths = batch.original_sizes[:, 1].tolist()
        for index, scale, flip, width in zip(indices, scales, flipped, widths):
            boxes, _ = store.get(index)
            out.append(scale_and_flip_proposals(boxes, scale, flip, width).to(device, non_blocking=True))
        return out

    return proposals_for
