"""Proposal files made outside frcnn, read as boxes per image id: R-CNN's / Fast R-CNN's MAT-files and plain
JSON or CSV (``frcnn prepare proposals --from FILE``; the conversion into the proposal store is
``external_proposals.py``).

- **MAT-files** (level 5, compressed or not, and v7.3; ``mat_file.py``): the variables ``images`` (a cell
  array of image ids, or a char matrix with one id per row) and ``boxes`` (a cell array, one ``R x 4``
  matrix per image in the order of ``images``; a 5th column is a score), optionally ``scores`` (a cell
  array of ``R x 1`` scores). The published Selective Search and EdgeBoxes files hold no scores: their
  rows are in rank order.
- **JSON**: an object ``{"<image id>": [[a, b, c, d(, score)], ...], ...}``, or a list of objects
  ``{"id": "<image id>", "boxes": [[a, b, c, d], ...], "scores": [s, ...]}`` (``scores`` optional).
- **CSV**: one box per row, ``image_id,a,b,c,d[,score]``, an optional header row; the rows of an image in
  rank order (they need not be adjacent).

Box values are as in the file (``a b c d`` in the layout the caller names: ``external_proposals.BOX_FORMATS``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..file_kinds import read_text, sniff
from .mat_file import read_mat

MAX_BOXES = 100_000  # per image, as the proposal store


@dataclass
class ProposalFile:
    """The boxes of each image id (``[R, 4]`` float64 in the file's layout, file order) and their scores
    (``[R]``, or None where the file has none), and what the file was (``kind``: mat, json, csv)."""

    kind: str
    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray | None] = field(default_factory=dict)

    def add(self, path: Path, image_id: str, rows: np.ndarray, scores: np.ndarray | None = None) -> None:
        """One image's rows (``[R, 4]``, or ``[R, 5]`` with the score last); an id given twice is an error."""
        where = f"{path}, image {image_id!r}"
        if image_id in self.boxes:
            raise DataError(f"{where}: the image appears twice; keep one entry per image")
        rows = np.asarray(rows, dtype=np.float64)
        if rows.size == 0:
            rows = np.zeros((0, 4))
        if rows.ndim != 2 or rows.shape[1] not in (4, 5):
            raise DataError(f"{where}: boxes of shape {tuple(rows.shape)}; give one row of 4 numbers per box "
                            "(a 5th is a score)")
        if rows.shape[0] > MAX_BOXES:
            raise DataError(f"{where}: {rows.shape[0]} boxes, more than the {MAX_BOXES} frcnn stores per image; "
                            "keep the best ones")
        if rows.shape[1] == 5:
            rows, scores = rows[:, :4], rows[:, 4]
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
            if scores.shape[0] != rows.shape[0]:
                raise DataError(f"{where}: {rows.shape[0]} boxes but {scores.shape[0]} scores; give one per box")
        if not (np.isfinite(rows).all() and (scores is None or np.isfinite(scores).all())):
            raise DataError(f"{where}: a box or score is not a finite number; fix the file")
        self.boxes[image_id], self.scores[image_id] = rows, scores


def read_proposal_files(paths: Sequence[str | os.PathLike]) -> ProposalFile:
    """The boxes of several files (e.g. Selective Search of VOC2007 trainval and of VOC2012 trainval for 07+12)
    as one; they must be of one kind, and an image id in two of them is an error."""
    files = [(Path(p), read_proposal_file(p)) for p in paths]
    if not files:
        raise DataError("no proposal file given; give --from FILE (repeat it for several)")
    first_path, merged = files[0]
    for path, other in files[1:]:
        if other.kind != merged.kind:
            raise DataError(f"{path} is a {other.kind} file but {first_path} a {merged.kind} file; give files of one "
                            "kind (their box layouts differ)")
        for image_id in other.boxes:
            if image_id in merged.boxes:
                raise DataError(f"image {image_id!r} is in {path} and in an earlier file ({first_path}, ...); give "
                                "the files of disjoint image sets")
            merged.boxes[image_id], merged.scores[image_id] = other.boxes[image_id], other.scores[image_id]
    return merged


def read_proposal_file(path: str | os.PathLike) -> ProposalFile:
    """The file's boxes by image id: a MAT-file (``.mat``), JSON (``.json``) or CSV (``.csv``, ``.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"proposal file {path} does not exist; give the .mat, .json or .csv file of the proposals")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return _read_mat(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".txt"):
        return _read_csv(path)
    if sniff(path) == "hdf5":
        raise DataError(f"proposal file {path} is an HDF5 file: a proposal file of frcnn is used as it is (train-"
                        "detector --proposals, eval --proposals or --test-proposals); give --from the .mat, .json "
                        "or .csv file of proposals made elsewhere")
    raise DataError(f"proposal file {path}: unknown kind {suffix or '(no suffix)'!r}; give a .mat, .json or .csv "
                    "file (docs/formats.md, 'External proposals')")


def _read_mat(path: Path) -> ProposalFile:
    found = read_mat(path, ("images", "boxes", "scores"))
    for name in ("images", "boxes"):
        if name not in found:
            raise DataError(f"{path} has no variable {name!r} (it needs 'images', the image ids, and 'boxes', one "
                            "R x 4 matrix per image); give R-CNN's or Fast R-CNN's proposal file")
    ids, boxes, scores = found["images"], found["boxes"], found.get("scores")
    ids = [ids] if isinstance(ids, str) else ids
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: 'images' is not a cell array of ids (or a char matrix of them); fix the file")
    if not isinstance(boxes, list) or len(boxes) != len(ids):
        count = len(boxes) if isinstance(boxes, list) else "no cell array of"
        raise DataError(f"{path}: 'images' names {len(ids)} images but 'boxes' holds {count} entries; give one "
                        "R x 4 matrix per image")
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(ids)):
        raise DataError(f"{path}: 'scores' is not a cell array with one entry per image; fix or remove it")
    out = ProposalFile("mat")
    for k, (image_id, rows) in enumerate(zip(ids, boxes)):
        if not isinstance(rows, np.ndarray):
            raise DataError(f"{path}: 'boxes' entry {k + 1} ({image_id!r}) is not a numeric matrix; fix the file")
        out.add(path, image_id, rows, None if scores is None else np.asarray(scores[k], dtype=np.float64))
    return out


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _read_json(path: Path) -> ProposalFile:
    try:
        data = json.loads(read_text(path), parse_constant=_no_constants)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc}); check the file") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); fix the file") from None
    except RecursionError:  # arrays nested thousands deep: Python's json gives up
        raise DataError(f"{path} nests its JSON too deeply to hold proposals (boxes are lists of 4 or 5 numbers); "
                        "fix the file") from None
    entries = data.items() if isinstance(data, dict) else None
    if isinstance(data, list):
        if not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in data):
            raise DataError(f"{path}: every entry of the list needs an \"id\" (text) and \"boxes\"; fix the file")
        entries = [(e["id"], e) for e in data]
    if entries is None:
        raise DataError(f"{path}: expected an object of image id -> boxes, or a list of {{\"id\", \"boxes\"}}; "
                        "fix the file (docs/formats.md, 'External proposals')")
    out = ProposalFile("json")
    for image_id, value in entries:
        rows, scores = (value.get("boxes"), value.get("scores")) if isinstance(value, dict) else (value, None)
        try:
            out.add(path, str(image_id), np.asarray(rows if rows is not None else [], dtype=np.float64),
                    None if scores is None else np.asarray(scores, dtype=np.float64))
        except (TypeError, ValueError):
            raise DataError(f"{path}, image {image_id!r}: boxes are not lists of numbers; fix the file") from None
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path) -> ProposalFile:
    try:
        with io.StringIO(read_text(path), newline="") as f:
            reader = csv.reader(f, skipinitialspace=True)  # (line, row): blank lines skipped, yet counted
            lines = [(reader.line_num, row) for row in reader if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({exc}); check the file") from None
    if lines and _number(lines[0][1][1] if len(lines[0][1]) > 1 else "") is None:
        lines = lines[1:]  # a header row
    width = len(lines[0][1]) if lines else 5
    grouped: dict[str, list[list[float]]] = {}
    for n, row in lines:
        values = [_number(c) for c in row[1:]]
        if len(row) != width or width not in (5, 6) or None in values:
            raise DataError(f"{path}, line {n}: expected 'image_id,a,b,c,d' or 'image_id,a,b,c,d,score' (the same "
                            f"columns on every row), got {','.join(row)!r}; fix the file")
        grouped.setdefault(row[0].strip(), []).append(values)
    out = ProposalFile("csv")
    for image_id, values in grouped.items():
        out.add(path, image_id, np.asarray(values, dtype=np.float64))
    return out
