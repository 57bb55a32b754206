"""One evaluation of a detector: one inference pass over a manifest, then every metric asked for from the
same detections (VOC AP always; COCO's metrics with ``coco=True``), and the test proposals of the same
forward passes when a report wants their recall. ``frcnn eval --model`` is this plus rendering.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from torch import Tensor

from ..callbacks import Progress
from ..data.manifest import Manifest, read_manifest
from ..errors import ConfigError, DataError
from ..inference import PredictorLike, predict_manifest
from . import METRICS
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


def check_classes(manifest: Manifest, manifest_path: str | os.PathLike, classes: list[str],
                  model_path: str | os.PathLike) -> None:
    """Refuse a manifest whose class list (names and order) is not the model's, naming both files."""
    if list(manifest.classes) == list(classes):
        return
    only_data = [c for c in manifest.classes if c not in classes]
    only_model = [c for c in classes if c not in manifest.classes]
    if only_data or only_model:
        what = (f"only in the manifest: {', '.join(only_data) or '-'}; "
                f"only in the model: {', '.join(only_model) or '-'}")
    else:
        what = "the same names in another order"
    raise DataError(f"manifest {manifest_path} has classes {manifest.classes} but model {model_path} was "
                    f"trained for {classes} ({what}); evaluate on a manifest of the model's dataset "
                    "(frcnn prepare with the same class list)")


def evaluate(predictor: PredictorLike, data: Manifest | str | os.PathLike, *,
             images: str | os.PathLike | None = None, metric: str = "11point", coco: bool = False,
             batch_size: int = 1, progress: Progress | None = None) -> Evaluation:
    """``frcnn eval --model`` from Python: the detections of ``predictor`` (``load_predictor``) on ``data``, a
    manifest (``Manifest`` or its JSON file) or, with ``images`` (its image folder), a COCO annotation file;
    scored by the VOC devkit's rules (``metric``: "11point", the paper's, or "area") and with ``coco`` by
    COCOeval too (``pip install "frcnn[coco]"``). The figures are ``result.voc["map"]``, ``result.voc["ap"]``
    (per class) and ``result.coco["stats"]``; ``result.detections`` holds every image's detections.

    >>> predictor = frcnn_cli.load_predictor("run/final.pt", "cpu")  # doctest: +SKIP
    >>> frcnn_cli.evaluate(predictor, "synth/test.json").voc["map"]  # doctest: +SKIP
    0.944
    """
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is not one of {', '.join(METRICS)}; pick one of those")
    if isinstance(data, Manifest):
        manifest, where = data, f"'{data.name}'"
    elif images is not None:
        from ..data.coco import prepare_coco

        manifest, where = prepare_coco(data, images), str(data)
    else:
        manifest, where = read_manifest(data), str(data)
    check_classes(manifest, where, predictor.classes, getattr(predictor, "path", "(the predictor's)"))
    return evaluate_model(predictor, manifest, metric=metric, coco=coco, batch_size=batch_size, progress=progress)


def evaluate_model(predictor: PredictorLike, manifest: Manifest, *, metric: str = "11point", coco: bool = False,
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
