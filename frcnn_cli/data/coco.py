"""COCO-format annotations (an ``instances_*.json`` file and its image folder) to a manifest.

What becomes what:

- **categories** sorted by id become the manifest's classes (names kept; two categories with one name
  are an error naming both ids); ``category_ids`` keeps the original ids, so results can be written back
  with them (``evaluate/coco.py``).
- **bbox** ``[x, y, w, h]`` is already in continuous pixels: the box is ``[x, y, x + w, y + h]`` (no
  ``-1``, unlike VOC XML). A box reaching at most ``CLIP_TOLERANCE`` (5) px outside its image is clipped;
  a box of zero width or height (or clipped to nothing) is dropped; both are counted in one warning.
  Further outside, or a negative width or height, is an error, as in ``data/voc.py``.
- **iscrowd** regions become boxes with ``difficult`` and ``crowd`` set: never a training target, and an
  ignore region in evaluation. ``area`` (COCO's object area, which COCO evaluation uses for its size
  ranges; ``w * h`` where the file has none) and the image id (``coco_id``) are kept.
- **images** keep the file's order; their manifest id is the COCO image id as text, their path the
  ``file_name`` under the image folder. Images without annotations are kept as negatives unless
  ``drop_empty``. Each image file's header is read (``data/coco_images.py``): a missing or unreadable file,
  or a ``width``/``height`` that disagrees with it, is an error naming the entry.
- The rules ``prepare folder`` applies hold here too: a category named ``background`` /
  ``__background__`` is refused (``data/name_lists.py``), as are two image entries of one file and two
  annotations of one id. Messages name images and annotations by their id ("annotation 5 (image 7)"),
  and by their position only when they have none.

Memory: the file is parsed with an ``object_hook`` that drops each annotation's ``segmentation`` (most
of the file's bytes) and stores the rest in typed columns as soon as the annotation is parsed, so the
full train2017 file (860k annotations) holds about 70 bytes per annotation after parsing
(docs/benchmarks.md has the measured peak).
"""

from __future__ import annotations

import json
import logging
import math
import os
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from ..callbacks import OnNote, Progress
from ..errors import DataError, problems_error
from ..file_kinds import decode_text
from .coco_images import check_image_files, good_images, is_int
from .manifest import ImageRecord, Manifest
from .name_lists import BACKGROUND_ADVICE, is_background
from .voc import CLIP_TOLERANCE

_log = logging.getLogger(__name__)


class _Row(int):
    """Stands in the parsed ``annotations`` list for a well-formed annotation: its row in the columns."""

    __slots__ = ()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _annotation_problem(ann: Any) -> str | None:
    """What is wrong with one entry of ``annotations`` (types only), or None."""
    if not isinstance(ann, dict):
        return "is not a JSON object"
    for key in ("image_id", "category_id", "bbox"):
        if key not in ann:
            return f"has no \"{key}\""
    for key in ("image_id", "category_id"):
        if not is_int(ann[key]):
            return f"\"{key}\" {ann[key]!r} is not an integer of at most 64 bits"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"bbox {box!r} is not [x, y, width, height] with finite numbers"
    if "id" in ann and not is_int(ann["id"]):
        return f"\"id\" {ann['id']!r} is not an integer of at most 64 bits"
    if ann.get("iscrowd", 0) not in (0, 1):
        return f"iscrowd {ann['iscrowd']!r} is not 0 or 1"
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        return f"area {ann['area']!r} is not a number >= 0"
    return None


class _Columns:
    """The well-formed annotations as typed columns, filled by :meth:`hook` while the JSON is parsed."""

    def __init__(self) -> None:
        self.ann_id, self.image_id, self.category_id = array("q"), array("q"), array("q")
        self.bbox, self.area, self.crowd, self.has_id = array("d"), array("d"), array("b"), array("b")

    def hook(self, obj: dict) -> Any:
        obj.pop("segmentation", None)  # polygons or RLE: most of the file, not needed for boxes
        if "bbox" not in obj or _annotation_problem(obj) is not None:
            return obj  # not an annotation, or a bad one: validated again, with its position, afterwards
        row = _Row(len(self.crowd))
        self.ann_id.append(obj.get("id", -1))
        self.has_id.append("id" in obj)
        self.image_id.append(obj["image_id"])
        self.category_id.append(obj["category_id"])
        self.bbox.extend(obj["bbox"])
        self.area.append(obj.get("area", math.nan))
        self.crowd.append(int(obj.get("iscrowd", 0)))
        return row

    def numpy(self, rows: list[int], positions: list[int]) -> dict[str, np.ndarray]:
        """The columns of ``rows`` (in that order) as arrays; ``bbox`` is ``float64[A, 4]``; ``position``: each
        row's index in the file's ``annotations`` list."""
        idx = np.asarray(rows, dtype=np.int64)
        return {
            "ann_id": np.frombuffer(self.ann_id, dtype=np.int64)[idx],
            "has_id": np.frombuffer(self.has_id, dtype=np.int8)[idx].astype(bool),
            "position": np.asarray(positions, dtype=np.int64),
            "image_id": np.frombuffer(self.image_id, dtype=np.int64)[idx],
            "category_id": np.frombuffer(self.category_id, dtype=np.int64)[idx],
            "bbox": np.frombuffer(self.bbox, dtype=np.float64).reshape(-1, 4)[idx],
            "area": np.frombuffer(self.area, dtype=np.float64)[idx],
            "crowd": np.frombuffer(self.crowd, dtype=np.int8)[idx].astype(bool),
        }


def _read_text(path: Path) -> str:
    """The file as text (its bytes are let go before the text is parsed)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"annotation file {path} does not exist; give --annotations a COCO instances JSON "
                        "(e.g. annotations/instances_train2017.json)") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; give --annotations a COCO instances JSON file") from None
    except OSError as exc:
        raise DataError(f"cannot read annotation file {path} ({exc.strerror or exc}); check the path") from None
    try:
        return decode_text(raw)  # a byte-order mark (some exporters write one; UTF-16: PowerShell) is not JSON
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give a COCO "
                        "annotation file (JSON)") from None


def _read_coco_json(path: Path, columns: _Columns) -> dict:
    """The top-level object of a COCO file, its annotations replaced by rows of ``columns``."""
    text = _read_text(path)
    try:
        data = json.loads(text, object_hook=columns.hook)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                        "give a COCO annotation file, or fix or download it again") from None
    except RecursionError:  # arrays nested thousands deep: Python's json gives up (no COCO file nests past 5)
        raise DataError(f"{path} nests its JSON too deeply to be a COCO annotation file; give the instances JSON "
                        "with \"images\", \"annotations\" and \"categories\"") from None
    if isinstance(data, list):
        raise DataError(f"{path} is a JSON list, not a COCO annotation file (a detection results file?); "
                        "give the instances JSON with \"images\", \"annotations\" and \"categories\"")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{path} is not a COCO annotation file: it has no \"{key}\" list; give the "
                            "instances JSON with \"images\", \"annotations\" and \"categories\"")
    return data


def _categories(data: dict, path: Path) -> tuple[list[str], list[int]]:
    """Class names and original ids, sorted by id; a bad, repeated or nameless category is an error."""
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            raise DataError(f"{path}, the category at position {i} of \"categories\": has no integer \"id\"; fix "
                            "the category list")
        where = f"{path}, category {cat['id']}"
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise DataError(f"{where}: \"name\" is missing or empty; give every category a name")
        if cat["id"] in by_id:
            raise DataError(f"{where}: the id appears twice; give every category its own id")
        if is_background(name):
            raise DataError(f"{where} is named {name!r}; {BACKGROUND_ADVICE}: delete the category and its "
                            "annotations (or rename it)")
        if name in by_name:
            raise DataError(f"{path}: categories {by_name[name]} and {cat['id']} are both named {name!r}; "
                            "rename one or merge them (their annotations would become one class)")
        by_id[cat["id"]], by_name[name] = name, cat["id"]
    if not by_id:
        raise DataError(f"{path}: \"categories\" is empty; a COCO annotation file lists its categories")
    ids = sorted(by_id)
    return [by_id[i] for i in ids], ids


def _unnamed(position: int) -> str:
    return f"the annotation at position {position} of \"annotations\" (it has no \"id\")"


def _annotation_rows(data: dict, path: Path, problems: list[str]) -> tuple[list[int], list[int]]:
    """The column rows of ``annotations`` in file order and their positions in the list; every other entry is
    a problem."""
    rows, positions = [], []
    for i, ann in enumerate(data["annotations"]):
        if type(ann) is _Row:
            rows.append(ann)
            positions.append(i)
            continue
        named = isinstance(ann, dict) and "id" in ann
        label = f"annotation {ann['id']!r}" if named else _unnamed(i)
        problem = _annotation_problem(ann) or "is not an annotation"
        problems.append(f"{path}, {label}: {problem}; fix it or delete the annotation")
    return rows, positions


def _repeated_ids(cols: dict, path: Path, problems: list[str]) -> None:
    """A problem for every annotation id used more than once."""
    ids = cols["ann_id"][cols["has_id"]]
    values, counts = np.unique(ids, return_counts=True)
    for value, count in zip(values[counts > 1].tolist(), counts[counts > 1].tolist()):
        images = cols["image_id"][cols["has_id"] & (cols["ann_id"] == value)].tolist()
        problems.append(f"{path}: annotation id {value} appears {count} times (images "
                        f"{', '.join(map(str, images))}); give every annotation its own id")


def _lookup(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index into keys, found)`` of each value; ``keys`` distinct, any order."""
    if len(keys) == 0:
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], values), len(keys) - 1)
    return order[pos], keys[order][pos] == values


def _name(cols: dict[str, np.ndarray], j: int) -> str:
    """An annotation as messages name it: its id and its image."""
    if not cols["has_id"][j]:
        return f"{_unnamed(int(cols['position'][j]))[:-1]}, image {cols['image_id'][j]})"
    return f"annotation {cols['ann_id'][j]} (image {cols['image_id'][j]})"


def _box_masks(boxes: np.ndarray, clipped: np.ndarray, cols: dict) -> dict[str, np.ndarray]:
    """Masks over the annotations: ``negative`` and ``far`` (errors), ``zero`` and ``outside`` (dropped),
    ``clipped`` (kept, clipped)."""
    w, h = cols["bbox"][:, 2], cols["bbox"][:, 3]
    negative = (w < 0) | (h < 0)
    zero = ~negative & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    off = np.abs(boxes - clipped).max(axis=1) if len(boxes) else np.zeros(0)
    far = ~negative & ~zero & (off > CLIP_TOLERANCE)
    outside = ~negative & ~zero & ~far & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    was_clipped = ~negative & ~zero & ~far & ~outside & (off > 0)
    return {"negative": negative, "zero": zero, "far": far, "outside": outside, "clipped": was_clipped, "off": off}


def _drop_warning(path: Path, masks: dict, cols: dict) -> str | None:
    """One warning that counts the clipped and the dropped boxes, with the first of each."""
    parts = []
    for key, what in (("clipped", f"boxes reaching at most {CLIP_TOLERANCE:g} px outside their image, clipped"),
                      ("zero", "boxes of zero width or height, dropped"),
                      ("outside", "boxes outside their image, dropped")):
        found = np.nonzero(masks[key])[0]
        if len(found):
            parts.append(f"{what}: {len(found)} (first: {_name(cols, int(found[0]))})")
    return f"{path}: " + "; ".join(parts) if parts else None


def _convert(cols: dict, images: list[dict], class_ids: list[int], path: Path, problems: list[str],
             bad_image_ids: set[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(keep bool[A], image index int[A], label int[A], clipped boxes float[A, 4], masks)`` (the masks of
    :func:`_box_masks`); unknown images and categories and bad boxes are problems. Annotations of
    ``bad_image_ids`` (images whose entry is already a problem) are left alone."""
    img_idx, img_found = _lookup(np.asarray([img["id"] for img in images], dtype=np.int64), cols["image_id"])
    label, cat_found = _lookup(np.asarray(class_ids, dtype=np.int64), cols["category_id"])
    known_bad = np.isin(cols["image_id"], np.fromiter(bad_image_ids, dtype=np.int64, count=len(bad_image_ids)))
    for j in np.nonzero(~img_found & ~known_bad)[0]:
        problems.append(f"{path}, {_name(cols, j)}: image id {cols['image_id'][j]} is not in \"images\"; add the "
                        "image or delete the annotation")
    for j in np.nonzero(img_found & ~cat_found)[0]:
        problems.append(f"{path}, {_name(cols, j)}: category id {cols['category_id'][j]} is not in "
                        "\"categories\"; add the category or fix the annotation")
    sizes = np.asarray([(img["width"], img["height"]) for img in images], dtype=np.float64).reshape(-1, 2)
    size = sizes[img_idx] if len(images) else np.ones((len(img_idx), 2))
    x, y, w, h = cols["bbox"].T
    boxes = np.stack((x, y, x + w, y + h), axis=1)
    limit = np.concatenate((size, size), axis=1)
    clipped = np.minimum(np.maximum(boxes, 0.0), limit)
    masks = _box_masks(boxes, clipped, cols)
    valid = img_found & cat_found
    for j in np.nonzero(valid & masks["negative"])[0]:
        problems.append(f"{path}, {_name(cols, j)}: bbox {cols['bbox'][j].tolist()} has a negative width or "
                        "height; fix the box or delete the annotation")
    for j in np.nonzero(valid & masks["far"])[0]:
        problems.append(f"{path}, {_name(cols, j)}: bbox {cols['bbox'][j].tolist()} lies {masks['off'][j]:g} px "
                        f"outside the {size[j, 0]:g}x{size[j, 1]:g} image; fix the box or delete the annotation")
    keep = valid & ~(masks["negative"] | masks["zero"] | masks["far"] | masks["outside"])
    return keep, img_idx, label, clipped, masks


def _records(images: list[dict], cols: dict, keep: np.ndarray, img_idx: np.ndarray, label: np.ndarray,
             boxes: np.ndarray) -> list[ImageRecord]:
    """One record per image, its kept boxes in file order."""
    order = np.nonzero(keep)[0]
    order = order[np.argsort(img_idx[order], kind="stable")]
    start = np.concatenate(([0], np.cumsum(np.bincount(img_idx[order], minlength=len(images))))).tolist()
    w, h = cols["bbox"][:, 2], cols["bbox"][:, 3]
    area = np.where(np.isnan(cols["area"]), w * h, cols["area"])
    box_l, label_l = boxes[order].tolist(), label[order].tolist()
    crowd_l, area_l = cols["crowd"][order].tolist(), area[order].tolist()
    records = []
    for i, img in enumerate(images):
        a, b = start[i], start[i + 1]
        records.append(ImageRecord(
            str(img["id"]), img["file_name"], img["width"], img["height"], boxes=box_l[a:b], labels=label_l[a:b],
            difficult=crowd_l[a:b], crowd=crowd_l[a:b], area=area_l[a:b], coco_id=img["id"]))
    return records


def prepare_coco(annotations: str | os.PathLike, images_dir: str | os.PathLike, *, drop_empty: bool = False,
                 name: str | None = None, on_warning: OnNote | None = None,
                 progress: Progress | None = None) -> Manifest:
    """A COCO annotation file and its image folder as a manifest (see the module docstring for the rules).

    ``images_dir`` is the folder ``file_name`` is relative to and becomes the manifest root; ``name``
    defaults to the annotation file's name without ``.json``. Every problem of the data is collected
    and raised as one ``DataError``; clipped and dropped boxes are counted in one ``on_warning`` call.
    ``progress(done, total)`` follows the check of the image files (their headers are read).
    """
    path, root = Path(annotations), Path(os.path.abspath(images_dir))
    warn = on_warning or _log.warning
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; give --images the folder that holds the images "
                        f"of {path}")
    columns = _Columns()
    data = _read_coco_json(path, columns)
    classes, class_ids = _categories(data, path)
    problems: list[str] = []
    images = good_images(data, path, problems)
    good = {img["id"] for img in images}
    bad_ids = {img["id"] for img in data["images"] if isinstance(img, dict) and is_int(img.get("id"))} - good
    cols = columns.numpy(*_annotation_rows(data, path, problems))
    del data, columns
    _repeated_ids(cols, path, problems)
    keep, img_idx, label, boxes, masks = _convert(cols, images, class_ids, path, problems, bad_ids)
    check_image_files(images, root, path, problems, progress)
    if problems:
        raise problems_error(problems)
    message = _drop_warning(path, masks, cols)
    if message:
        warn(message)
    records = _records(images, cols, keep, img_idx, label, boxes)
    if drop_empty:
        kept = [rec for rec in records if rec.boxes]
        if len(kept) < len(records):
            warn(f"{path}: images without objects left out (--drop-empty): {len(records) - len(kept)}")
        records = kept
    if not records:
        raise DataError(f"{path}: no image has an object; nothing to train on (leave out --drop-empty to keep "
                        "images without objects)")
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return Manifest(name=name or stem, classes=classes, root=str(root), images=records, category_ids=class_ids)
