"""Images in, detections out: find image files, run the detector on them in batches, draw the results.

Shapes: N images of a batch, D detections of one image.

Detections are plain JSON-ready dicts (shared/DESIGN.md), one per image::

    {"image": "photos/cat.jpg", "width": 500, "height": 375,
     "detections": [{"label": "cat", "score": 0.981234, "box": [12.5, 30.0, 250.25, 370.0]}, ...]}

with boxes in the original image's pixels, 0-based continuous ``x1 y1 x2 y2`` (docs/architecture.md),
sorted by score, descending; scores with 6 decimals and coordinates with 3, as the VOC result files.
Pixels are decoded by ``load_image`` (EXIF orientation not applied: the boxes refer to the stored pixel
grid, as every VOC tool's).
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .ablations import ProposalAblation
from .atomic import atomic_path, atomic_write_text
from .data.images import load_image
from .errors import CheckpointError, ConfigError, DataError
from .inference import detect_batch, file_batches, prepare_model
from .model.checkpoint import load_model
from .model.detector import FasterRCNN

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DETECTIONS_FILE = "detections.json"
# 20 distinct colours (Sasha Trubetskoy's list), one per class, cycling after 20
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))

Progress = Callable[[int, str], None]


# --------------------------------------------------------------------------------------------------
# finding images and the model


def _folder_images(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under ``folder`` (recursive; hidden files and folders skipped), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")
                       and (exclude is None or (here / d).resolve() != exclude)]
        found += [here / f for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def find_images(paths: Sequence[str | os.PathLike], *, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively for
    ``IMAGE_EXTENSIONS`` (case-insensitive, sorted; hidden entries and the folder ``exclude``, e.g. the
    output folder, skipped). Order: as the arguments, each folder sorted; a file named twice comes once.

    A missing path, or a folder without images, is a ``DataError`` naming it.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    images: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _folder_images(path, excluded)
            if not found:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); give image "
                                "files or a folder that contains some")
        elif path.is_file():
            found = [path]
        else:
            raise DataError(f"{path} does not exist; give image files or folders of images")
        for image in found:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                images.append(image)
    if not images:
        raise DataError("no images were given; name image files or folders")
    return images


def load_detector(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[FasterRCNN, dict]:
    """``load_model`` for a checkpoint that can detect (it must hold the ``roi_head`` part)."""
    model, ckpt = load_model(path, device=device)
    if "roi_head" not in ckpt["parts"]:
        raise CheckpointError(
            f"checkpoint {path} (stage '{ckpt.get('stage')}') has no detection head, only "
            f"{sorted(ckpt['parts'])}; give a detector: the output of train-detector or of frcnn train")
    if "rpn" not in ckpt["parts"]:
        raise CheckpointError(
            f"checkpoint {path} (stage '{ckpt.get('stage')}') has a detection head but no trained RPN (a step-2 "
            f"detector); detect and evaluate with the unified model of step 4 (final.pt of frcnn train)")
    return model, ckpt


def label_filter(model: FasterRCNN, classes: Sequence[str] | None) -> set[int] | None:
    """The labels (1..K) of the class names ``classes`` (None: all); an unknown name is a ``ConfigError``."""
    if classes is None:
        return None
    unknown = [c for c in classes if c not in model.classes]
    if unknown:
        raise ConfigError(f"--classes: {', '.join(map(repr, unknown))} not among the model's classes "
                          f"({', '.join(model.classes)}); pick from those")
    return {model.classes.index(c) + 1 for c in classes}


# --------------------------------------------------------------------------------------------------
# detection


@contextlib.contextmanager
def _score_floor(model: FasterRCNN, score_thresh: float) -> Iterator[None]:
    """Lower the model's own detection threshold to ``score_thresh`` for a while (never raise it)."""
    saved = model.cfg
    if score_thresh < saved.roi_head.score_thresh:
        model.cfg = replace(saved, roi_head=replace(saved.roi_head, score_thresh=score_thresh))
    try:
        yield
    finally:
        model.cfg = saved


def _image_result(path: Path, size: Sequence[int], det: dict, classes: list[str], keep: set[int] | None,
                  score_thresh: float) -> dict:
    rows = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
        score = round(score, 6)  # compared as shown, so a shown 0.5 passes --score-thresh 0.5
        if score >= score_thresh and (keep is None or label in keep):
            rows.append({"label": classes[label - 1], "score": score, "box": [round(v, 3) for v in box]})
    return {"image": str(path), "width": int(size[1]), "height": int(size[0]), "detections": rows}


@torch.inference_mode()
def detect_images(model: FasterRCNN, paths: Sequence[str | os.PathLike], *, device: torch.device | str = "cpu",
                  batch_size: int = 1, score_thresh: float = 0.5, classes_filter: Sequence[str] | None = None,
                  ablation: ProposalAblation | None = None, progress: Progress | None = None,
                  num_workers: int = 0) -> list[dict]:
    """Detections of every image in ``paths`` (files), ``batch_size`` images per forward on ``device``.

    Images are decoded, rescaled and normalised by ``num_workers`` loader processes (0: this one; the
    results are the same). Keeps detections with ``score >= score_thresh`` (as py-faster-rcnn's demo; a
    threshold below the model's own ``cfg.roi_head.score_thresh`` lowers that one too) of the classes
    ``classes_filter`` (names; None: all). ``ablation``: the paper's Table 1 test-time proposal ablations.
    Returns one dict per image in the module docstring's layout, in the order of ``paths``; an unreadable
    image is a ``DataError`` naming it.
    """
    device = torch.device(device)
    keep = label_filter(model, classes_filter)
    prepare_model(model, device)
    paths = [Path(p) for p in paths]
    results: list[dict] = []
    with _score_floor(model, score_thresh):
        for batch in file_batches(paths, model, device, batch_size=batch_size, num_workers=num_workers):
            dets = detect_batch(model, batch, device, ablation)
            for index, size, det in zip(batch.indices.tolist(), batch.original_sizes.tolist(), dets):
                results.append(_image_result(paths[index], size, det, model.classes, keep, score_thresh))
            if progress is not None:
                progress(len(results), "")
    return results


# --------------------------------------------------------------------------------------------------
# output files and drawing


def _save_format(name: str) -> str | None:
    """The PIL format that writes files named ``name`` (None: unknown or not writable, or GIF)."""
    fmt = Image.registered_extensions().get(os.path.splitext(name)[1].lower())
    return fmt if fmt in Image.SAVE and fmt != "GIF" else None


def output_paths(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Where the drawn copy of each image goes: ``out_dir`` / its path relative to the images' deepest
    common folder, so same-named files of different folders never collide; names keep their spaces and
    non-ASCII letters. A file type PIL cannot write (or GIF: 256 colours) gets ``.png`` appended."""
    resolved = [Path(p).resolve() for p in images]
    try:
        root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
        rels = [p.relative_to(root) for p in resolved]
    except ValueError:  # different drives
        rels = [Path(p.drive.strip(":\\/") or "_") / p.relative_to(p.anchor) for p in resolved]
    out, used = [], set()
    for rel in rels:
        if _save_format(rel.name) is None:
            rel = rel.with_name(rel.name + ".png")
        candidate, n = rel, 1
        while str(candidate).casefold() in used:  # e.g. a.gif -> a.gif.png beside a real a.gif.png
            n += 1
            candidate = rel.with_name(f"{rel.stem} ({n}){rel.suffix}")
        used.add(str(candidate).casefold())
        out.append(Path(out_dir) / candidate)
    return out


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


def draw_detections(image_path: str | os.PathLike, detections: Sequence[dict], out_path: str | os.PathLike,
                    *, classes: Sequence[str] | None = None) -> Path:
    """Write ``image_path`` with ``detections`` (``{"label", "score", "box"}``, original pixels) drawn: a
    box in the class's colour, and ``label 0.98`` on a filled background; written atomically to
    ``out_path`` in the format of its extension (PNG when unknown). Returns ``out_path``."""
    out_path = Path(out_path)
    pixels = load_image(image_path).permute(1, 2, 0).contiguous().numpy()
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
    with atomic_path(out_path) as tmp:
        image.save(tmp, format=fmt, **options)
    return out_path


def save_detections(results: Sequence[dict], out_dir: str | os.PathLike, *,
                    classes: Sequence[str] | None = None) -> list[Path]:
    """Each image of ``results`` (``detect_images``) drawn under ``out_dir`` (``output_paths``), and
    ``out_dir/detections.json`` with ``results``; every file written atomically. Returns the drawn paths."""
    out_dir = Path(out_dir)
    targets = output_paths([r["image"] for r in results], out_dir)
    for result, target in zip(results, targets):
        draw_detections(result["image"], result["detections"], target, classes=classes)
    atomic_write_text(out_dir / DETECTIONS_FILE, detections_json(results) + "\n")
    return targets


def detections_json(results: Sequence[dict]) -> str:
    """``results`` as a JSON list, one image per line (compact, yet readable and greppable)."""
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in results]
    return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
