"""The prepared-dataset manifest: one JSON file that lists images, their sizes and their boxes.

Layout (shared/DESIGN.md)::

    {"format": "frcnn-manifest", "version": 1, "name": "voc2007-trainval", "classes": ["aeroplane", ...],
     "root": "/abs/VOCdevkit/VOC2007",
     "images": [{"id": "000005", "path": "JPEGImages/000005.jpg", "width": 500, "height": 375,
                 "boxes": [[262.0, 210.0, 323.0, 339.0], ...], "labels": [8, ...], "difficult": [false, ...],
                 "truncated": [true, ...]}, ...]}

Boxes are 0-based continuous ``x1 y1 x2 y2`` inside ``[0, width] x [0, height]`` with ``x1 < x2``,
``y1 < y2``; ``labels`` index ``classes`` (no background entry); ``truncated`` is optional. Image paths
are relative to ``root`` (or absolute); a relative ``root`` is taken relative to the manifest's folder.
The content hash (``manifest_hash``) covers the classes and the images, not the name or the root, so a
dataset moved to another disk keeps its identity.

Optional keys kept from COCO-format data (``data/coco.py``), each absent from other manifests (which
then hash exactly as before): top-level ``category_ids`` (the original category id of each class,
distinct integers), and per image ``coco_id`` (the original image id, unique), ``crowd`` (one flag per
box: a crowd region, which is always also ``difficult``: never a training target, an ignore region in
evaluation) and ``area`` (one number >= 0 per box: COCO's object area, which COCO evaluation uses for
its small / medium / large ranges).

Optional keys of other manifests, likewise absent unless used: ``"annotated": false`` marks an images-only
manifest (a test set whose annotations are not public, e.g. VOC2012 test: every image without boxes);
commands that need ground truth refuse it (``require_annotations``), and the hash covers the flag.
``"parts"`` (``frcnn prepare merge``) records where a merged manifest's images came from: per part its
manifest ``name``, ``file``, ``hash``, ``first`` image index, ``images`` and ``renamed`` ids; provenance, not
identity (not hashed).

The checks of the JSON (``_validate`` and its helpers) and the format's constants (``FORMAT``, ``VERSION``,
``MAX_SIDE``) are in ``manifest_checks.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import DataError
from ..file_kinds import other_kind, read_text
from .manifest_checks import (
    FORMAT,
    MAX_SIDE,  # noqa: F401  (its home is manifest_checks.py; coco_images.py and decode.py import it from here)
    VERSION,
    _validate,
    _validate_head,
    _validated_images,
)


@dataclass
class ImageRecord:
    """One image: ``boxes`` is a list of ``[x1, y1, x2, y2]`` (0-based continuous), one label per box."""

    id: str
    path: str
    width: int
    height: int
    boxes: list[list[float]]
    labels: list[int]
    difficult: list[bool]
    truncated: list[bool] | None = None
    crowd: list[bool] | None = None  # COCO ``iscrowd`` regions (always difficult too)
    area: list[float] | None = None  # COCO ``area`` of each box (the mask's area, not the box's)
    coco_id: int | None = None  # the image id of the COCO file it came from

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types with canonical number types (so a written and re-read record hashes the same)."""
        out: dict[str, Any] = {
            "id": self.id, "path": self.path, "width": int(self.width), "height": int(self.height),
            "boxes": [[float(v) for v in box] for box in self.boxes],
            "labels": [int(v) for v in self.labels],
            "difficult": [bool(v) for v in self.difficult],
        }
        if self.truncated is not None:
            out["truncated"] = [bool(v) for v in self.truncated]
        if self.crowd is not None:
            out["crowd"] = [bool(v) for v in self.crowd]
        if self.area is not None:
            out["area"] = [float(v) for v in self.area]
        if self.coco_id is not None:
            out["coco_id"] = int(self.coco_id)
        return out


@dataclass
class Manifest:
    """A named list of images with their class names; ``root`` is the folder image paths are relative to.

    ``category_ids``: the original COCO category id of each class (COCO-format data only), else None.
    """

    name: str
    classes: list[str]
    root: str
    images: list[ImageRecord]
    category_ids: list[int] | None = None
    annotated: bool = True  # False: an images-only manifest (no ground truth at all)
    parts: list[dict[str, Any]] | None = None  # a merged manifest's parts (prepare merge)

    def image_path(self, rec: ImageRecord) -> Path:
        """The file of ``rec``; a relative path that climbs out of ``root`` with ``..`` is refused."""
        path = Path(rec.path)
        if path.is_absolute():
            return path
        root = os.path.normpath(self.root)
        full = os.path.normpath(os.path.join(root, rec.path))
        if os.path.commonpath([root, full]) != root:
            raise DataError(
                f"manifest {self.name!r}, image {rec.id}: path {rec.path!r} leaves the manifest root "
                f"{self.root}; use a path inside the root or an absolute path"
            )
        return Path(full)

    def to_dict(self) -> dict[str, Any]:
        return {**self.head_dict(), "images": [rec.to_dict() for rec in self.images]}

    def head_dict(self) -> dict[str, Any]:
        """Every top-level key but ``images``, in the order they are written."""
        head: dict[str, Any] = {"format": FORMAT, "version": VERSION, "name": self.name,
                                "classes": list(self.classes)}
        if self.category_ids is not None:
            head["category_ids"] = [int(v) for v in self.category_ids]
        if not self.annotated:
            head["annotated"] = False
        if self.parts is not None:
            head["parts"] = list(self.parts)
        head["root"] = self.root
        return head


def id_has_whitespace(image_id: str) -> bool:
    """Whether an image id holds whitespace (a space, a tab, a newline), which the devkit's space-separated
    result files hold only escaped (``evaluate/voc.py:escape_id``); ``prepare`` warns about such ids."""
    return any(c.isspace() for c in image_id)


def manifest_hash(manifest: Manifest) -> str:
    """sha256 (64 hex digits) of the canonical JSON of the classes (with ``category_ids`` when present)
    and the images."""
    content: dict[str, Any] = {"classes": list(manifest.classes),
                               "images": [rec.to_dict() for rec in manifest.images]}
    if manifest.category_ids is not None:
        content["category_ids"] = [int(v) for v in manifest.category_ids]
    if not manifest.annotated:
        content["annotated"] = False
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Validate ``manifest`` and write it atomically to ``path`` (one image per line).

    Every image is validated before anything is written; only the output's text is held at once (one
    line per image), not a second copy of the manifest as dicts (COCO train2017: 860k boxes).
    """
    path = Path(path)
    head = manifest.head_dict()
    _validate_head({**head, "images": []}, str(path))
    records = (rec.to_dict() for rec in manifest.images)
    lines = [json.dumps(rec, ensure_ascii=False, allow_nan=False)
             for rec in _validated_images(records, len(manifest.classes), str(path))]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "images": [\n')
        for i, line in enumerate(lines):
            f.write(",\n " + line if i else " " + line)
        f.write("\n]}\n")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; every problem is a ``DataError`` naming the file (and the image).

    >>> manifest = read_manifest("synth/test.json")  # doctest: +SKIP
    >>> manifest.classes, len(manifest.images)  # doctest: +SKIP
    (['circle', 'bottle', 'car', 'triangle', 'donut'], 60)
    """
    path = Path(path)
    try:
        text = read_text(path)  # a manifest edited in Notepad keeps its byte-order mark
    except FileNotFoundError:
        raise DataError(f"manifest {path} does not exist; create it with `frcnn prepare`") from None
    except (OSError, UnicodeDecodeError) as exc:
        _refuse_other_kind(path)
        raise DataError(f"cannot read manifest {path}: {exc}; run `frcnn prepare` again") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _refuse_other_kind(path)
        raise DataError(
            f"manifest {path} is not valid JSON (line {exc.lineno}: {exc.msg}); the file is corrupt or "
            "truncated: run `frcnn prepare` again"
        ) from None
    except RecursionError:  # brackets nested thousands deep: no manifest, and json's own limit
        raise DataError(f"manifest {path} nests its JSON too deeply to be a manifest; run `frcnn prepare` "
                        "again") from None
    if not (isinstance(data, dict) and data.get("format") == FORMAT):
        _refuse_other_kind(path)
    _validate(data, str(path))
    root = data["root"]
    if not os.path.isabs(root):
        root = os.path.normpath(os.path.join(os.path.abspath(path.parent), root))
    images = [_record(rec) for rec in data["images"]]
    category_ids = data.get("category_ids")
    return Manifest(name=data["name"], classes=list(data["classes"]), root=root, images=images,
                    category_ids=None if category_ids is None else list(category_ids),
                    annotated=data.get("annotated", True), parts=data.get("parts"))


def _refuse_other_kind(path: Path) -> None:
    """A ``DataError`` naming what ``path`` is when it is a file of another kind (a proposal file, a checkpoint, a
    COCO file) rather than a manifest, which a damaged manifest's message would send back to `frcnn prepare`."""
    kind = other_kind(path, "manifest", "json")
    if kind is not None:
        raise DataError(f"{path} is {kind}, not a frcnn manifest; give the .json file written by `frcnn prepare`")


def require_annotations(manifest: Manifest, path: str | os.PathLike, use: str) -> None:
    """A ``DataError`` for an images-only manifest given to a command that needs ground truth; ``use`` says
    what the user can do instead."""
    if not manifest.annotated:
        raise DataError(f"manifest {path} ({manifest.name}) holds images without annotations (an images-only "
                        f"manifest, e.g. VOC2012 test); {use}")


def require_objects(manifest: Manifest, path: str | os.PathLike, use: str) -> None:
    """A ``DataError`` for a manifest without an object that counts (a box that is not difficult: difficult boxes
    and crowd regions are neither targets nor scored) given to a command that needs one; ``use`` says why and what
    to do instead."""
    if any(not hard for rec in manifest.images for hard in rec.difficult):
        return
    boxes = sum(len(rec.boxes) for rec in manifest.images)
    what = "no box at all" if boxes == 0 else f"only {boxes} difficult box(es) (difficult objects, crowd regions)"
    raise DataError(f"manifest {path} holds {len(manifest.images)} image(s) but {what}: {use}")


def _flags(values: list | None) -> list[bool] | None:
    return None if values is None else [bool(v) for v in values]


def _record(rec: dict[str, Any]) -> ImageRecord:
    area = rec.get("area")
    return ImageRecord(
        id=rec["id"], path=rec["path"], width=rec["width"], height=rec["height"],
        boxes=[[float(v) for v in box] for box in rec["boxes"]], labels=list(rec["labels"]),
        difficult=[bool(v) for v in rec["difficult"]], truncated=_flags(rec.get("truncated")),
        crowd=_flags(rec.get("crowd")), area=None if area is None else [float(v) for v in area],
        coco_id=rec.get("coco_id"),
    )


def split_manifest(manifest: Manifest, fraction: float, seed: int) -> tuple[Manifest, Manifest]:
    """Disjoint ``(train, val)``; val holds ``round(fraction * n)`` images (1 .. n-1) drawn by ``seed``.

    Order within each part is the manifest's; the val manifest is named ``<name>.val``.
    """
    n = len(manifest.images)
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction {fraction} must be between 0 and 1 (e.g. 0.1)")
    if n < 2:
        raise DataError(f"{manifest.name} has {n} image(s); a validation split needs at least 2")
    n_val = min(max(round(n * fraction), 1), n - 1)
    chosen = set(random.Random(seed).sample(sorted(rec.id for rec in manifest.images), n_val))
    train = [rec for rec in manifest.images if rec.id not in chosen]
    val = [rec for rec in manifest.images if rec.id in chosen]
    ids = manifest.category_ids
    return (Manifest(manifest.name, list(manifest.classes), manifest.root, train, ids),
            Manifest(f"{manifest.name}.val", list(manifest.classes), manifest.root, val, ids))


@dataclass
class PrepareReport:
    """The prepare summary: per class ``(objects, difficult, images)``, sizes as ``(width, height)``."""

    name: str
    images: int
    objects: int
    difficult: int
    empty_images: int
    per_class: dict[str, tuple[int, int, int]]
    min_size: tuple[int, int]
    max_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)
    crowd: int = 0  # crowd regions (COCO's iscrowd), counted among the difficult ones

    @property
    def classes_without_objects(self) -> list[str]:
        """Classes with no object but difficult ones: training never sees them (difficult boxes are no targets)."""
        return [name for name, (n, hard, _) in self.per_class.items() if n - hard == 0]

    @classmethod
    def from_manifest(cls, manifest: Manifest, warnings: Sequence[str] = ()) -> PrepareReport:
        k = len(manifest.classes)
        objects, hard, images = [0] * k, [0] * k, [0] * k
        for rec in manifest.images:
            for label, diff in zip(rec.labels, rec.difficult):
                objects[label] += 1
                hard[label] += int(diff)
            for label in set(rec.labels):
                images[label] += 1
        widths = [rec.width for rec in manifest.images] or [0]
        heights = [rec.height for rec in manifest.images] or [0]
        return cls(
            name=manifest.name, images=len(manifest.images), objects=sum(objects), difficult=sum(hard),
            empty_images=sum(1 for rec in manifest.images if not rec.boxes),
            per_class={c: (objects[i], hard[i], images[i]) for i, c in enumerate(manifest.classes)},
            min_size=(min(widths), min(heights)), max_size=(max(widths), max(heights)),
            warnings=list(warnings), crowd=sum(sum(rec.crowd or ()) for rec in manifest.images),
        )
