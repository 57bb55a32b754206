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
from pathlib import Path

from ..callbacks import Progress
from ..errors import DataError
from .manifest import ImageRecord, Manifest
from .voc import VOC_CLASSES, _image_size, _rel, _split_ids, _year_dir, problems_error


def prepare_voc_images(root: str | os.PathLike, years: Sequence[int], split: str, *,
                       progress: Progress | None = None) -> Manifest:
    """The images of a VOCdevkit split (one year, or the union of several) as an images-only manifest named
    ``voc<years>-<split>``; a missing or unreadable image is a ``DataError`` (all of them listed)."""
    root = Path(root)
    years = list(dict.fromkeys(int(y) for y in years))
    if not years:
        raise DataError("no --year given; use e.g. --year 2012")
    year_dirs = [_year_dir(root, y) for y in years]
    base = os.path.commonpath([os.path.abspath(d) for d in year_dirs])
    items = [(i, year_dir / "JPEGImages" / f"{i}.jpg") for year_dir in year_dirs
             for i in dict.fromkeys(_split_ids(year_dir, split))]
    records, errors = [], []
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for done, ((image_id, path), (size, problem)) in enumerate(
                zip(items, pool.map(lambda item: _image_size(item[1]), items)), start=1):
            if problem is not None:
                errors.append(problem)
            else:
                records.append(ImageRecord(image_id, _rel(path, base), size[0], size[1], [], [], []))
            if progress is not None:
                progress(done, len(items))
    if errors:
        raise problems_error(errors)
    return Manifest(name=f"voc{'+'.join(map(str, years))}-{split}", classes=list(VOC_CLASSES), root=base,
                    images=records, annotated=False)
