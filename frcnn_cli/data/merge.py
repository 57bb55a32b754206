"""Several manifests as one (``frcnn prepare merge``): the paper's 07+12 and 07++12 training sets.

The parts must have the same classes in the same order (and the same COCO category ids, if any), and all or
none of them be images-only. The merged manifest lists the parts' images in the order given, each part's in
its own order; its root is the deepest folder holding every part's root, and each image path is rewritten
relative to it (absolute paths stay as they are), so every path still names the same file.

Image ids stay unique:

- an id of a later part that an earlier part already has, for **the same image file**, means the parts overlap
  (e.g. VOC2007 trainval and a manifest holding VOC2007 trainval again): an error, since the image would be
  trained on twice;
- for **another file**, the later image is renamed ``<part name>/<id>`` (the part's manifest name), which is
  recorded, and an error only when that name is taken too.

The provenance of each part goes into the manifest's ``parts`` (``manifest.py``): name, file, content hash,
first image index, number of images, ids renamed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .manifest import ImageRecord, Manifest, manifest_hash


def _check_parts(parts: Sequence[tuple[Path, Manifest]]) -> None:
    if len(parts) < 2:
        raise DataError("prepare merge needs at least two manifests; give them all, e.g. voc0712-trainval.json "
                        "voc07-test.json")
    first_path, first = parts[0]
    for path, part in parts[1:]:
        if list(part.classes) != list(first.classes):
            raise DataError(f"{path} has the classes {', '.join(part.classes)} but {first_path} has "
                            f"{', '.join(first.classes)}; give manifests of the same classes in the same order")
        if part.category_ids != first.category_ids:
            raise DataError(f"{path} and {first_path} give the classes different COCO category ids; give "
                            "manifests prepared from the same COCO categories to merge")
        if part.annotated != first.annotated:
            without, having = (path, first_path) if not part.annotated else (first_path, path)
            raise DataError(f"{without} holds images without annotations but {having} is annotated; give "
                            "annotated manifests to merge for training (an images-only test set goes on its own)")


def _common_root(parts: Sequence[tuple[Path, Manifest]]) -> str:
    roots = [os.path.abspath(part.root) for _, part in parts]
    try:
        return os.path.commonpath(roots)
    except ValueError:  # roots on different drives: every path becomes absolute
        return roots[0]


def _moved(rec: ImageRecord, part: Manifest, root: str) -> str:
    """``rec``'s path relative to the merged ``root`` (absolute when it cannot be)."""
    if os.path.isabs(rec.path):
        return rec.path
    full = os.path.normpath(os.path.join(os.path.abspath(part.root), rec.path))
    try:
        rel = os.path.relpath(full, root)
    except ValueError:
        return full
    return full if rel.split(os.sep)[0] == os.pardir else Path(rel).as_posix()


def merge_manifests(parts: Sequence[tuple[str | os.PathLike, Manifest]], name: str) -> Manifest:
    """One manifest named ``name`` holding every image of ``parts`` (``(path, manifest)`` pairs), as the module
    docstring says; a ``DataError`` names the parts that cannot be merged."""
    parts = [(Path(path), part) for path, part in parts]
    _check_parts(parts)
    root = _common_root(parts)
    images: list[ImageRecord] = []
    owner: dict[str, tuple[Path, str]] = {}  # id -> (part file, image file)
    records = []
    for path, part in parts:
        renamed, first = 0, len(images)
        for rec in part.images:
            file = str(part.image_path(rec))
            new_id = rec.id
            if new_id in owner:
                other, other_file = owner[new_id]
                if os.path.realpath(other_file) == os.path.realpath(file):
                    raise DataError(f"image {rec.id!r} ({file}) is in both {other} and {path}: the parts overlap; "
                                    "give disjoint sets (e.g. VOC2007 trainval and VOC2007 test)")
                new_id = f"{part.name}/{rec.id}"
                if new_id in owner:
                    raise DataError(f"image {rec.id!r} of {path} clashes with an image of {other} and its new id "
                                    f"{new_id!r} is taken too; give the parts distinct \"name\"s")
                renamed += 1
            owner[new_id] = (path, file)
            images.append(dataclasses.replace(rec, id=new_id, path=_moved(rec, part, root)))
        records.append({"name": part.name, "file": str(path.resolve()), "hash": manifest_hash(part),
                        "first": first, "images": len(part.images), "renamed": renamed})
    _check_coco_ids(images, parts)
    first = parts[0][1]
    return Manifest(name=name, classes=list(first.classes), root=root, images=images,
                    category_ids=first.category_ids, annotated=first.annotated, parts=records)


def _check_coco_ids(images: list[ImageRecord], parts: Sequence[tuple[Path, Manifest]]) -> None:
    ids = [rec.coco_id for rec in images if rec.coco_id is not None]
    if len(ids) != len(set(ids)):
        raise DataError(f"the COCO image ids of {', '.join(str(p) for p, _ in parts)} overlap; COCO evaluation needs "
                        "them unique: give manifests of distinct COCO images")
