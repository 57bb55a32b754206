"""One evaluation of a detector: one inference pass over a manifest, then every metric asked for from the
same detections (VOC AP always; COCO's metrics with ``coco=True``), and the test proposals of the same
forward passes when a report wants their recall. ``frcnn eval --model`` is this plus rendering.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import Tensor

from ..callbacks import Progress
from ..data.manifest import Manifest
from ..inference import Predictor, predict_manifest
from .voc import IOU_THRESH, Detections, detections_by_class, evaluate_detections


@dataclass
class Evaluation:
    """What one run computed: per image ``detections`` (host tensors, original pixels, labels 1..K) and
    ``proposals`` (or None), ``by_class`` (the devkit's per-class arrays), ``voc`` (``evaluate_detections``),
    ``coco`` (``evaluate_coco_results``) and ``coco_results`` (COCO's results list) when asked for, and the
    ``seconds`` the inference and scoring took."""

    detections: list[dict[str, Tensor]]
    proposals: list[Tensor] | None
    by_class: Detections
    voc: dict
    coco: dict | None = None
    coco_results: list[dict] | None = None
    seconds: float = 0.0


def check_coco_evaluator() -> None:
    """A ``ConfigError`` with the pip command when no COCO evaluator is installed (before any inference)."""
    from .coco import _evaluator

    _evaluator(None)


def evaluate_model(predictor: Predictor, manifest: Manifest, *, metric: str = "11point", coco: bool = False,
                   proposals: bool = False, batch_size: int = 1, progress: Progress | None = None) -> Evaluation:
    """Detections of every image of ``manifest`` by ``predictor`` (one inference pass), scored by the VOC
    devkit's rules (``metric``: "11point" or "area", IoU > 0.5) and, with ``coco``, by COCOeval (up to 100
    detections per image; ids of a VOC manifest made up as ``evaluate.coco`` says)."""
    started = time.perf_counter()
    if coco:
        check_coco_evaluator()
    detections, props = predict_manifest(predictor, manifest, batch_size=batch_size, progress=progress,
                                         proposals=proposals)
    return score_detections(detections, props, manifest, metric=metric, coco=coco, started=started)


def score_detections(detections: list[dict[str, Tensor]], props: list[Tensor] | None, manifest: Manifest, *,
                     metric: str = "11point", coco: bool = False, started: float | None = None) -> Evaluation:
    """``evaluate_model``'s scoring of detections already made (one per image of ``manifest``, in its order;
    ``props`` the same forward's proposals or None), e.g. by ranks sharing the images
    (``sharded_inference.predict_sharded``); ``started``: when the inference began (``perf_counter``)."""
    started = time.perf_counter() if started is None else started
    by_class = detections_by_class(detections, len(manifest.classes))
    voc = evaluate_detections(by_class, manifest, iou_thresh=IOU_THRESH, metric=metric)
    result = Evaluation(detections, props, by_class, voc)
    if coco:
        from .coco import coco_results, evaluate_coco_results

        result.coco_results = coco_results(manifest, detections)
        result.coco = evaluate_coco_results(manifest, result.coco_results)
    result.seconds = time.perf_counter() - started
    return result
