"""Images in, padded normalised batches out: decode, rescale, flip, normalise, batch (finding them:
``discovery.py``).

One item follows py-faster-rcnn's ``prep_im_for_blob`` and flipped roidb: decode to uint8 RGB, convert
to float, resize by ``compute_scale``, mirror if flipped, reorder channels and normalise, and pad into
a batch in ``collate``. The DataLoaders and their samplers are in ``loading.py``. Shapes: N images, G boxes,
H x W pixels.

Policies (each one keeps pixels and boxes consistent):

- **EXIF orientation is not applied.** VOC annotators and every VOC tool saw the raw pixel grid, so
  the boxes refer to it; rotating the pixels would leave the boxes behind.
- **Colour modes.** Grayscale, palette, RGBA/LA (alpha dropped, not composited), CMYK and 16-bit
  images become 8-bit RGB; 16-bit values map to 8 bits as ``round(v * 255 / 65535)``.
- **Resize.** ``torch.nn.functional.interpolate(bilinear, align_corners=False, antialias=False)`` on
  the float image: the sampling grid of cv2 ``INTER_LINEAR`` (py-faster-rcnn), without an anti-alias
  filter when shrinking, as cv2; values agree up to cv2's fixed-point weights. The output size is
  ``resized_size`` and boxes are multiplied by the scalar ``scale``, as py-faster-rcnn does. The values
  do not depend on the thread count (a loader worker's or the main process's), and an image shrunk to
  less than half its height is never converted to float whole (``frcnn_cli.data.resize``).
- **Flip.** Boxes (and proposals) are mirrored in original pixels, ``x1' = W - x2``, and then scaled,
  exactly as py-faster-rcnn flips its roidb; pixels are mirrored after resizing, which equals resizing
  the mirrored image because the bilinear grid is symmetric. Flipping twice is the identity.
- **Normalisation** (``cfg.input``): channels in ``pixel_order`` (rgb for torchvision weights, bgr for
  Caffe-converted ones), values in ``[0, pixel_range]``, minus ``pixel_mean``, divided by ``pixel_std``.
  Padding is 0 after normalisation, i.e. the mean colour (py-faster-rcnn pads its mean-subtracted blob).
- **Targets** exclude difficult boxes (py-faster-rcnn ``use_diff=False``); images left with no boxes
  are kept (they teach the RPN negatives). Labels are the manifest class index + 1.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..boxes import flip_boxes
from ..config import Config, InputConfig
from ..errors import DataError
from .augment import boxes_inside, colour_factors, jitter_colours, training_scale
from .decode import open_image, size_problem
from .discovery import IMAGE_EXTENSIONS, find_images  # noqa: F401  (the finders' home is discovery.py)
from .manifest import ImageRecord, Manifest
from .resize import resize_image
from .targets import Targets

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------------
# decoding


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # no copy of an RGB image


def load_image(path: str | Path) -> Tensor:
    """Decode an image file to ``Tensor[3, H, W]`` uint8 RGB (policies in the module docstring).

    A missing, truncated or corrupt file, or one that is not an image, raises ``DataError`` naming it; so
    does an image over frcnn's size limit (``decode.MAX_SIDE`` a side, ``decode.MAX_PIXELS`` in all), which
    says so: Pillow's smaller decompression-bomb limit does not apply.
    """
    path = Path(path)
    try:
        with open_image(path) as img:
            img.load()
            array = _to_rgb_array(img)
    except FileNotFoundError:
        raise DataError(
            f"image {path} does not exist; check the manifest's root and image paths, or re-run frcnn prepare"
        ) from None
    except _DECODE_ERRORS as exc:
        raise DataError(
            f"image {path} cannot be decoded ({exc}): it is truncated, corrupt or not an image; "
            "replace the file or leave it out (if it belongs to a dataset, re-run frcnn prepare)"
        ) from None
    planes = np.ascontiguousarray(array.transpose(2, 0, 1))
    if not planes.flags.writeable:  # a 1x1 image: already contiguous, so still PIL's read-only buffer
        planes = planes.copy()
    return torch.from_numpy(planes)


def image_tensor(image: Image.Image | np.ndarray | Tensor, name: str = "image") -> Tensor:
    """An image already in memory as ``Tensor[3, H, W]`` uint8 RGB, as ``load_image`` decodes a file: a PIL image
    (any mode, converted as a file's), a uint8 numpy array ``[H, W, 3]`` (RGB; ``[H, W]`` grey, ``[H, W, 4]``
    RGBA: alpha dropped) or a uint8 tensor ``[3, H, W]``. Anything else, or an image over frcnn's size limit,
    is a ``DataError`` naming ``name``."""
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise DataError(f"{name} is a {image.dtype} tensor of shape {list(image.shape)}; give a uint8 tensor "
                            "[3, H, W] (RGB), a uint8 numpy array [H, W, 3] or a PIL image")
        planes = image.contiguous()
    elif isinstance(image, Image.Image):
        planes = torch.from_numpy(np.array(_to_rgb_array(image).transpose(2, 0, 1)))
    elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        array = image if image.ndim == 3 else image[:, :, None]
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
        planes = torch.from_numpy(np.array(array.transpose(2, 0, 1)))  # a copy: the caller's array stays theirs
    else:
        what = f"a {image.dtype} array of shape {list(image.shape)}" if isinstance(image, np.ndarray) else (
            f"a {type(image).__name__}")
        raise DataError(f"{name} is {what}; give a path, a PIL image, a uint8 numpy array [H, W, 3] (RGB) or "
                        "[H, W] (grey), or a uint8 tensor [3, H, W]")
    problem = size_problem(planes.shape[2], planes.shape[1])
    if problem is not None:
        raise DataError(f"{name} {problem}; shrink it, or leave it out")
    return planes


def compute_scale(height: int, width: int, target: float, max_size: float) -> float:
    """py-faster-rcnn's rule: shorter side to ``target`` unless the longer side would exceed ``max_size``.

    ``scale = target / min(h, w)``; if ``round(scale * max(h, w)) > max_size``: ``max_size / max(h, w)``.
    """
    scale = float(target) / min(height, width)
    if round(scale * max(height, width)) > max_size:
        scale = float(max_size) / max(height, width)
    return scale


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(h * scale), round(w * scale))``, at least 1 pixel each (cv2.resize with fx = fy = scale)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def normalize(image: Tensor, input_cfg: InputConfig) -> Tensor:
    """Float ``[3, H, W]`` RGB in ``[0, 255]`` -> channels in ``pixel_order``, range, minus mean, over std."""
    if input_cfg.pixel_order == "bgr":
        image = image.flip(0)
    std = torch.tensor(input_cfg.pixel_std, dtype=torch.float64)
    gain = (input_cfg.pixel_range / 255.0) / std
    bias = -torch.tensor(input_cfg.pixel_mean, dtype=torch.float64) / std
    # one fused pass: a loader in the training process shares its cores with the model
    return torch.addcmul(bias.to(image)[:, None, None], image, gain.to(image)[:, None, None])


def prepare_image(image: Tensor, scale: float, input_cfg: InputConfig, *, flip: bool = False,
                  colours: tuple[float, float, float] | None = None) -> Tensor:
    """uint8 ``[3, H, W]`` RGB -> normalised float32 ``[3, round(H*s), round(W*s)]``, mirrored if ``flip``,
    its colours jittered by ``colours`` (``augment.jitter_colours``) when given."""
    height, width = image.shape[-2:]
    x = resize_image(image, resized_size(height, width, scale))
    if flip:
        x = x.flip(-1)
    if colours is not None:
        x = jitter_colours(x, colours)
    return normalize(x, input_cfg)


def scale_and_flip_proposals(boxes_original: Tensor, scale: float, flipped: bool,
                             original_width: float) -> Tensor:
    """Boxes ``[R, 4]`` in original pixels -> the scaled (and mirrored) image's pixels, as the gt boxes."""
    boxes = boxes_original.float()
    if flipped:
        boxes = flip_boxes(boxes, original_width)
    return boxes * scale


def record_targets(rec: ImageRecord) -> tuple[Tensor, Tensor]:
    """Non-difficult boxes ``[G, 4]`` (original pixels) and labels ``[G]`` (class index + 1) of a record."""
    keep = [i for i, hard in enumerate(rec.difficult) if not hard]
    boxes = torch.tensor([rec.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([rec.labels[i] + 1 for i in keep], dtype=torch.int64)
    return boxes, labels


# --------------------------------------------------------------------------------------------------
# batches


@dataclass
class ImageBatch:
    """N padded images ``tensor [N, 3, H, W]``; ``image_sizes [N, 2]`` (h, w) of each scaled image before
    padding; ``scales [N]``; ``original_sizes [N, 2]`` (h, w); ``ids``; ``flipped [N]``; ``indices [N]``
    (manifest index)."""

    tensor: Tensor
    image_sizes: Tensor
    scales: Tensor
    original_sizes: Tensor
    ids: list[str]
    flipped: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def _map(self, fn) -> ImageBatch:
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "ids"})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ImageBatch:
        """Page-locked copies (called by the DataLoader when ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())


def collate(items: list[dict[str, Any]], size_divisor: int = 16) -> tuple[ImageBatch, Targets]:
    """Pad ``DetectionDataset`` items with zeros to the largest h, w rounded up to ``size_divisor``."""
    sizes = [tuple(it["image"].shape[-2:]) for it in items]
    pad_h = math.ceil(max(h for h, _ in sizes) / size_divisor) * size_divisor
    pad_w = math.ceil(max(w for _, w in sizes) / size_divisor) * size_divisor
    tensor = items[0]["image"].new_zeros((len(items), 3, pad_h, pad_w))
    for i, (it, (h, w)) in enumerate(zip(items, sizes)):
        tensor[i, :, :h, :w].copy_(it["image"])
    batch = ImageBatch(
        tensor=tensor,
        image_sizes=torch.tensor(sizes, dtype=torch.int64),
        scales=torch.tensor([it["scale"] for it in items], dtype=torch.float32),
        original_sizes=torch.tensor([it["original_size"] for it in items], dtype=torch.int64),
        ids=[it["id"] for it in items],
        flipped=torch.tensor([it["flipped"] for it in items], dtype=torch.bool),
        indices=torch.tensor([it["index"] for it in items], dtype=torch.int64),
    )
    return batch, Targets(boxes=[it["boxes"] for it in items], labels=[it["labels"] for it in items])


def inference_item(image: Tensor, input_cfg: InputConfig, *, index: int, id: str) -> dict[str, Any]:
    """A decoded uint8 image as an inference item (``DetectionDataset``'s layout): test scale, unflipped,
    no boxes."""
    h, w = image.shape[-2:]
    scale = compute_scale(h, w, input_cfg.test_scale, input_cfg.max_size)
    return {"image": prepare_image(image, scale, input_cfg), "scale": scale, "original_size": (h, w), "id": id,
            "flipped": False, "index": index, "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64)}


def batch_from_images(images: list[Tensor], input_cfg: InputConfig,
                      ids: list[str] | None = None) -> ImageBatch:
    """Inference batch of decoded uint8 images at the test scale (``frcnn bench``)."""
    items = [inference_item(image, input_cfg, index=i, id=ids[i] if ids else str(i))
             for i, image in enumerate(images)]
    return collate(items, input_cfg.size_divisor)[0]


# --------------------------------------------------------------------------------------------------
# dataset and loader


class DetectionDataset(Dataset):
    """A manifest as model inputs.

    ``train=True``: entries are every image unflipped, then every image flipped when ``cfg.input.flip``
    (py-faster-rcnn appends the flipped roidb); the scale and the other augmentation of ``cfg.input`` drawn
    from ``(seed, epoch, entry)`` (``augment.py``). ``train=False``: each image once, unflipped, at
    ``cfg.input.test_scale``.
    An item is a dict: ``image`` (normalised ``[3, h, w]``), ``boxes`` (scaled ``[G, 4]``), ``labels``
    (``1..K``), ``id``, ``index`` (manifest index), ``flipped``, ``scale``, ``original_size`` (h, w).
    Keys are an entry index or ``(entry, epoch)`` (what ``make_loader``'s sampler yields).
    """

    def __init__(self, manifest: Manifest, cfg: Config, *, train: bool, seed: int | None = None) -> None:
        self.manifest = manifest
        self.cfg = cfg
        self.train = train
        self.seed = cfg.seed if seed is None else seed
        flips = (False, True) if train and cfg.input.flip else (False,)
        self.entries: list[tuple[int, bool]] = [(i, f) for f in flips for i in range(len(manifest.images))]

    def __len__(self) -> int:
        return len(self.entries)

    def target_size(self, entry: int, epoch: int) -> float:
        """The shorter-side target of an entry in an epoch (deterministic)."""
        if not self.train:
            return self.cfg.input.test_scale
        return training_scale(self.cfg.input, self.seed, epoch, entry)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        entry, epoch = key if isinstance(key, tuple) else (key, 0)
        index, flipped = self.entries[entry]
        rec = self.manifest.images[index]
        image = load_image(self.manifest.image_path(rec))
        height, width = image.shape[-2:]
        if (width, height) != (rec.width, rec.height):
            raise DataError(
                f"image {rec.id} ({self.manifest.image_path(rec)}) is {width}x{height} but the manifest says "
                f"{rec.width}x{rec.height}; the file changed since frcnn prepare: re-run it"
            )
        scale = compute_scale(height, width, self.target_size(entry, epoch), self.cfg.input.max_size)
        boxes, labels = record_targets(rec)
        boxes = scale_and_flip_proposals(boxes, scale, flipped, width)
        if self.train and self.cfg.input.scale_jitter:
            boxes = boxes_inside(boxes, resized_size(height, width, scale))
        colours = colour_factors(self.cfg.input, self.seed, epoch, entry) if self.train else None
        return {
            "image": prepare_image(image, scale, self.cfg.input, flip=flipped, colours=colours),
            "boxes": boxes,
            "labels": labels, "id": rec.id, "index": index, "flipped": flipped, "scale": scale,
            "original_size": (height, width),
        }


class ImageFilesDataset(Dataset):
    """Image files (or images already decoded) as inference items (``frcnn detect``): item ``i`` is
    ``inference_item`` of ``images[i]``, a path (its ``id``; an unreadable file is ``load_image``'s
    ``DataError``) or a uint8 ``Tensor[3, H, W]`` (``image_tensor``; id ``"<image i>"``)."""

    def __init__(self, images: Sequence[str | os.PathLike | Tensor], input_cfg: InputConfig) -> None:
        self.images = [im if isinstance(im, Tensor) else Path(im) for im in images]
        self.input_cfg = input_cfg

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, name = decoded(self.images[index], index)
        return inference_item(image, self.input_cfg, index=index, id=name)


def decoded(image: Path | Tensor, index: int) -> tuple[Tensor, str]:
    """``(uint8 [3, H, W], its name)`` of a path (decoded: ``load_image``) or of a decoded image (``<image i>``)."""
    if isinstance(image, Tensor):
        return image, f"<image {index}>"
    return load_image(image), str(image)
