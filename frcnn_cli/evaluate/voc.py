"""PASCAL VOC detection evaluation: the devkit's AP, vectorised, and its result files.

Exactly ``voc_eval.py``'s rules (shared/reference/py-faster-rcnn-notes.md §3):

- per class, the positives are the non-difficult ground-truth objects (``npos``);
- detections of all images are taken in descending score order; ties keep the input order
  (``np.argsort(-scores, kind="stable")``; the devkit's quicksort leaves them to chance);
- a detection's candidate is the ground truth of its image and class with the highest IoU (difficult
  ones included, first one on ties); IoU > ``iou_thresh`` (strictly) with a difficult candidate: ignored
  (neither TP nor FP); with an unmatched candidate: TP, the candidate is matched; with an already matched
  one: FP (a duplicate; no fallback to the second best); IoU <= thresh or no ground truth: FP;
- ``rec = tp / npos``, ``prec = tp / max(tp + fp, eps)`` over the cumulative sums.

IoU is the plain continuous IoU of our 0-based continuous boxes, which equals the devkit's ``+1`` IoU on
the 1-based inclusive VOC boxes (``xmin = x1 + 1``, ``xmax = x2``).

Because the candidate of a detection does not depend on what was matched before, "the first detection
in score order whose candidate is g" is the TP for g and every later one is a duplicate; so the whole
matching is a few array operations (``np.unique(..., return_index=True)``), with no loop over detections.

A class with no positives has AP NaN (as the devkit); ``map`` is the mean over the classes that have
positives. A class with positives but no detections has AP 0.

Shapes: D detections of one class, G ground-truth objects, K classes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DataError
from ..output_paths import short_stem
from . import IOU_THRESH as IOU_THRESH
from . import METRICS as METRICS

# class index -> (image indices into manifest.images int[D], scores float[D], boxes float[D, 4])
Detections = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def voc_ap(rec: np.ndarray, prec: np.ndarray, metric: str = "11point") -> float:
    """The devkit's AP from recall and precision in score order.

    ``"11point"`` (VOC2007): mean over t in 0, 0.1, ..., 1 of the highest precision at recall >= t.
    ``"area"`` (VOC2010+): area under the precision envelope (monotone from the right).
    The sum is exact (``math.fsum``) and the result clamped to [0, 1]: the devkit's running sum of
    ``p / 11`` gives 1.0000000000000002 for a perfect detector and 0.20000000000000004 for 0.2.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if metric == "11point":
        maxima = [float(np.max(prec[rec >= t])) if (rec >= t).any() else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
        return min(max(math.fsum(maxima) / 11.0, 0.0), 1.0)
    if metric == "area":
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        changed = np.where(mrec[1:] != mrec[:-1])[0]
        area = math.fsum(((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]).tolist())
        return min(max(area, 0.0), 1.0)
    raise ValueError(f"unknown AP metric {metric!r}; use one of {METRICS}")


@dataclass(frozen=True)
class ClassTruth:
    """One class's ground truth, grouped by image: image i's objects are rows start[i]:start[i + 1]."""

    boxes: np.ndarray  # float64[G, 4]
    difficult: np.ndarray  # bool[G]
    start: np.ndarray  # int64[num_images + 1]

    @property
    def npos(self) -> int:
        return int((~self.difficult).sum())


def ground_truth(manifest) -> list[ClassTruth]:
    """Per class the manifest's objects, in manifest order (which the devkit's argmax ties follow)."""
    boxes, labels, difficult, image = [], [], [], []
    for i, rec in enumerate(manifest.images):
        boxes.extend(rec.boxes)
        labels.extend(rec.labels)
        difficult.extend(rec.difficult)
        image.extend([i] * len(rec.labels))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64)
    difficult = np.asarray(difficult, dtype=bool)
    image = np.asarray(image, dtype=np.int64)
    truths = []
    for k in range(len(manifest.classes)):
        sel = labels == k
        counts = np.bincount(image[sel], minlength=len(manifest.images))
        start = np.concatenate(([0], np.cumsum(counts)))
        truths.append(ClassTruth(boxes[sel], difficult[sel], start))
    return truths


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (both ``[P, 4]``); 0 where the union is empty."""
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _best_match(image: np.ndarray, boxes: np.ndarray, truth: ClassTruth) -> tuple[np.ndarray, np.ndarray]:
    """For each detection its highest IoU with the ground truth of its image and the argmax row.

    Returns ``(ovmax float[D], jmax int[D])``; detections on images without ground truth get
    ``ovmax = -inf`` and ``jmax = -1``. Every (detection, object-of-its-image) pair is evaluated once,
    as flat arrays; the per-detection max and first argmax come from segment reductions.
    """
    d = len(image)
    ovmax = np.full(d, -np.inf)
    jmax = np.full(d, -1, dtype=np.int64)
    counts = truth.start[image + 1] - truth.start[image]
    has = np.nonzero(counts > 0)[0]
    if len(has) == 0:
        return ovmax, jmax
    cnt = counts[has]
    seg = np.concatenate(([0], np.cumsum(cnt)[:-1]))  # where each detection's pairs begin
    local = np.arange(int(cnt.sum())) - np.repeat(seg, cnt)  # object number inside its image
    rows = np.repeat(truth.start[image[has]], cnt) + local
    iou = pair_iou(np.repeat(boxes[has], cnt, axis=0), truth.boxes[rows])
    best = np.maximum.reduceat(iou, seg)
    first = np.minimum.reduceat(np.where(iou == np.repeat(best, cnt), local, np.iinfo(np.int64).max), seg)
    ovmax[has] = best
    jmax[has] = truth.start[image[has]] + first
    return ovmax, jmax


@dataclass(frozen=True)
class ClassMatching:
    """What the devkit made of one class's D detections, in stable descending score order."""

    order: np.ndarray  # int[D]: position of each row in the class's input arrays
    tp: np.ndarray  # bool[D]: the first hit (IoU > thresh) of a non-difficult object
    fp: np.ndarray  # bool[D]: neither a TP nor ignored (a miss, or a duplicate hit)
    ignored: np.ndarray  # bool[D]: a hit on a difficult object
    candidate: np.ndarray  # int[D]: the row in ``ClassTruth`` of the highest-IoU object of the image, -1: none
    iou: np.ndarray  # float[D]: the IoU with that candidate (-inf: none)


def match_detections(image, scores, boxes, truth: ClassTruth, iou_thresh: float) -> ClassMatching:
    """The devkit's matching of one class's detections (arrays ``[D]``, ``[D]``, ``[D, 4]``) to ``truth``."""
    order = np.argsort(-scores, kind="stable")
    ovmax, jmax = _best_match(image[order], boxes[order], truth)
    hit = ovmax > iou_thresh
    ignored = np.zeros(len(order), dtype=bool)
    ignored[hit] = truth.difficult[jmax[hit]]
    valid_idx = np.nonzero(hit & ~ignored)[0]
    _, first = np.unique(jmax[valid_idx], return_index=True)  # first hit of each object in score order
    tp = np.zeros(len(order), dtype=bool)
    tp[valid_idx[first]] = True
    return ClassMatching(order, tp, ~ignored & ~tp, ignored, jmax, ovmax)


def _tp_fp(image, scores, boxes, truth: ClassTruth, iou_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags (float[D]) of one class's detections, in stable descending score order."""
    matching = match_detections(image, scores, boxes, truth, iou_thresh)
    return matching.tp.astype(np.float64), matching.fp.astype(np.float64)


def detections_by_class(results: list, num_classes: int) -> Detections:
    """Per-image detector outputs (``[{"boxes" [D_i, 4], "scores" [D_i], "labels" [D_i] in 1..K}]``, in
    manifest order, tensors or arrays) -> :data:`Detections` keyed by class index 0..K-1, in input order."""
    def cat(key: str, width: tuple, dtype) -> np.ndarray:
        parts = [np.asarray(r[key], dtype=dtype).reshape(-1, *width) for r in results]
        return np.concatenate([*parts, np.zeros((0, *width), dtype=dtype)])

    scores, boxes = cat("scores", (), np.float64), cat("boxes", (4,), np.float64)
    labels = cat("labels", (), np.int64) - 1
    image = np.repeat(np.arange(len(results)), [len(np.asarray(r["scores"]).reshape(-1)) for r in results])
    out = {}
    for k in range(num_classes):
        sel = np.nonzero(labels == k)[0]
        out[k] = (image[sel], scores[sel], boxes[sel])
    return out


def _check_class(k: int, image: np.ndarray, scores: np.ndarray, boxes: np.ndarray, manifest) -> None:
    if not 0 <= k < len(manifest.classes):
        raise ValueError(f"detections for class index {k}; the manifest has {len(manifest.classes)} classes")
    if image.ndim != 1 or scores.shape != image.shape or boxes.shape != (len(image), 4):
        raise ValueError(f"class {k}: detections need image[D], scores[D], boxes[D, 4]; got "
                         f"{image.shape}, {scores.shape}, {boxes.shape}")
    if len(image) and (image.min() < 0 or image.max() >= len(manifest.images)):
        raise ValueError(f"class {k}: an image index is outside the manifest's {len(manifest.images)} images")


def _as_arrays(det) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, scores, boxes = det
    return (np.asarray(image, dtype=np.int64).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1),
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def precision_recall(detections: Detections, manifest, *,
                     iou_thresh: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per class name ``(recall float[D], precision float[D], npos)`` in descending score order.

    Every class of the manifest is present; a class without detections has empty curves. Recall is NaN
    where ``npos`` is 0 (as the devkit).
    """
    truths = ground_truth(manifest)
    arrays = {}
    for k, det in detections.items():
        arrays[int(k)] = _as_arrays(det)
        _check_class(int(k), *arrays[int(k)], manifest)
    curves = {}
    for k, name in enumerate(manifest.classes):
        truth = truths[k]
        image, scores, boxes = arrays.get(k, (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))))
        tp, fp = _tp_fp(image, scores, boxes, truth, iou_thresh)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / float(truth.npos) if truth.npos else np.full(len(tp), np.nan)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        curves[name] = (rec, prec, truth.npos)
    return curves


def evaluate_detections(detections: Detections, manifest, *, iou_thresh: float = 0.5,
                        metric: str = "11point") -> dict:
    """VOC AP per class and mAP.

    ``detections``: class index (into ``manifest.classes``) -> (image indices into ``manifest.images``,
    scores, boxes ``[D, 4]`` 0-based continuous original pixels); arrays or CPU tensors.
    Returns ``{"metric", "iou_thresh", "ap": {class: float}, "npos": {class: int}, "map": float}``;
    AP is NaN for a class without positives and ``map`` averages the others (NaN if none has any).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown AP metric {metric!r}; use one of {METRICS}")
    curves = precision_recall(detections, manifest, iou_thresh=iou_thresh)
    ap, npos = {}, {}
    for name, (rec, prec, n) in curves.items():
        ap[name] = voc_ap(rec, prec, metric) if n else float("nan")
        npos[name] = n
    valid = [v for name, v in ap.items() if npos[name] > 0]
    mean = float(np.mean(valid)) if valid else float("nan")
    return {"metric": metric, "iou_thresh": iou_thresh, "ap": ap, "npos": npos, "map": mean}


def _file_part(text: str) -> str:
    """``text`` with characters other than letters, digits, '.', '-' and '_' replaced by '_' (as the plots'
    names), so that a split or class name from an untrusted manifest never leaves the output folder."""
    return re.sub(r"[^\w.-]", "_", text)


def result_file_name(split: str, class_name: str, folder: str | os.PathLike = ".") -> str:
    """The devkit's file name ``comp4_det_<split>_<class>.txt`` (one file name: path characters become '_'); a
    class name too long for a file name of ``folder``'s file system is cut and tagged with a hash of the whole
    (``output_paths.short_stem``), as no devkit file of it could exist."""
    return short_stem(f"comp4_det_{_file_part(split)}_{_file_part(class_name)}", len(".txt"), folder) + ".txt"


def _result_names(split: str, classes, folder: str | os.PathLike) -> list[str]:
    """Every class's result file name; two classes that would share one is a ``DataError``."""
    names = [result_file_name(split, name, folder) for name in classes]
    for k, name in enumerate(names):
        if names.index(name) != k:
            raise DataError(f"classes {classes[names.index(name)]!r} and {classes[k]!r} would share the result "
                            f"file {name}; rename one of them in the class list")
    return names


def escape_id(image_id: str) -> str:
    """An image id as a result file holds it: whitespace and ``%`` percent-encoded (UTF-8), so that each line
    stays six space-separated fields (``IMG 0001`` -> ``IMG%200001``); other ids, VOC's among them, unchanged."""
    return re.sub(r"[%\s]", lambda m: quote(m.group(), safe=""), image_id)


def write_result_files(out_dir: str | os.PathLike, detections: Detections, manifest,
                       split: str) -> list[Path]:
    """Write one devkit result file per class of the manifest (empty for a class without detections).

    Lines ``image_id score xmin ymin xmax ymax``: the id as :func:`escape_id` writes it, VOC's 1-based pixel
    coordinates (``xmin = x1 + 1``, ``ymin = y1 + 1``, ``xmax = x2``, ``ymax = y2``), score with 6 decimals,
    in the given order. Each file is written atomically. Returns the paths in class order.
    """
    out_dir = Path(out_dir)
    paths = []
    file_names = _result_names(split, list(manifest.classes), out_dir)
    for k, file_name in enumerate(file_names):
        lines = []
        if k in detections:
            image, scores, boxes = _as_arrays(detections[k])
            _check_class(k, image, scores, boxes, manifest)
            ids = [escape_id(manifest.images[i].id) for i in image.tolist()]
            for img_id, s, (x1, y1, x2, y2) in zip(ids, scores.tolist(), boxes.tolist()):
                lines.append(f"{img_id} {s:.6f} {x1 + 1:.3f} {y1 + 1:.3f} {x2:.3f} {y2:.3f}\n")
        path = out_dir / file_name
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def _parse_result_file(path: Path, index_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, scores, boxes = [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read result file {path}: {exc}; write it again with frcnn eval --out") \
            from exc
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip().rsplit(" ", 5)  # files of older versions held ids with spaces as they were
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            values = []
        if len(parts) != 6 or len(values) != 5:
            raise DataError(f"{path}, line {n}: expected 'image_id score xmin ymin xmax ymax', got {line!r}")
        image_id = unquote(parts[0])
        if image_id not in index_of:
            raise DataError(f"{path}, line {n}: image {image_id!r} is not in the manifest; "
                            "evaluate against the manifest the detections were made for")
        s, xmin, ymin, xmax, ymax = values
        image.append(index_of[image_id])
        scores.append(s)
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
    return (np.asarray(image, dtype=np.int64), np.asarray(scores, dtype=np.float64),
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def read_result_files(out_dir: str | os.PathLike, manifest, split: str) -> Detections:
    """Read the files :func:`write_result_files` wrote (or any devkit result files) back as detections.

    A missing file for a class of the manifest is a ``DataError`` naming it.
    """
    out_dir = Path(out_dir)
    index_of = {rec.id: i for i, rec in enumerate(manifest.images)}
    detections = {}
    for k, name in enumerate(manifest.classes):
        path = out_dir / result_file_name(split, name, out_dir)
        if not path.is_file():
            raise DataError(f"result file {path} for class {name!r} is missing; write the result files "
                            "with frcnn eval --out DIR, or give the folder that holds them")
        detections[k] = _parse_result_file(path, index_of)
    return detections
