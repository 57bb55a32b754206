"""COCO detection metrics of frcnn detections on a manifest, computed by a COCO evaluator, and COCO
results files.

The numbers are the evaluator's own (``COCOeval`` with ``iouType="bbox"``: 10 IoU thresholds .50:.05:.95,
101 recall points, area ranges small < 32², medium < 96², large, at most 1, 10 and 100 detections per
image and class); frcnn only builds the ground truth and the results in COCO's layout. The evaluator is
faster-coco-eval when installed (the same numbers as pycocotools, several times faster:
docs/benchmarks.md), else pycocotools; ``pip install "frcnn[coco]"`` installs it.

Ids. A manifest made by ``frcnn prepare coco`` keeps the original ids: image ``coco_id`` and the
class's ``category_ids`` entry. Any other manifest (VOC, folder, synth) gets made-up ones, the same on
every run: image id = its position in the manifest + 1, category id = class index + 1. An image with a
``coco_id`` keeps it and the others are numbered by position; two images that would share an id are an
error.

Ground truth. Boxes ``[x1, y1, x2, y2]`` become ``bbox [x1, y1, x2 - x1, y2 - y1]`` (both are
continuous pixels: no ``+1``). ``area`` is the manifest's ``area`` where it has one (COCO's object area),
else the box's. Every ``difficult`` box becomes a COCO crowd region (``iscrowd: 1``), which is what a
COCO crowd region already is in a manifest (``crowd`` implies ``difficult``); for VOC's difficult
objects it is the only way COCOeval has to make a detection on them neither a true nor a false positive
(pycocotools overwrites a separate ``ignore`` flag with ``iscrowd``). As COCO crowd regions, they match
by intersection over the detection's area and absorb any number of detections, so a little more is
ignored around a VOC difficult object than the VOC devkit ignores (one IoU > 0.5 match).

Detections are what frcnn's inference returns per image: ``{"boxes": [D, 4] x1 y1 x2 y2 original
pixels (0-based continuous), "scores": [D], "labels": [D] in 1..K}`` (CPU tensors or arrays); the 100
best of an image by score are kept (COCO's limit per image; ties: the earlier one).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from importlib import metadata

import numpy as np

from ..atomic import atomic_write_text
from ..errors import ConfigError, DataError

EVALUATORS = ("faster-coco-eval", "pycocotools")  # the first installed one is used by default
INSTALL_HINT = 'pip install "frcnn[coco]" (or: pip install faster-coco-eval)'
MAX_DETECTIONS = 100  # per image, as COCO's evaluation asks
SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_image_ids(manifest) -> list[int]:
    """The COCO image id of each manifest image: its ``coco_id``, else its position + 1."""
    ids = [i + 1 if rec.coco_id is None else int(rec.coco_id) for i, rec in enumerate(manifest.images)]
    if len(set(ids)) != len(ids):
        first: dict[int, int] = {}
        for i, v in enumerate(ids):
            if v in first:
                raise DataError(f"manifest {manifest.name}: images {manifest.images[first[v]].id} and "
                                f"{manifest.images[i].id} would both have COCO image id {v} (a coco_id beside "
                                "made-up ids); give every image a coco_id or none, e.g. by preparing it again")
            first[v] = i
    return ids


def coco_category_ids(manifest) -> list[int]:
    """The COCO category id of each class: the manifest's ``category_ids``, else class index + 1."""
    if manifest.category_ids is not None:
        return [int(v) for v in manifest.category_ids]
    return list(range(1, len(manifest.classes) + 1))


def coco_ground_truth(manifest) -> dict:
    """The manifest as a COCO ground-truth dict (``images``, ``categories``, ``annotations``), ready for
    ``COCO()``; annotation ids run 1, 2, … in manifest order (COCOeval needs them > 0)."""
    image_ids, category_ids = coco_image_ids(manifest), coco_category_ids(manifest)
    images, annotations = [], []
    for image_id, rec in zip(image_ids, manifest.images):
        images.append({"id": image_id, "width": rec.width, "height": rec.height, "file_name": rec.path})
        for j, ((x1, y1, x2, y2), label) in enumerate(zip(rec.boxes, rec.labels)):
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[label],
                "bbox": [x1, y1, w, h], "area": float(rec.area[j]) if rec.area is not None else w * h,
                "iscrowd": int(bool(rec.difficult[j]))})
    categories = [{"id": c, "name": name, "supercategory": ""} for c, name in zip(category_ids, manifest.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _image_results(det: dict, image_id: int, category_ids: list[int], where: str) -> list[dict]:
    """One image's detections as COCO results, best first, at most ``MAX_DETECTIONS``."""
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > len(category_ids)):
        raise ValueError(f"{where}: labels must be 1..{len(category_ids)} (0 is background)")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{where}: a box or a score is not finite")
    order = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS]
    xywh = np.concatenate((boxes[order, :2], boxes[order, 2:] - boxes[order, :2]), axis=1).tolist()
    cats = [category_ids[k - 1] for k in labels[order].tolist()]
    return [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cats, xywh, scores[order].tolist())]


def coco_results(manifest, detections: Sequence[dict]) -> list[dict]:
    """Detections (one dict per manifest image, in manifest order) as a COCO results list:
    ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` with the manifest's COCO ids, each
    image's best ``MAX_DETECTIONS`` in descending score order (what ``COCO.loadRes`` reads)."""
    if len(detections) != len(manifest.images):
        raise ValueError(f"{len(detections)} detection entries for the {len(manifest.images)} images of "
                         f"manifest {manifest.name}; give one per image, in manifest order")
    image_ids, category_ids = coco_image_ids(manifest), coco_category_ids(manifest)
    results = []
    for rec, image_id, det in zip(manifest.images, image_ids, detections):
        results.extend(_image_results(det, image_id, category_ids, f"detections of image {rec.id}"))
    return results


def write_coco_results(path: str | os.PathLike, results: list[dict]) -> None:
    """Write a COCO results list (:func:`coco_results`) as JSON, atomically: the file ``COCO.loadRes``,
    the COCO evaluation server and other tools read. One detection per line."""
    lines = ",\n".join(json.dumps(r, allow_nan=False) for r in results)
    atomic_write_text(path, f"[{lines}]\n" if results else "[]\n")


def _evaluator(name: str | None) -> tuple[str, type, type]:
    """``(name, COCO, COCOeval)`` of the evaluator ``name``, or of the first installed one."""
    if name is not None and name not in EVALUATORS:
        raise ConfigError(f"unknown COCO evaluator {name!r}; use one of {', '.join(EVALUATORS)}")
    for candidate in EVALUATORS if name is None else (name,):
        try:
            if candidate == "faster-coco-eval":
                from faster_coco_eval import COCO
                from faster_coco_eval import COCOeval_faster as COCOeval
            else:
                from pycocotools.coco import COCO
                from pycocotools.cocoeval import COCOeval
        except ImportError:
            continue
        return candidate, COCO, COCOeval
    if name is not None:
        raise ConfigError(f"COCO evaluation with {name} needs it installed; install it with: pip install {name}")
    raise ConfigError(f"COCO evaluation needs faster-coco-eval or pycocotools, and neither is installed; "
                      f"install it with: {INSTALL_HINT}")


def _version(name: str) -> str:
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _quiet(*_args: object, **_kwargs: object) -> None:
    """faster-coco-eval's ``print_function``: the library prints nothing."""


def _run_cocoeval(gt_dict: dict, results: list[dict], evaluator: str | None) -> tuple[str, object]:
    """``(evaluator name and version, COCOeval after evaluate/accumulate/summarize)``; the evaluator's
    own output is swallowed. ``results`` get the keys ``loadRes`` adds (area, id, iscrowd)."""
    name, COCO, COCOeval = _evaluator(evaluator)
    quiet = {"print_function": _quiet} if name == "faster-coco-eval" else {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(**quiet)
        gt.dataset = gt_dict
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = COCO(**quiet)
            dt.dataset = {"images": gt_dict["images"], "categories": gt_dict["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox", **quiet)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return _version(name), ev


def _mean_valid(values: np.ndarray) -> float:
    """COCO's mean over the entries that exist (> -1); NaN when none does (a class without objects)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _check_results(manifest, results: list[dict], image_ids: list[int], category_ids: list[int]) -> None:
    known_images, known_cats = set(image_ids), set(category_ids)
    for r in results:
        if r.get("image_id") not in known_images or r.get("category_id") not in known_cats:
            raise DataError(f"a detection of image id {r.get('image_id')!r}, category id {r.get('category_id')!r} "
                            f"is not for an image and a class of manifest {manifest.name}; evaluate against the "
                            "manifest the detections were made for")


def evaluate_coco_results(manifest, results: list[dict], *, evaluator: str | None = None) -> dict:
    """COCO metrics of a COCO results list (:func:`coco_results`) on ``manifest`` (not modified).

    Returns ``{"metric": "coco", "evaluator": "<name> <version>", "map": AP, "stats": {name: value for
    SUMMARY}, "ap": {class: AP@[.5:.95]}, "ap50": {class: AP@.5}}``: ``stats`` holds COCOeval's 12
    summary numbers (``AP`` = AP@[.5:.95] … ``ARl``), NaN where COCOeval gives -1 (no object in that
    range); a class without objects has AP NaN. Raises ``ConfigError`` when no evaluator is installed.
    """
    image_ids, category_ids = coco_image_ids(manifest), coco_category_ids(manifest)
    _check_results(manifest, results, image_ids, category_ids)
    name, ev = _run_cocoeval(coco_ground_truth(manifest), [dict(r) for r in results], evaluator)
    stats = [float(v) if v > -1 else float("nan") for v in np.asarray(ev.stats, dtype=np.float64)[:12]]
    precision = np.asarray(ev.eval["precision"])  # [T iou, R recall, K class, A area, M max dets]
    area, most = list(ev.params.areaRngLbl).index("all"), list(ev.params.maxDets).index(MAX_DETECTIONS)
    position = {int(c): i for i, c in enumerate(ev.params.catIds)}
    ap, ap50 = {}, {}
    for cls, cat in zip(manifest.classes, category_ids):
        p = precision[:, :, position[cat], area, most]
        ap[cls], ap50[cls] = _mean_valid(p), _mean_valid(p[0])
    return {"metric": "coco", "evaluator": name, "map": stats[0], "stats": dict(zip(SUMMARY, stats)),
            "ap": ap, "ap50": ap50}


def evaluate_coco(manifest, detections: Sequence[dict], *, evaluator: str | None = None) -> dict:
    """COCO metrics of frcnn detections (one dict per manifest image; see the module docstring) on
    ``manifest``: :func:`evaluate_coco_results` of :func:`coco_results`."""
    return evaluate_coco_results(manifest, coco_results(manifest, detections), evaluator=evaluator)
