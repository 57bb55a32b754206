"""A VOC split without annotations as an images-only manifest (``frcnn prepare voc --year 2012 --split test``).

VOC2012's test annotations are not public: the evaluation server scores the detections
(``evaluate/submission.py``). The manifest lists the split's images (``ImageSets/Main/<split>.txt``,
``JPEGImages/<id>.jpg``) with their sizes, no boxes, the 20 VOC classes and ``"annotated": false``, so that
``detect``, ``dump-proposals``, ``prepare proposals`` and ``eval --results-only`` take it and the commands that
need ground truth refuse it. Every image is decoded once, as for an annotated split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..callbacks import OnNote, Progress
from ..errors import DataError, problems_error
from .manifest import ImageRecord, Manifest
from .voc import VOC_CLASSES, _image_size, _split_ids, relative_path, unreadable_warning, year_folders


def prepare_voc_images(root: str | os.PathLike, years: Sequence[int], split: str, *,
                       progress: Progress | None = None, skip_unreadable: bool = False,
                       on_warning: OnNote | None = None) -> Manifest:
    """The images of a VOCdevkit split (one year, or the union of several) as an images-only manifest named
    ``voc<years>-<split>``; a missing or unreadable image is a ``DataError`` (all of them listed), or with
    ``skip_unreadable`` an image that cannot be decoded is left out (``on_warning`` lists them)."""
    years, year_dirs, base = year_folders(root, years, split, example="--year 2012")
    items = [(i, year_dir / "JPEGImages" / f"{i}.jpg") for year_dir in year_dirs
             for i in dict.fromkeys(_split_ids(year_dir, split))]
    records, errors, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for done, ((image_id, path), decoded) in enumerate(
                zip(items, pool.map(lambda item: _image_size(item[1]), items)), start=1):
            if decoded.unreadable and skip_unreadable:
                skipped.append(path)
            elif decoded.problem is not None:
                errors.append(decoded.problem)
            else:
                size = decoded.size
                records.append(ImageRecord(image_id, relative_path(path, base), size[0], size[1], [], [], []))
            if progress is not None:
                progress(done, len(items))
    if errors:
        raise problems_error(errors)
    if skipped and not records:
        raise DataError(f"none of the {len(items)} images can be decoded (first: {skipped[0]}); check --root")
    if skipped and on_warning is not None:
        on_warning(unreadable_warning(skipped, "image(s) left out"))
    return Manifest(name=f"voc{'+'.join(map(str, years))}-{split}", classes=list(VOC_CLASSES), root=base,
                    images=records, annotated=False)
