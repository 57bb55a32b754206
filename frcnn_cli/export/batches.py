"""Batches of decoded images for an exported detector, whose graph does its own resizing and normalising.

Shapes: N images of a batch; each image uint8 ``[3, H_i, W_i]`` RGB as ``data.images.load_image`` decodes it.

``DecodedBatch`` has the fields of ``data.images.ImageBatch`` that the inference loops read (``ids``,
``indices``, ``original_sizes``, ``len``), so ``predict_manifest`` and ``detect.detect_images`` run an
exported model as they run a checkpoint. Images are decoded by ``data.loading.failsafe_loader``'s workers
(``runtime.num_workers``), in the order asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data.images import decoded, load_image
from ..data.loading import FailureCallback, failsafe_loader
from ..data.manifest import Manifest
from ..errors import DataError


@dataclass
class DecodedBatch:
    """N decoded images (``images[i]`` uint8 ``[3, H_i, W_i]``), their ``original_sizes [N, 2]`` (h, w), ``ids``
    and ``indices [N]`` (manifest index, or position in the list of files)."""

    images: list[Tensor]
    original_sizes: Tensor
    ids: list[str]
    indices: Tensor

    def __len__(self) -> int:
        return len(self.ids)


def collate_decoded(items: list[dict[str, Any]]) -> DecodedBatch:
    """``DecodedBatch`` of dataset items ``{"image", "index", "id"}``."""
    images = [it["image"] for it in items]
    return DecodedBatch(images=images,
                        original_sizes=torch.tensor([list(im.shape[-2:]) for im in images], dtype=torch.int64),
                        ids=[it["id"] for it in items],
                        indices=torch.tensor([it["index"] for it in items], dtype=torch.int64))


def decoded_batch(images: Sequence[Tensor], ids: Sequence[str] | None = None) -> DecodedBatch:
    """A ``DecodedBatch`` of images already decoded (``frcnn bench``, the export check)."""
    return collate_decoded([{"image": im, "index": i, "id": ids[i] if ids else str(i)}
                            for i, im in enumerate(images)])


class ManifestImages(Dataset):
    """A manifest's images, decoded, checked against the sizes the manifest records."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.manifest.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.manifest.images[index]
        path = self.manifest.image_path(rec)
        image = load_image(path)
        height, width = image.shape[-2:]
        if (width, height) != (rec.width, rec.height):
            raise DataError(f"image {rec.id} ({path}) is {width}x{height} but the manifest says "
                            f"{rec.width}x{rec.height}; the file changed since frcnn prepare: re-run it")
        return {"image": image, "index": index, "id": rec.id}


class FileImages(Dataset):
    """Image files, decoded (or images already decoded, uint8 ``[3, H, W]``); item ``i``'s id is the path (or
    ``<image i>``)."""

    def __init__(self, images: Sequence[Path | Tensor]) -> None:
        self.images = [im if isinstance(im, Tensor) else Path(im) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, name = decoded(self.images[index], index)
        return {"image": image, "index": index, "id": name}


def decoded_batches(dataset: Dataset, order: Sequence[int], *, batch_size: int, num_workers: int,
                    on_failure: FailureCallback | None = None) -> Iterator[DecodedBatch]:
    """``dataset``'s items ``order`` in batches of ``batch_size``, decoded by up to ``num_workers`` processes
    (the iterator is made now: the workers start here); ``on_failure`` as ``data.loading.inference_loader``'s."""
    size = max(1, batch_size)
    chunks = [list(order[i:i + size]) for i in range(0, len(order), size)]
    return iter(failsafe_loader(dataset, collate_decoded, batch_sampler=chunks,
                                num_workers=max(0, min(num_workers, len(chunks) - 1)), on_failure=on_failure))
