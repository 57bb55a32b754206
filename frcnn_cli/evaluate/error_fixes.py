"""How much AP each error kind costs: fix every error of one kind, re-score, compare (TIDE's dAP).

As ``tidecv`` fixes them (``errors/main_errors.py``, each kind on its own, from the original detections):

- ``localisation``: the error becomes a true positive of its class when the object it aims at was not
  found and it is the highest-scoring localisation or confusion error aiming at that object; otherwise it
  is removed (a second fix of one object would be a duplicate);
- ``confusion``: the same, but the true positive counts for the object's class (the detection leaves its
  own class);
- ``duplicate``, ``background``, ``both``: the errors are removed;
- ``missed``: the missed objects are removed from the positives;
- and TIDE's two summaries: ``false_positives`` (every false positive removed) and ``false_negatives``
  (every object not found removed from the positives).

AP is the devkit's (``voc.voc_ap``, the evaluation's metric) of the fixed detections in descending score
(ties: the original order, fixed-up detections of another class after it). ``dAP = AP(fixed) - AP`` per
class; the mAP gain is the mean of the fixed APs over the classes with positives minus the mAP. A class
left without positives by a fix has AP 0 (as ``tidecv``). Unlike TIDE, these are the devkit's matching and
AP (TIDE: COCO's greedy matching and 101-point AP), so the base AP is exactly the evaluation's.
"""

from __future__ import annotations

import numpy as np

from .error_analysis import BACKGROUND, BOTH, CONFUSION, DUPLICATE, FP_KINDS, LOCALISATION, Classified
from .voc import voc_ap

FIXES = (*FP_KINDS, "missed")
SUMMARY_FIXES = ("false_positives", "false_negatives")
# what a fix does to a false positive
_STAYS, _REMOVED, _TRUE_HERE, _TRUE_THERE = range(4)


def _ap(scores: np.ndarray, tp: np.ndarray, npos: int, metric: str) -> float:
    if npos <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    ctp = np.cumsum(tp[order])
    cfp = np.cumsum(~tp[order])
    return voc_ap(ctp / float(npos), ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps), metric)


def fixed_ap(classified: Classified, outcome: np.ndarray, npos: np.ndarray, metric: str) -> np.ndarray:
    """AP per class (``float[K]``, NaN for a class that had no positives) after the false positives
    ``outcome`` (``int[F]``: stays, removed, true positive of its class, true positive of its target's
    class) and with ``npos`` (``int[K]``) positives."""
    fps, objects = classified.false_positives, classified.objects
    there = outcome == _TRUE_THERE
    there_class = objects.labels[fps.target[there]]
    aps = np.full(len(classified.per_class), np.nan)
    for k, s in enumerate(classified.per_class):
        if s.npos == 0:
            continue
        mine = fps.cls == k
        keep = np.ones(len(s.scores), dtype=bool)
        keep[fps.pos[mine & (outcome != _STAYS) & (outcome != _TRUE_HERE)]] = False
        tp = s.tp.copy()
        tp[fps.pos[mine & (outcome == _TRUE_HERE)]] = True
        incoming = fps.score[there][there_class == k]
        scores = np.concatenate([s.scores[keep], incoming])
        tp = np.concatenate([tp[keep], np.ones(len(incoming), dtype=bool)])
        aps[k] = _ap(scores, tp, int(npos[k]), metric)
    return aps


def _first_fixers(classified: Classified) -> np.ndarray:
    """bool[F]: for each object not found, the highest-scoring localisation or confusion error aiming at it
    (the first in class and score order on ties)."""
    fps, objects = classified.false_positives, classified.objects
    aims = np.nonzero((fps.target >= 0))[0]
    aims = aims[~objects.matched[fps.target[aims]]]
    order = aims[np.lexsort((aims, -fps.score[aims], fps.target[aims]))]
    _, first = np.unique(fps.target[order], return_index=True)
    fixer = np.zeros(len(fps.cls), dtype=bool)
    fixer[order[first]] = True
    return fixer


def _fix(classified: Classified, name: str, fixer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``outcome`` and ``npos`` of fix ``name``."""
    fps, objects = classified.false_positives, classified.objects
    outcome = np.full(len(fps.cls), _STAYS, dtype=np.int64)
    npos = np.array([s.npos for s in classified.per_class], dtype=np.int64)
    kinds = {"localisation": LOCALISATION, "confusion": CONFUSION, "duplicate": DUPLICATE,
             "background": BACKGROUND, "both": BOTH}
    if name in kinds:
        mine = fps.kind == kinds[name]
        outcome[mine] = _REMOVED
        if name in ("localisation", "confusion"):
            outcome[mine & fixer] = _TRUE_HERE if name == "localisation" else _TRUE_THERE
    elif name == "missed":
        npos -= np.bincount(objects.labels[objects.missed], minlength=len(npos))
    elif name == "false_positives":
        outcome[:] = _REMOVED
    elif name == "false_negatives":
        npos = np.array([int(s.tp.sum()) for s in classified.per_class], dtype=np.int64)
    else:
        raise ValueError(f"unknown fix {name!r}; use one of {FIXES + SUMMARY_FIXES}")
    return outcome, npos


def _mean(aps: np.ndarray) -> float:
    valid = aps[~np.isnan(aps)]
    return float(valid.mean()) if len(valid) else float("nan")


def delta_ap(classified: Classified, metric: str = "11point") -> dict:
    """Each fix's gain: ``{"ap": {class: AP}, "map": float, "delta_ap": {fix: {class: dAP}},
    "delta_map": {fix: float}}`` for the fixes ``FIXES + SUMMARY_FIXES``; NaN for classes without
    positives. ``ap``/``map`` are the unfixed values (equal to ``voc.evaluate_detections``')."""
    names = classified.classes
    no_fix = np.full(len(classified.false_positives.cls), _STAYS, dtype=np.int64)
    base = fixed_ap(classified, no_fix, np.array([s.npos for s in classified.per_class]), metric)
    fixer = _first_fixers(classified)
    deltas, delta_map = {}, {}
    for fix in (*FIXES, *SUMMARY_FIXES):
        aps = fixed_ap(classified, *_fix(classified, fix, fixer), metric)
        deltas[fix] = {name: float(aps[k] - base[k]) for k, name in enumerate(names)}
        delta_map[fix] = _mean(aps) - _mean(base)
    return {"ap": {name: float(base[k]) for k, name in enumerate(names)}, "map": _mean(base),
            "delta_ap": deltas, "delta_map": delta_map}
