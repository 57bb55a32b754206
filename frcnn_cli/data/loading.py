"""DataLoaders whose items' ``FrcnnError``s reach the caller as they were raised, with or without workers.

A worker's exception reaches the main process re-raised by DataLoader as a new exception of the same type
whose message is "Caught DataError in DataLoader worker process 0" and the worker's traceback: the CLI
would print that instead of the one-line ``Error: …``. So an item's ``FrcnnError`` travels as data (it
pickles: its one argument is the message), the batch that holds it becomes it, and the loader's iterator
raises it: the first failed item of the first failed batch, as a loop without workers would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch.utils.data import DataLoader, Dataset

from ..errors import FrcnnError


def failsafe_loader(dataset: Dataset, collate_fn: Callable[[list], Any], **kwargs) -> DataLoader:
    """``DataLoader(dataset, collate_fn=collate_fn, **kwargs)`` raising an item's ``FrcnnError`` itself."""
    return _Loader(_Guarded(dataset), collate_fn=partial(_collate_or_failure, collate_fn=collate_fn), **kwargs)


@dataclass
class _Failure:
    error: FrcnnError


class _Guarded(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except FrcnnError as exc:
            return _Failure(exc)


def _collate_or_failure(items: list, collate_fn: Callable[[list], Any]):
    """The first failed item, else the collated batch."""
    return next((it for it in items if isinstance(it, _Failure)), None) or collate_fn(items)


def _raise_failures(batches: Iterator) -> Iterator:
    for batch in batches:
        if isinstance(batch, _Failure):
            raise batch.error
        yield batch


class _Loader(DataLoader):
    """The underlying iterator (which draws the workers' seed from the global RNG) is made at ``iter()``,
    as a plain DataLoader's, not at the first ``next()``."""

    def __iter__(self):
        return _raise_failures(super().__iter__())
