"""Images in, detections out: run a ``Predictor`` on image files in batches, draw the results.

Shapes: N images of a batch, D detections of one image.

Detections are plain JSON-ready dicts (shared/DESIGN.md), one per image::

    {"image": "photos/cat.jpg", "width": 500, "height": 375,
     "detections": [{"label": "cat", "score": 0.981234, "box": [12.5, 30.0, 250.25, 370.0]}, ...]}

with boxes in the original image's pixels, 0-based continuous ``x1 y1 x2 y2`` (docs/architecture.md),
sorted by score, descending; scores with 6 decimals and coordinates with 3, as the VOC result files. An image
that cannot be read gets ``{"image": …, "error": "<why and what to do>", "detections": []}`` (no width and
height), and the others are detected all the same (``unreadable``).
Pixels are decoded by ``load_image`` (EXIF orientation not applied: the boxes refer to the stored pixel
grid, as every VOC tool's).
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .atomic import atomic_write_bytes, atomic_write_text
from .callbacks import Progress
from .data.images import image_tensor, load_image
from .errors import ConfigError, DataError
from .inference import PredictorLike
from .output_paths import fit_name

DETECTIONS_FILE = "detections.json"
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]  # what detect_images and drawing take
# 20 distinct colours (Sasha Trubetskoy's list), one per class, cycling after 20
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))

def label_filter(model_classes: Sequence[str], classes: Sequence[str] | None) -> set[int] | None:
    """The labels (1..K) of the class names ``classes`` among ``model_classes`` (None: all); an unknown name
    is a ``ConfigError``."""
    if classes is None:
        return None
    model_classes = list(model_classes)
    unknown = [c for c in classes if c not in model_classes]
    if unknown:
        raise ConfigError(f"--classes: {', '.join(map(repr, unknown))} not among the model's classes "
                          f"({', '.join(model_classes)}); pick from those")
    return {model_classes.index(c) + 1 for c in classes}


# --------------------------------------------------------------------------------------------------
# detection


def image_result(name: str | None, size: Sequence[int], det: dict, classes: list[str], keep: set[int] | None,
                  score_thresh: float) -> dict:
    """The entry of image ``name`` (module docstring; None for an image in memory): ``det``'s detections with a
    score of at least ``score_thresh`` (as shown, to 6 decimals) and a label in ``keep`` (None: any), boxes to 3
    decimals; ``size``: (height, width)."""
    rows = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        score = round(score, 6)  # compared as shown, so a shown 0.5 passes --score-thresh 0.5
        if score >= score_thresh and (keep is None or label in keep):
            rows.append({"label": classes[label - 1], "score": score, "box": [round(v, 3) for v in box]})
    return {"image": name, "width": int(size[1]), "height": int(size[0]), "detections": rows}


def _sources(images: Sequence[ImageInput]) -> list[Path | Tensor]:
    """Paths as ``Path``, images in memory as uint8 ``[3, H, W]`` (``image_tensor``: a wrong one fails now)."""
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError("detect_images takes a list of images (paths, PIL images, arrays), not one image")
    return [Path(im) if isinstance(im, (str, os.PathLike)) else image_tensor(im, f"image {i}")
            for i, im in enumerate(images)]


@torch.inference_mode()
def detect_images(predictor: PredictorLike, images: Sequence[ImageInput], *, batch_size: int = 1,
                  score_thresh: float = 0.5, classes_filter: Sequence[str] | None = None,
                  progress: Progress | None = None) -> list[dict]:
    """Detections of every image of ``images``, ``batch_size`` images per forward: image files (paths), PIL
    images, uint8 numpy arrays ``[H, W, 3]`` (RGB) or ``[H, W]``, or uint8 tensors ``[3, H, W]``.

    Files are decoded, rescaled and normalised by the predictor's loader workers (the results are the
    same without). Keeps detections with ``score >= score_thresh`` (as py-faster-rcnn's demo) of the classes
    ``classes_filter`` (names; None: all); a threshold below the predictor's own detection threshold lowers
    that one for this call (``InferenceSettings.with_score_floor``; ``load_predictor(…, score_thresh=…)``
    makes the predictor so at once, as ``frcnn detect --score-thresh``). Returns one dict per image in the
    module docstring's layout, in the order of ``images`` (``"image"``: the path, None for an image in
    memory); a file that cannot be read (missing, truncated, corrupt, too large) gets an entry with its
    ``error`` and no detections, and the rest are detected (``unreadable`` lists those entries).

    >>> predictor = frcnn_cli.load_predictor("run/final.pt", "cpu")  # doctest: +SKIP
    >>> [d["label"] for d in frcnn_cli.detect_images(predictor, ["photo.jpg"])[0]["detections"]]  # doctest: +SKIP
    ['car', 'circle']
    """
    keep = label_filter(predictor.classes, classes_filter)
    lowered = predictor.settings.with_score_floor(score_thresh)
    if lowered is not predictor.settings:
        predictor = predictor.with_settings(lowered)
    sources = _sources(images)
    names = [str(s) if isinstance(s, Path) else None for s in sources]
    results: list[dict | None] = [None] * len(sources)
    done = reported = 0

    def on_unreadable(index: int, error: Exception) -> None:
        nonlocal done
        results[index] = {"image": names[index], "error": str(error), "detections": []}
        done += 1

    for batch in predictor.file_batches(sources, batch_size=batch_size, on_unreadable=on_unreadable):
        dets = predictor.run(batch).detections
        for index, size, det in zip(batch.indices.tolist(), batch.original_sizes.tolist(), dets):
            results[index] = image_result(names[index], size, det, predictor.classes, keep, score_thresh)
        done += len(batch)
        if progress is not None:
            progress(done, len(sources))
            reported = done
    if progress is not None and reported != done:  # the last images were unreadable
        progress(done, len(sources))
    return results


def unreadable(results: Sequence[dict]) -> list[dict]:
    """The entries of ``detect_images``'s results whose image could not be read (they hold ``error``)."""
    return [r for r in results if "error" in r]


# --------------------------------------------------------------------------------------------------
# output files and drawing


def _save_format(name: str) -> str | None:
    """The PIL format that writes files named ``name`` (None: unknown or not writable, or GIF)."""
    fmt = Image.registered_extensions().get(os.path.splitext(name)[1].lower())
    return fmt if fmt in Image.SAVE and fmt != "GIF" else None


def output_paths(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Where the drawn copy of each image goes: ``out_dir`` / its path relative to the images' deepest
    common folder, so same-named files of different folders never collide (``OutputNames``)."""
    resolved = [Path(p).resolve() for p in images]
    try:
        root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
        rels = [p.relative_to(root) for p in resolved]
    except ValueError:  # different drives
        rels = [Path(p.drive.strip(":\\/") or "_") / p.relative_to(p.anchor) for p in resolved]
    names = OutputNames(out_dir)
    return [names(rel) for rel in rels]


class OutputNames:
    """Names of drawn images: ``names(rel)`` is ``out_dir / rel`` with names that keep their spaces and non-ASCII
    letters; a file type PIL cannot write (or GIF: 256 colours) gets ``.png`` appended, and a name already given
    in its folder (compared case-insensitively) becomes ``name (2).ext``, ``name (3).ext`` ….

    ``walk_order``: the paths come in ``discovery``'s order (a folder's images before any other folder's that
    follows it), so only the folders of the last name and their parents are remembered: the memory is that of
    the folders being read, not of every image. Names given with ``pin`` (files named on the command line,
    which need not come in walk order) are always remembered."""

    def __init__(self, out_dir: str | os.PathLike, *, walk_order: bool = False) -> None:
        self.out_dir, self.walk_order = Path(out_dir), walk_order
        self._given: dict[str, set[str]] = {}
        self._pinned: dict[str, set[str]] = {}
        self._folder: str | None = None

    def __call__(self, rel: Path, *, pin: bool = False) -> Path:
        if _save_format(rel.name) is None:
            rel = rel.with_name(fit_name(rel.name + ".png", self.out_dir))  # cut to the file system's limit
        folder = str(rel.parent).casefold()
        if self.walk_order and folder != self._folder:
            keep = {folder, *(str(p).casefold() for p in rel.parent.parents)}
            self._given = {k: v for k, v in self._given.items() if k in keep}
            self._folder = folder
        given, pinned = self._given.setdefault(folder, set()), self._pinned.setdefault(folder, set())
        candidate, n = rel, 1
        while candidate.name.casefold() in given | pinned:  # e.g. a.gif -> a.gif.png beside a real a.gif.png
            n += 1
            candidate = rel.with_name(fit_name(rel.name, self.out_dir, tag=f" ({n})"))
        (pinned if pin else given).add(candidate.name.casefold())
        return self.out_dir / candidate


def class_colour(label: str, classes: Sequence[str] | None = None) -> tuple[int, int, int]:
    """The colour of a class: by its index in ``classes``, or (unknown) by a hash of its name."""
    if classes is not None and label in classes:
        return PALETTE[list(classes).index(label) % len(PALETTE)]
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def _draw_label(draw: ImageDraw.ImageDraw, text: str, box: Sequence[float], colour, font,
                size: tuple[int, int]) -> None:
    """``text`` on a filled rectangle of ``colour`` above the box (inside it at the top edge), in the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, box[0]), max(0.0, size[0] - tw))
    y = box[1] - th if box[1] - th >= 0 else min(max(0.0, box[1]), max(0.0, size[1] - th))
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
    ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


def draw_detections(image: ImageInput, detections: Sequence[dict], out_path: str | os.PathLike,
                    *, classes: Sequence[str] | None = None) -> Path:
    """Write ``image`` (a file, or an image in memory as ``detect_images`` takes them) with ``detections``
    (``{"label", "score", "box"}``, original pixels) drawn: a box in the class's colour, and ``label 0.98`` on
    a filled background; written atomically to ``out_path`` in the format of its extension (PNG when
    unknown). Returns ``out_path``.

    >>> result = frcnn_cli.detect_images(predictor, ["photo.jpg"])[0]  # doctest: +SKIP
    >>> draw_detections("photo.jpg", result["detections"], "photo.drawn.jpg")  # doctest: +SKIP
    """
    out_path = Path(out_path)
    decoded = load_image(image) if isinstance(image, (str, os.PathLike)) else image_tensor(image)
    pixels = decoded.permute(1, 2, 0).contiguous().numpy()
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(2, round(min(width, height) / 250))
    font = ImageFont.load_default(size=max(11, round(min(width, height) / 32)))
    for det in sorted(detections, key=lambda d: d["score"]):  # the best drawn last, on top
        x1, y1, x2, y2 = det["box"]
        colour = class_colour(det["label"], classes)
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=line)
        _draw_label(draw, f"{det['label']} {det['score']:.2f}", (x1, y1, x2, y2), colour, font,
                    (width, height))
    fmt = _save_format(out_path.name) or "PNG"
    options = {"quality": 95} if fmt == "JPEG" else {}
    # encoded in memory, then written and its size checked: PIL's encoders do not notice a short write to a
    # full disk, and would leave a cut image under the final name
    encoded = io.BytesIO()
    image.save(encoded, format=fmt, **options)
    atomic_write_bytes(out_path, encoded.getvalue())
    return out_path


def save_detections(results: Sequence[dict], out_dir: str | os.PathLike, *,
                    classes: Sequence[str] | None = None) -> list[Path]:
    """Each image of ``results`` (``detect_images``) drawn under ``out_dir`` (``output_paths``; the unreadable
    ones are not), and ``out_dir/detections.json`` with ``results``; every file written atomically. Returns the
    drawn paths."""
    out_dir = Path(out_dir)
    images = [r["image"] for r in results]
    targets = output_paths(images, out_dir)
    originals = {Path(p).resolve(): p for p in images}
    for target in targets:
        if target.resolve() in originals:  # out_dir is the images' own folder
            raise DataError(f"{out_dir} would replace the image {originals[target.resolve()]} by its drawn copy "
                            f"{target}; save the drawings in a folder of their own, not the images' folder")
    drawn = [(result, target) for result, target in zip(results, targets) if "error" not in result]
    for result, target in drawn:
        draw_detections(result["image"], result["detections"], target, classes=classes)
    atomic_write_text(out_dir / DETECTIONS_FILE, detections_json(results) + "\n")
    return [target for _, target in drawn]


def detections_json(results: Sequence[dict]) -> str:
    """``results`` as a JSON list, one image per line (compact, yet readable and greppable)."""
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in results]
    return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
