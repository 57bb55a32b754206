"""The checks of a manifest's JSON (``read_manifest`` and ``write_manifest`` run them), and the format's constants.

``_validate`` checks a whole parsed file; ``_validate_head`` its top-level keys; ``_validated_images`` each image
entry as it streams past (``_record_problem``, ``_optional_problem``). Every problem is a ``DataError`` that names
the file and the image. The dataclasses, reading and writing are in ``manifest.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import DataError

FORMAT = "frcnn-manifest"
VERSION = 1
MAX_SIDE = 65_535  # pixels: JPEG's limit, and far beyond any image a detector is trained on


def _validate(data: Any, where: str) -> None:
    """Check the format, version and top-level fields, then every image."""
    _validate_head(data, where)
    for rec in _validated_images(data["images"], len(data["classes"]), where):
        if data.get("annotated") is False and rec["boxes"]:
            raise DataError(f"manifest {where}, image {rec['id']}: has boxes in an images-only manifest "
                            "(\"annotated\": false); remove the flag or the boxes, or run `frcnn prepare` again")


def _validate_head(data: Any, where: str) -> None:
    """Check the format, version and top-level fields (``images`` only for being a list)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{where} is not a frcnn manifest (no \"format\": \"{FORMAT}\"); use `frcnn prepare`")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DataError(f"manifest {where} has an invalid version {version!r}; run `frcnn prepare` again")
    if version > VERSION:
        raise DataError(
            f"manifest {where} has version {version}, newer than this frcnn reads (version {VERSION}); "
            "upgrade frcnn or prepare the data again with this version"
        )
    for key, kind in (("name", str), ("root", str), ("classes", list), ("images", list)):
        if not isinstance(data.get(key), kind):
            raise DataError(
                f"manifest {where}: \"{key}\" is missing or not a {kind.__name__}; run `frcnn prepare` again"
            )
    classes = data["classes"]
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise DataError(f"manifest {where}: \"classes\" must be distinct non-empty names; fix the class list")
    category_ids = data.get("category_ids")
    if category_ids is not None and not (
            isinstance(category_ids, list) and len(category_ids) == len(classes)
            and all(_is_int(v) for v in category_ids) and len(set(category_ids)) == len(category_ids)):
        raise DataError(f"manifest {where}: \"category_ids\" must be {len(classes)} distinct integers, one per "
                        "class; fix it or run `frcnn prepare coco` again")
    if not isinstance(data.get("annotated", True), bool):
        raise DataError(f"manifest {where}: \"annotated\" must be true or false; fix it or run `frcnn prepare` again")
    parts = data.get("parts")
    if parts is not None and not (isinstance(parts, list) and all(isinstance(p, dict) for p in parts)):
        raise DataError(f"manifest {where}: \"parts\" must be a list of objects; fix it or run `frcnn prepare "
                        "merge` again")


def _validated_images(images: Iterable[Any], num_classes: int, where: str) -> Iterator[dict[str, Any]]:
    """Every image entry, checked (and unique ids) before it is yielded; the first problem is a DataError."""
    seen: set[str] = set()
    coco_ids: set[int] = set()
    for i, rec in enumerate(images):
        problem = _record_problem(rec, num_classes)
        named = isinstance(rec, dict) and isinstance(rec.get("id"), str)
        image = f"image {i}" + (f" ({rec['id']})" if named else "")
        if problem is None and rec["id"] in seen:
            problem = "the id appears twice; image ids must be unique"
        if problem is None and rec.get("coco_id") in coco_ids:
            problem = f"coco_id {rec['coco_id']} appears twice; COCO image ids must be unique"
        if problem is not None:
            raise DataError(f"manifest {where}, {image}: {problem}; fix it or run `frcnn prepare` again")
        seen.add(rec["id"])
        if "coco_id" in rec:
            coco_ids.add(rec["coco_id"])
        yield rec


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _record_problem(rec: Any, num_classes: int) -> str | None:
    """What is wrong with one image entry, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    for key in ("id", "path"):
        if not isinstance(rec.get(key), str) or not rec[key] or "\x00" in rec[key]:
            return f"\"{key}\" is missing, empty or holds a NUL character"
    path = rec["path"]
    if not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] == os.pardir:
        return (f"path {path!r} leaves the manifest root with '..'; use a path inside the root or an "
                "absolute path")
    width, height = rec.get("width"), rec.get("height")
    if not (_is_int(width) and _is_int(height) and 0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        return f"width/height {width!r}x{height!r} must be positive integers of at most {MAX_SIDE} pixels"
    boxes, labels, difficult = rec.get("boxes"), rec.get("labels"), rec.get("difficult")
    if not (isinstance(boxes, list) and isinstance(labels, list) and isinstance(difficult, list)):
        return "\"boxes\", \"labels\" and \"difficult\" must be lists"
    if not len(boxes) == len(labels) == len(difficult):
        return f"{len(boxes)} boxes but {len(labels)} labels and {len(difficult)} difficult flags"
    if not all(isinstance(f, bool) or f in (0, 1) for f in difficult):
        return "difficult flags must be true or false"
    problem = _optional_problem(rec, len(boxes))
    if problem is not None:
        return problem
    for j, (box, label) in enumerate(zip(boxes, labels)):
        if not _is_int(label) or not 0 <= label < num_classes:
            return f"box {j}: label {label!r} is not an index into the {num_classes} classes"
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            return f"box {j}: {box!r} is not [x1, y1, x2, y2] with finite numbers"
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            return f"box {j}: {box} is empty or outside the {width}x{height} image"
    return None


def _optional_problem(rec: dict[str, Any], num_boxes: int) -> str | None:
    """What is wrong with an image's optional keys (``truncated``, ``crowd``, ``area``, ``coco_id``), or None."""
    for key in ("truncated", "crowd", "area"):
        values = rec.get(key)
        if values is not None and (not isinstance(values, list) or len(values) != num_boxes):
            return f"\"{key}\" must be a list with one {'number' if key == 'area' else 'flag'} per box"
    for key in ("truncated", "crowd"):
        if not all(isinstance(f, bool) or f in (0, 1) for f in rec.get(key) or []):
            return f"{key} flags must be true or false"
    crowd = rec.get("crowd") or []
    for j, (is_crowd, hard) in enumerate(zip(crowd, rec["difficult"])):
        if is_crowd and not hard:
            return f"box {j} is a crowd region but not difficult; crowd regions must also be difficult"
    if not all(_is_number(v) and v >= 0 for v in rec.get("area") or []):
        return "\"area\" values must be finite numbers >= 0"
    if "coco_id" in rec and not _is_int(rec["coco_id"]):
        return f"coco_id {rec['coco_id']!r} is not an integer"
    return None
