"""The PASCAL VOC evaluation server's files (``frcnn eval --results-only --out DIR``): VOC2012 test is scored
only there (the paper's Table 3).

Layout, as the devkit's ``VOCopts.detrespath`` and the server expect::

    DIR/results/VOC<year>/Main/comp4_det_<split>_<class>.txt     one per class, every class (empty if none)
    DIR/results.tar.gz                                              the same ``results/`` tree, to upload

A line is ``<image id> <score> <xmin> <ymin> <xmax> <ymax>`` (the devkit reads it with
``textread(..., '%s %f %f %f %f %f')``) in VOC's 1-based pixel coordinates (``xmin = x1 + 1``, ``xmax = x2`` of
frcnn's 0-based continuous box; ``evaluate.voc.write_result_files``). ``comp4``: trained on any data
("comp3" would be VOC data only: frcnn's backbones start from ImageNet). The year is the manifest's
(``voc2012-test`` -> 2012), else 2012, the year whose server still runs.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

from ..atomic import atomic_write_bytes, ensure_dir
from .voc import Detections, write_result_files

ARCHIVE = "results.tar.gz"
DEFAULT_YEAR = 2012


def submission_year(manifest_name: str) -> int:
    """The VOC year of a manifest named ``voc<year>-...`` (one year), else ``DEFAULT_YEAR``."""
    found = re.fullmatch(r"voc(\d{4})(-.*)?", manifest_name)
    return int(found.group(1)) if found else DEFAULT_YEAR


def results_folder(out_dir: str | os.PathLike, year: int) -> Path:
    """``out_dir/results/VOC<year>/Main``: where the server looks for the result files."""
    return Path(out_dir) / "results" / f"VOC{year}" / "Main"


def write_submission(out_dir: str | os.PathLike, detections: Detections, manifest, *, split: str,
                     year: int | None = None) -> tuple[list[Path], Path]:
    """Write the server's result files of ``detections`` (``evaluate.voc.detections_by_class`` of the manifest's
    images) under ``out_dir`` and their archive; returns ``(result files in class order, archive)``."""
    year = submission_year(manifest.name) if year is None else int(year)
    folder = ensure_dir(results_folder(out_dir, year), "--out")
    paths = write_result_files(folder, detections, manifest, split)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in paths:
            info = tarfile.TarInfo(path.relative_to(out_dir).as_posix())
            data = path.read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    archive = Path(out_dir) / ARCHIVE
    atomic_write_bytes(archive, buffer.getvalue())
    return paths, archive
