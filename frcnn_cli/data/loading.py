"""The DataLoaders: training's (``make_loader``, with its resumable sampler) and inference's
(``inference_loader``), both raising an item's ``FrcnnError`` as it was raised, with or without workers.

A worker's exception reaches the main process re-raised by DataLoader as a new exception of the same type
whose message is "Caught DataError in DataLoader worker process 0" and the worker's traceback: the CLI
would print that instead of the one-line ``Error: …``. So an item's ``FrcnnError`` travels as data (it
pickles: its one argument is the message), the batch that holds it becomes it, and the loader's iterator
raises it: the first failed item of the first failed batch, as a loop without workers would. With
``on_failure`` (``detect``: one unreadable photo must not stop a folder) a failed item is left out of its
batch instead and reported to ``on_failure(key, error)`` in the main process, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError, FrcnnError
from .images import DetectionDataset, ImageBatch, collate

FailureCallback = Callable[[Any, FrcnnError], None]  # (the item's key: a dataset index, its error)


def failsafe_loader(dataset: Dataset, collate_fn: Callable[[list], Any], *, on_failure: FailureCallback | None = None,
                    **kwargs) -> DataLoader:
    """``DataLoader(dataset, collate_fn=collate_fn, **kwargs)`` raising an item's ``FrcnnError`` itself, or with
    ``on_failure`` leaving the item out and calling ``on_failure(key, error)``."""
    combine = _collate_or_failure if on_failure is None else _collate_without_failures
    loader = _Loader(_Guarded(dataset), collate_fn=partial(combine, collate_fn=collate_fn), **kwargs)
    loader.on_failure = on_failure
    return loader


@dataclass
class _Failure:
    error: FrcnnError
    key: Any = None


@dataclass
class _Partial:
    """A batch without its failed items (``batch`` None when none was left), and the failures."""

    batch: Any
    failures: list[_Failure]

    def pin_memory(self) -> _Partial:  # called by DataLoader with pin_memory=True
        return _Partial(None if self.batch is None else self.batch.pin_memory(), self.failures)


class _Guarded(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except FrcnnError as exc:
            return _Failure(exc, key)


def _collate_or_failure(items: list, collate_fn: Callable[[list], Any]):
    """The first failed item, else the collated batch."""
    return next((it for it in items if isinstance(it, _Failure)), None) or collate_fn(items)


def _collate_without_failures(items: list, collate_fn: Callable[[list], Any]):
    """The collated batch; with failed items, a ``_Partial`` of the others and the failures."""
    failures = [it for it in items if isinstance(it, _Failure)]
    if not failures:
        return collate_fn(items)
    rest = [it for it in items if not isinstance(it, _Failure)]
    return _Partial(collate_fn(rest) if rest else None, failures)


def _raise_failures(batches: Iterator, on_failure: FailureCallback | None) -> Iterator:
    for batch in batches:
        if isinstance(batch, _Failure):
            raise batch.error
        if isinstance(batch, _Partial):
            for failure in batch.failures:
                on_failure(failure.key, failure.error)
            if batch.batch is None:
                continue
            batch = batch.batch
        yield batch


class _Loader(DataLoader):
    """The underlying iterator (which draws the workers' seed from the global RNG) is made at ``iter()``,
    as a plain DataLoader's, not at the first ``next()``."""

    on_failure: FailureCallback | None = None

    def __iter__(self):
        return _raise_failures(super().__iter__(), self.on_failure)


class ResumableBatchSampler(Sampler):
    """Batches of ``(entry, epoch)`` keys in an order fixed by ``seed``, resumable at any iteration.

    Epoch ``e`` visits ``torch.randperm(size, generator=Generator().manual_seed(seed + e))`` (or
    ``0..size-1`` without shuffling) in ``ceil(size / batch_size)`` batches, the last one possibly
    short. Iteration ``k`` is batch ``k % per_epoch`` of epoch ``k // per_epoch``, so a sampler started
    at ``start_iteration=k`` yields exactly the tail of the uninterrupted stream. ``infinite`` goes on
    epoch after epoch; otherwise it stops after epoch 0.

    Several processes (DDP): ``batch_size`` is per process; each iteration is a global batch of
    ``batch_size * world_size`` entries of the same order, of which process ``rank`` takes slice
    ``rank``. The epoch's last global batch is filled up from the start of its order so that every
    process gets ``batch_size`` entries (as ``DistributedSampler`` pads).
    """

    def __init__(self, size: int, *, batch_size: int, shuffle: bool, seed: int, infinite: bool,
                 start_iteration: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"batch size {batch_size} (rank {rank} of {world_size}) is invalid; "
                            "give a batch size of at least 1")
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.seed, self.infinite, self.start_iteration = seed, infinite, start_iteration
        self.rank, self.world_size = rank, world_size

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / (self.batch_size * self.world_size))

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            order = list(range(self.size))
        else:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        if self.world_size > 1:
            need = self.batches_per_epoch * self.batch_size * self.world_size - self.size
            order += (order * (need // self.size + 1))[:need]
        return order

    def __iter__(self):
        per = self.batches_per_epoch
        if per == 0:
            return
        epoch, skip = divmod(self.start_iteration, per)
        bs, first = self.batch_size, self.rank * self.batch_size
        while self.infinite or epoch == 0:
            order = self.epoch_order(epoch)
            for b in range(skip, per):
                start = b * bs * self.world_size + first
                yield [(i, epoch) for i in order[start:start + bs]]
            skip, epoch = 0, epoch + 1

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite training loader has no length")
        return max(0, self.batches_per_epoch - self.start_iteration)


def make_loader(dataset: DetectionDataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                start_iteration: int = 0, infinite: bool | None = None, size_divisor: int | None = None,
                rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A DataLoader of ``(ImageBatch, Targets)``: deterministic, resumable order (``ResumableBatchSampler``).

    ``infinite`` defaults to ``shuffle``: training loaders yield batches forever, epoch after epoch;
    ``shuffle=False`` gives one sequential pass (inference: build the dataset with ``train=False``).
    ``pin_memory``: page-locked batches (for a CUDA device). ``rank``/``world_size``: this process's share of every
    global batch under DDP (``ResumableBatchSampler``); ``batch_size`` is per process.
    """
    if len(dataset) == 0:
        raise DataError("the dataset has no images; check the manifest (frcnn prepare prints a summary)")
    sampler = ResumableBatchSampler(len(dataset), batch_size=batch_size, shuffle=shuffle, seed=seed,
                                    infinite=shuffle if infinite is None else infinite,
                                    start_iteration=start_iteration, rank=rank, world_size=world_size)
    divisor = dataset.cfg.input.size_divisor if size_divisor is None else size_divisor
    return failsafe_loader(dataset, partial(collate, size_divisor=divisor), batch_sampler=sampler,
                           num_workers=num_workers, pin_memory=pin_memory)


def inference_loader(dataset: Dataset, batches: list[list[int]], *, size_divisor: int, num_workers: int,
                     pin_memory: bool, on_failure: FailureCallback | None = None) -> DataLoader:
    """A DataLoader of ``ImageBatch`` for ``batches`` (lists of dataset indices, in this order): items
    decoded, rescaled and normalised in up to ``num_workers`` processes (0: this one; none for a single
    batch, which nothing could overlap). An ``FrcnnError`` of an item is raised as it is, as without workers
    (``make_loader`` too); with ``on_failure`` the item is left out of its batch (a batch left empty is
    skipped) and ``on_failure(index, error)`` is called instead."""
    return failsafe_loader(dataset, partial(_collate_images, size_divisor=size_divisor), batch_sampler=batches,
                           num_workers=max(0, min(num_workers, len(batches) - 1)), pin_memory=pin_memory,
                           on_failure=on_failure)


def _collate_images(items: list[dict[str, Any]], size_divisor: int) -> ImageBatch:
    return collate(items, size_divisor)[0]
