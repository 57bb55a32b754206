"""Proposals made outside frcnn (Selective Search, EdgeBoxes, any tool) into the HDF5 proposal store, so that
``train-detector --proposals`` and ``eval --test-proposals`` take them (``frcnn prepare proposals``).

Each manifest image gets the file's boxes of its id (``proposal_files.read_proposal_file``), then:

1. converted to frcnn's boxes (0-based continuous ``x1 y1 x2 y2``, original pixels) by the file's layout,
   ``BOX_FORMATS``: R-CNN's ``yxyx1`` (1-based inclusive ``[y1 x1 y2 x2]``: ``x1-1, y1-1, x2, y2``, as a VOC
   box), ``xyxy1`` (1-based inclusive ``[x1 y1 x2 y2]``), ``xyxy`` (frcnn's own), ``xywh`` (0-based corner and
   size, OpenCV's Selective Search and EdgeBoxes), ``xywh1`` (1-based corner and size, the MATLAB EdgeBoxes
   toolbox's ``bbs``: ``x-1, y-1, x-1+w, y-1+h``);
2. clipped to the image; boxes left empty (no width or no height) dropped; exact duplicates dropped, the
   first kept (py-faster-rcnn's ``unique_boxes``);
3. ordered: by the file's scores when it has them (highest first, ties in file order), else in file order,
   which is Selective Search's and EdgeBoxes' rank; a file without scores gets the **rank score**
   ``(R - r) / R`` for its r-th box (0-based) of R kept, so the store's score order is the file's order;
4. cut to the first ``top_n`` (``--top-n``; the paper's SS rows use 2000).

Images of the manifest that the file lacks are an error naming the first; images of the file that the
manifest lacks are left out (a file of the whole VOC test set serves a manifest of part of it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..callbacks import OnNote, Progress
from ..errors import DataError
from .manifest import Manifest, manifest_hash
from .proposal_files import ProposalFile, read_proposal_files
from .proposal_store import ProposalWriter

BOX_FORMATS = ("yxyx1", "xyxy1", "xyxy", "xywh", "xywh1")
DEFAULT_FORMAT = {"mat": "yxyx1", "json": "xyxy", "csv": "xyxy"}
OUTSIDE_PX = 1.0  # a box reaching further out of its image than this is counted (and clipped)
WRONG_LAYOUT = 0.1  # more than this fraction of such boxes: the file was read in the wrong layout
SHOWN = 3


def convert_boxes(rows: np.ndarray, box_format: str) -> np.ndarray:
    """``[R, 4]`` boxes of a file's layout as frcnn's 0-based continuous ``x1 y1 x2 y2`` (float64)."""
    a, b, c, d = (rows[:, i].astype(np.float64) for i in range(4))
    if box_format == "yxyx1":  # R-CNN: 1-based inclusive [y1 x1 y2 x2]
        return np.stack([b - 1, a - 1, d, c], axis=1)
    if box_format == "xyxy1":  # VOC-style 1-based inclusive [x1 y1 x2 y2]
        return np.stack([a - 1, b - 1, c, d], axis=1)
    if box_format == "xyxy":
        return np.stack([a, b, c, d], axis=1)
    if box_format == "xywh":
        return np.stack([a, b, a + c, b + d], axis=1)
    if box_format == "xywh1":
        return np.stack([a - 1, b - 1, a - 1 + c, b - 1 + d], axis=1)
    raise DataError(f"unknown box format {box_format!r}; choose one of {', '.join(BOX_FORMATS)}")


def rank_scores(count: int) -> np.ndarray:
    """The score of a file without scores: ``(R - r) / R`` for the r-th of R boxes, in (0, 1], decreasing."""
    return ((count - np.arange(count)) / max(count, 1)).astype(np.float32)


@dataclass
class CleanCounts:
    """What cleaning did to one image's (or every image's) boxes."""

    read: int = 0
    far_outside: int = 0  # reached more than OUTSIDE_PX out of the image (clipped)
    empty: int = 0  # nothing left after clipping (dropped)
    duplicates: int = 0  # dropped
    over_top_n: int = 0  # dropped by --top-n
    kept: int = 0

    def add(self, other: CleanCounts) -> None:
        for key, value in vars(other).items():
            setattr(self, key, getattr(self, key) + value)


def clean_boxes(boxes: np.ndarray, scores: np.ndarray | None, width: int, height: int,
                top_n: int | None) -> tuple[np.ndarray, np.ndarray, CleanCounts]:
    """One image's converted ``boxes [R, 4]`` clipped, emptied ones and duplicates dropped, ordered and cut to
    ``top_n`` (module docstring): ``(boxes float32 [K, 4], scores float32 [K], counts)``."""
    counts = CleanCounts(read=len(boxes))
    limits = np.array([width, height, width, height], dtype=np.float64)
    clipped = np.clip(boxes, 0.0, limits)
    counts.far_outside = int((np.abs(clipped - boxes).max(axis=1, initial=0) > OUTSIDE_PX).sum())
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    counts.empty = int((~keep).sum())
    clipped = clipped[keep]
    scores = None if scores is None else scores[keep]
    unique = _first_of_each(clipped)
    counts.duplicates = len(clipped) - len(unique)
    clipped = clipped[unique]
    if scores is not None:
        order = np.argsort(-scores[unique], kind="stable")
        clipped, scores = clipped[order], scores[unique][order]
    if top_n is not None and len(clipped) > top_n:
        counts.over_top_n = len(clipped) - top_n
        clipped, scores = clipped[:top_n], None if scores is None else scores[:top_n]
    counts.kept = len(clipped)
    scores = rank_scores(len(clipped)) if scores is None else scores.astype(np.float32)
    return clipped.astype(np.float32), scores, counts


def _first_of_each(boxes: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of every distinct row of ``boxes [R, 4]``, ascending (a stable lexsort
    puts equal rows together in file order; ``np.unique(axis=0)`` is ten times slower on float rows)."""
    order = np.lexsort(boxes.T[::-1])
    ordered = boxes[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (ordered[1:] == ordered[:-1]).all(axis=1)
    return np.sort(order[~repeat])


@dataclass
class ImportReport:
    """What ``import_proposals`` did: the file's kind, the layout read, where the scores came from, counts."""

    kind: str
    box_format: str
    scored: bool
    images: int
    unused: int  # images of the file not in the manifest
    without_boxes: int  # images left with no proposal
    counts: CleanCounts


def _match(source: ProposalFile, manifest: Manifest, from_path: str, manifest_path: Path) -> list[str]:
    """The file's id of every manifest image; an image the file lacks is a ``DataError``."""
    missing = [rec.id for rec in manifest.images if rec.id not in source.boxes]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:SHOWN])
        raise DataError(f"{from_path} has no proposals for {len(missing)} of the {len(manifest.images)} images of "
                        f"{manifest_path} (first: {shown}); give the file made for this image set, or a manifest "
                        "of the images it covers")
    return [rec.id for rec in manifest.images]


def _scored(source: ProposalFile, ids: list[str], from_path: str) -> bool:
    scored = {source.scores[i] is not None for i in ids}
    if len(scored) > 1:
        raise DataError(f"{from_path}: some images have scores and others not; give every box a score or none")
    return scored == {True}


def _sha256(path: Path) -> str:
    """The file's SHA-256 (as ``model.checkpoint.file_sha256``, without importing the model for it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _attributes(from_paths: list[Path], source: ProposalFile, box_format: str, scored: bool,
                top_n: int | None) -> dict:
    hashes = [_sha256(p) for p in from_paths]
    digest = hashes[0] if len(hashes) == 1 else hashlib.sha256(" ".join(hashes).encode()).hexdigest()
    return {"checkpoint_hash": digest, "checkpoint": "", "nms_thresh": -1.0, "pre_nms_top_n": 0,
            "post_nms_top_n": int(top_n or 0), "min_size": 0.0, "scale": 0, "max_size": 0, "config": {},
            "source": "external", "source_file": ", ".join(map(str, from_paths)), "source_kind": source.kind,
            "box_format": box_format, "scores": "file" if scored else "rank"}


def import_proposals(from_paths: str | os.PathLike | Sequence[str | os.PathLike], manifest: Manifest,
                     manifest_path: str | os.PathLike, out: str | os.PathLike, *, top_n: int | None = None,
                     box_format: str | None = None, progress: Progress | None = None,
                     on_note: OnNote | None = None) -> ImportReport:
    """Write ``out`` (a proposal store for ``manifest``) from the proposal file(s) ``from_paths`` (module
    docstring; several files are one set of images, e.g. VOC2007's and VOC2012's for 07+12); ``box_format``
    defaults by the files' kind (``DEFAULT_FORMAT``)."""
    if isinstance(from_paths, (str, os.PathLike)):
        from_paths = [from_paths]
    paths, manifest_path = [Path(p) for p in from_paths], Path(manifest_path)
    from_path = " and ".join(map(str, paths))
    if top_n is not None and top_n < 1:
        raise DataError(f"--top-n must be a positive number of proposals, got {top_n}")
    source = read_proposal_files(paths)
    box_format = box_format or DEFAULT_FORMAT[source.kind]
    if box_format not in BOX_FORMATS:
        raise DataError(f"unknown box format {box_format!r}; choose one of {', '.join(BOX_FORMATS)}")
    ids = _match(source, manifest, from_path, manifest_path)
    scored = _scored(source, ids, from_path)
    cleaned, total = [], CleanCounts()
    for rec in manifest.images:
        found = clean_boxes(convert_boxes(source.boxes[rec.id], box_format), source.scores[rec.id], rec.width,
                            rec.height, top_n)
        cleaned.append(found[:2])
        total.add(found[2])
    _check_layout(total, box_format, from_path)
    attrs = _attributes(paths, source, box_format, scored, top_n)
    with ProposalWriter(out, manifest_hash=manifest_hash(manifest), attrs=attrs, manifest=manifest,
                        on_note=on_note) as writer:
        for index, (boxes, scores) in enumerate(cleaned):
            if not writer.done(index):
                writer.write(index, boxes, scores)
            if progress is not None:
                progress(index + 1, len(cleaned))
        writer.finish()
    empty_images = sum(1 for boxes, _ in cleaned if len(boxes) == 0)
    return ImportReport(source.kind, box_format, scored, len(ids), len(source.boxes) - len(ids), empty_images, total)


def _check_layout(total: CleanCounts, box_format: str, from_path: str) -> None:
    """A ``DataError`` when so many boxes reach out of their image that the layout must be another one."""
    if total.far_outside <= WRONG_LAYOUT * max(total.read, 1):
        return
    others = ", ".join(f for f in BOX_FORMATS if f != box_format)
    raise DataError(f"{from_path}: {total.far_outside} of its {total.read} boxes reach more than {OUTSIDE_PX:g} px "
                    f"outside their image when read as {box_format}: the file's layout is another one; give "
                    f"--box-format ({others})")
