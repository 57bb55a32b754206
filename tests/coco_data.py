"""A small COCO-format set written by the tests (tests/test_coco_prepare.py, tests/test_coco_eval.py).

Four images (ids 397133, 7, 42, 1000; one in a sub-folder; 42 without annotations) and three
categories listed out of order with non-contiguous ids (90 toothbrush, 3 car, 18 dog). Image 397133
holds a crowd region (RLE mask); image 1000 a dog whose mask area (900, small) and box area (1200,
medium) fall in different COCO size ranges. With ``degenerate=True`` image 7 also holds a zero-width
box and a box reaching 0.5 px past its right edge (prepare drops the one and clips the other).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from PIL import Image

CATEGORIES = [{"id": 90, "name": "toothbrush", "supercategory": "indoor"},
              {"id": 3, "name": "car", "supercategory": "vehicle"},
              {"id": 18, "name": "dog", "supercategory": "animal"}]
IMAGES = [{"id": 397133, "file_name": "a.jpg", "width": 100, "height": 80},
          {"id": 7, "file_name": "sub/b.jpg", "width": 60, "height": 50},
          {"id": 42, "file_name": "c.jpg", "width": 40, "height": 30},
          {"id": 1000, "file_name": "d.jpg", "width": 80, "height": 80}]
_POLYGON = [[10.0, 10.0, 30.0, 10.0, 30.0, 40.0]]
ANNOTATIONS = [
    {"id": 1, "image_id": 397133, "category_id": 18, "bbox": [10, 10, 20, 30], "area": 450.0, "iscrowd": 0},
    {"id": 2, "image_id": 397133, "category_id": 3, "bbox": [50, 20, 40.5, 50], "area": 2025.0, "iscrowd": 0},
    {"id": 3, "image_id": 397133, "category_id": 3, "bbox": [0, 0, 100, 40], "area": 3500.0, "iscrowd": 1,
     "segmentation": {"counts": [0, 40, 40], "size": [80, 100]}},
    {"id": 5, "image_id": 7, "category_id": 90, "bbox": [30, 20, 29.5, 30], "area": 600.0, "iscrowd": 0},
    {"id": 6, "image_id": 1000, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 700.0, "iscrowd": 0},
    {"id": 7, "image_id": 1000, "category_id": 18, "bbox": [40, 40, 40, 30], "area": 900.0, "iscrowd": 0},
    {"id": 8, "image_id": 1000, "category_id": 3, "bbox": [5, 50, 20, 20], "area": 400.0, "iscrowd": 0},
]
ZERO_WIDTH = {"id": 4, "image_id": 7, "category_id": 18, "bbox": [5, 5, 0, 12], "area": 0.0, "iscrowd": 0}


def coco_dict(*, degenerate: bool = True) -> dict:
    """The set as a COCO dict; polygons on every non-crowd annotation, as COCO files have them."""
    annotations = copy.deepcopy(ANNOTATIONS)
    for ann in annotations:
        ann.setdefault("segmentation", _POLYGON)
    if degenerate:
        annotations.insert(3, dict(ZERO_WIDTH, segmentation=[]))
        annotations[4]["bbox"] = [30, 20, 30.5, 30]  # x2 = 60.5 on a 60-pixel-wide image
    return {"info": {"description": "frcnn test set"}, "licenses": [], "images": copy.deepcopy(IMAGES),
            "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


def write_coco_set(folder: Path, *, degenerate: bool = True, data: dict | None = None) -> tuple[Path, Path]:
    """``(instances.json, image folder)`` under ``folder``; the image files are grey PNGs of the sizes of
    ``IMAGES`` (prepare reads their headers), whatever their names' suffix."""
    images = folder / "images"
    for img in IMAGES:
        (images / img["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (img["width"], img["height"]), 128).save(images / img["file_name"], format="PNG")
    path = folder / "instances.json"
    path.write_text(json.dumps(coco_dict(degenerate=degenerate) if data is None else data), encoding="utf-8")
    return path, images
