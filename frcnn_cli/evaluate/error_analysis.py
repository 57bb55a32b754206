"""Why the AP is what it is: TIDE-style error kinds of VOC detections (Bolya et al., ECCV 2020).

Which detections are false positives is decided by the devkit's matching (``voc.match_detections``: a hit
needs IoU > 0.5 with an object of the detection's class). Each false positive then gets one kind, tested in
TIDE's order (``tidecv/quantify.py``), with its IoUs against the *non-difficult* objects of its image:

1. ``localisation``: its best IoU with an object of its own class is in [0.1, 0.5] (placed better, a hit);
2. ``confusion``: it covers an object of another class at IoU > 0.5 (with that class, a hit);
3. ``duplicate``: its own-class object at IoU > 0.5 was taken by a higher-scoring detection;
4. ``background``: IoU < 0.1 with every object;
5. ``both``: the rest: IoU in [0.1, 0.5] with an object of another class only (TIDE's "Both").

A non-difficult object that no detection hits is a false negative; it is ``missed`` unless a localisation
or confusion error aims at it (TIDE: such an object is "usable", fixing that error finds it). Difficult
objects are neither positives nor misses and take no part in the kinds (a hit on one is ignored, as in
the devkit). How much AP each kind costs is in ``error_fixes``.

Shapes: D detections of one class, F false positives of all classes, G non-difficult objects of all
classes, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .voc import Detections, ground_truth, match_detections, pair_iou

BACKGROUND_IOU = 0.1  # TIDE's background threshold
FP_KINDS = ("localisation", "confusion", "duplicate", "background", "both")
LOCALISATION, CONFUSION, DUPLICATE, BACKGROUND, BOTH = range(len(FP_KINDS))


@dataclass(frozen=True)
class Objects:
    """The non-difficult objects of all classes, grouped by image: image i's are rows ``start[i]:start[i+1]``."""

    boxes: np.ndarray  # float64[G, 4]
    labels: np.ndarray  # int64[G], 0..K-1
    image: np.ndarray  # int64[G]
    start: np.ndarray  # int64[num_images + 1]
    matched: np.ndarray  # bool[G]: hit by a true positive
    usable: np.ndarray  # bool[G]: not matched, and a localisation or confusion error aims at it

    @property
    def missed(self) -> np.ndarray:
        """bool[G]: TIDE's missed objects (neither found nor aimed at by a fixable error)."""
        return ~self.matched & ~self.usable


@dataclass(frozen=True)
class ClassScores:
    """One class's counted detections (difficult hits left out) in the devkit's score order."""

    scores: np.ndarray  # float64[D']
    tp: np.ndarray  # bool[D']
    npos: int
    ignored: int  # detections on difficult objects


@dataclass(frozen=True)
class FalsePositives:
    """Every false positive of every class, classes in order, each in descending score."""

    cls: np.ndarray  # int64[F]: the detected class
    pos: np.ndarray  # int64[F]: row in that class's ``ClassScores``
    image: np.ndarray  # int64[F]
    score: np.ndarray  # float64[F]
    box: np.ndarray  # float64[F, 4]
    kind: np.ndarray  # int64[F]: index into FP_KINDS
    target: np.ndarray  # int64[F]: row in ``Objects`` a localisation or confusion error aims at, else -1
    iou: np.ndarray  # float64[F]: IoU with the target (or with the best object of any class; 0 if none)


@dataclass(frozen=True)
class Classified:
    """Every detection's fate: what ``error_fixes`` re-scores and the report shows."""

    classes: list[str]
    per_class: list[ClassScores]
    false_positives: FalsePositives
    objects: Objects


def _objects(manifest) -> tuple[Objects, np.ndarray]:
    """The non-difficult objects (``matched`` and ``usable`` still all False) and, per object, its row in
    ``voc.ground_truth(manifest)[label]`` (which counts difficult objects too)."""
    boxes, labels, image, class_row = [], [], [], []
    seen = [0] * len(manifest.classes)
    for i, rec in enumerate(manifest.images):
        for box, label, difficult in zip(rec.boxes, rec.labels, rec.difficult):
            if not difficult:
                boxes.append(box)
                labels.append(label)
                image.append(i)
                class_row.append(seen[label])
            seen[label] += 1
    image = np.asarray(image, dtype=np.int64)
    counts = np.bincount(image, minlength=len(manifest.images))
    g = len(image)
    objects = Objects(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
                      image, np.concatenate(([0], np.cumsum(counts))), np.zeros(g, bool), np.zeros(g, bool))
    return objects, np.asarray(class_row, dtype=np.int64)


def _pairs(image: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, object of its image) pair as flat ``int[P]`` arrays, grouped by detection."""
    counts = start[image + 1] - start[image]
    det = np.repeat(np.arange(len(image)), counts)
    offset = np.arange(len(det)) - np.repeat(np.cumsum(counts) - counts, counts)
    return det, np.repeat(start[image], counts) + offset


def _best(det: np.ndarray, row: np.ndarray, iou: np.ndarray, keep: np.ndarray,
          d: int) -> tuple[np.ndarray, np.ndarray]:
    """Per detection the highest IoU among the kept pairs and its object (first on ties): ``-inf``/-1 if none."""
    det, row, iou = det[keep], row[keep], iou[keep]
    best_iou, best_row = np.full(d, -np.inf), np.full(d, -1, dtype=np.int64)
    order = np.lexsort((row, -iou, det))
    found, first = np.unique(det[order], return_index=True)
    best_iou[found] = iou[order][first]
    best_row[found] = row[order][first]
    return best_iou, best_row


def fp_kinds(image: np.ndarray, boxes: np.ndarray, k: int, objects: Objects, *, iou_thresh: float = 0.5,
             background_iou: float = BACKGROUND_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kind (index into FP_KINDS), target object row (-1: none) and IoU (0 if no object) of false
    positives of class ``k`` (``image int[D]``, ``boxes [D, 4]``), by the tests of the module docstring."""
    d = len(image)
    det, row = _pairs(image, objects.start)
    iou = pair_iou(boxes[det], objects.boxes[row])
    same = objects.labels[row] == k
    own_iou, own_row = _best(det, row, iou, same, d)
    other_iou, other_row = _best(det, row, iou, ~same, d)
    kind = np.full(d, BOTH, dtype=np.int64)
    target = np.full(d, -1, dtype=np.int64)
    shown = np.maximum(np.maximum(own_iou, other_iou), 0.0)
    # from the last test to the first, so that the first one that holds is the one kept
    kind[shown < background_iou] = BACKGROUND
    kind[own_iou > iou_thresh] = DUPLICATE
    confusion = other_iou > iou_thresh
    kind[confusion], target[confusion], shown[confusion] = CONFUSION, other_row[confusion], other_iou[confusion]
    loc = (own_iou >= background_iou) & (own_iou <= iou_thresh)
    kind[loc], target[loc], shown[loc] = LOCALISATION, own_row[loc], own_iou[loc]
    return kind, target, shown


def _match_class(k: int, det, truth, iou_thresh: float, matched_rows: list) -> tuple[ClassScores, dict]:
    """One class through the devkit's matching: its ``ClassScores`` and its false positives' arrays."""
    image, scores, boxes = (np.asarray(det[0], np.int64).reshape(-1), np.asarray(det[1], np.float64).reshape(-1),
                            np.asarray(det[2], np.float64).reshape(-1, 4))
    m = match_detections(image, scores, boxes, truth, iou_thresh)
    counted = ~m.ignored
    matched_rows.append(m.candidate[m.tp])
    fp_at = np.nonzero(m.fp[counted])[0]  # rows in the counted detections
    source = m.order[counted][fp_at]
    fps = {"cls": np.full(len(fp_at), k, dtype=np.int64), "pos": fp_at, "image": image[source],
           "score": scores[source], "box": boxes[source]}
    return ClassScores(scores[m.order][counted], m.tp[counted], truth.npos, int(m.ignored.sum())), fps


def _aimed_at(fps: FalsePositives, objects: Objects) -> np.ndarray:
    """bool[G]: objects not matched that a localisation or confusion error aims at."""
    usable = np.zeros(len(objects.labels), dtype=bool)
    aims = fps.target[fps.target >= 0]
    usable[aims[~objects.matched[aims]]] = True
    return usable


def classify_detections(detections: Detections, manifest, *, iou_thresh: float = 0.5,
                        background_iou: float = BACKGROUND_IOU) -> Classified:
    """Match every class's detections as the devkit does and give each false positive its kind.

    ``detections``: as ``voc.evaluate_detections`` takes them (class index -> image indices, scores,
    boxes ``[D, 4]``), e.g. from ``voc.detections_by_class``.
    """
    truths = ground_truth(manifest)
    objects, class_row = _objects(manifest)
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
    per_class, parts, matched_rows = [], [], []
    for k, truth in enumerate(truths):
        scores, fps = _match_class(k, detections.get(k, empty), truth, iou_thresh, matched_rows)
        per_class.append(scores)
        parts.append(fps)
    for k, rows in enumerate(matched_rows):
        mine = np.nonzero(objects.labels == k)[0]
        objects.matched[mine[np.isin(class_row[mine], rows)]] = True
    kinds = [fp_kinds(p["image"], p["box"], k, objects, iou_thresh=iou_thresh, background_iou=background_iou)
             for k, p in enumerate(parts)]
    flat = {key: np.concatenate([p[key] for p in parts]) for key in ("cls", "pos", "image", "score", "box")}
    kind, target, iou = (np.concatenate([kd[i] for kd in kinds]) for i in range(3))
    fps = FalsePositives(flat["cls"], flat["pos"], flat["image"], flat["score"], flat["box"], kind, target, iou)
    objects.usable[:] = _aimed_at(fps, objects)
    return Classified(list(manifest.classes), per_class, fps, objects)


def kind_counts(classified: Classified) -> dict[str, dict[str, int]]:
    """Per class name: ``detections``, ``tp``, ``fp``, ``ignored``, ``npos``, each FP kind and ``missed``."""
    fps, objects = classified.false_positives, classified.objects
    counts = {}
    for k, name in enumerate(classified.classes):
        s = classified.per_class[k]
        row = {"detections": len(s.tp) + s.ignored, "tp": int(s.tp.sum()), "fp": int((~s.tp).sum()),
               "ignored": s.ignored, "npos": s.npos}
        mine = fps.kind[fps.cls == k]
        row.update({name_: int((mine == i).sum()) for i, name_ in enumerate(FP_KINDS)})
        row["missed"] = int((objects.missed & (objects.labels == k)).sum())
        counts[name] = row
    return counts


def confusion_table(classified: Classified) -> np.ndarray:
    """``int[K + 1, K + 1]``: row = what the object was (last row: background), column = what was detected
    (last column: missed). Diagonal: true positives; off it: confusion errors (object of the row's class
    detected as the column's); last row: background errors; last column: missed objects."""
    k = len(classified.classes)
    table = np.zeros((k + 1, k + 1), dtype=np.int64)
    for c, s in enumerate(classified.per_class):
        table[c, c] = int(s.tp.sum())
    fps, objects = classified.false_positives, classified.objects
    conf = fps.kind == CONFUSION
    np.add.at(table, (objects.labels[fps.target[conf]], fps.cls[conf]), 1)
    np.add.at(table, (k, fps.cls[fps.kind == BACKGROUND]), 1)
    np.add.at(table, (objects.labels[objects.missed], k), 1)
    return table
