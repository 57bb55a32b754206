"""``frcnn eval --report``: the whole evaluation as one self-contained HTML page (docs/report.md).

Made from the detections the metrics were computed from, in the same run: the summary (mAP, COCO AP when
given, model and data with their hashes, settings, date, time taken), the sortable per-class table, a
precision-recall curve per class, the proposals' recall against IoU (when the run kept its proposals), the
TIDE-style error breakdown with the AP each kind of error costs, the confusion table of classes, and
pictures of each class's worst false positives and missed objects (capped). Charts are inline SVG,
pictures inline JPEG, the one script inline: the page loads nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from .error_analysis import classify_detections, confusion_table, kind_counts
from .error_fixes import delta_ap
from .recall import proposal_recall_of_boxes
from .report_examples import MAX_EXAMPLES, PER_CLASS, examples_html
from .report_page import page
from .report_sections import (
    best_f1,
    class_table,
    confusion_html,
    error_breakdown,
    pct,
    pr_curves,
    proposal_recall_html,
)
from .voc import detections_by_class, precision_recall


@dataclass(frozen=True)
class ReportMeta:
    """What the report's header says about the run: the files, their hashes, the settings, when, how long."""

    model: str = ""
    model_sha256: str = ""
    data: str = ""
    manifest_hash: str = ""
    settings: Mapping[str, object] = field(default_factory=dict)
    date: str = ""
    seconds: float = math.nan


def _class_rows(voc_result: dict, curves: dict, dets, counts: dict, classes: list[str]) -> list[dict]:
    rows = []
    for k, name in enumerate(classes):
        rec, prec, _ = curves[name]
        scores = np.sort(np.asarray(dets[k][1], dtype=np.float64))[::-1]
        f1, p, r, s = best_f1(rec, prec, scores[: len(rec)]) if len(rec) else (math.nan,) * 4
        c = counts[name]
        rows.append({"name": name, "ap": voc_result["ap"][name], "npos": c["npos"], "detections": c["detections"],
                     "tp": c["tp"], "fp": c["fp"], "f1": f1, "precision": p, "recall": r, "score": s})
    return rows


def _coco_parts(coco: Mapping | None) -> tuple[list[tuple[str, float]], dict | None]:
    """COCO's summary numbers (every number of ``coco``, in its order) and its per-class AP (the one mapping of
    class names to numbers in it), or nothing."""
    if not coco:
        return [], None
    numbers = [(str(k), float(v)) for k, v in coco.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    per_class = next((dict(v) for v in coco.values() if isinstance(v, Mapping)), None)
    return numbers, per_class


def _summary(manifest, voc_result: dict, meta: ReportMeta, coco_numbers: list, num_detections: int) -> str:
    metric = "VOC2007 11-point" if voc_result.get("metric") == "11point" else "VOC area"
    big = [f'<div><span class="big">{pct(voc_result["map"])}<small>mAP ({escape(metric)}, IoU &gt; '
           f'{voc_result.get("iou_thresh", 0.5)})</small></span></div>']
    coco = dict(coco_numbers)
    if "AP" in coco:
        big.append(f'<div><span class="big">{pct(coco["AP"])}<small>COCO AP (IoU .50:.95)</small></span></div>')
    objects = sum(voc_result["npos"].values())
    rows = [("model", meta.model), ("model sha256", meta.model_sha256), ("data", meta.data),
            ("manifest hash", meta.manifest_hash),
            ("data set", f"{manifest.name}: {len(manifest.images)} images, {len(manifest.classes)} classes, "
                         f"{objects} objects (difficult ones not counted), {num_detections} detections"),
            ("settings", ", ".join(f"{k} = {v}" for k, v in meta.settings.items())), ("date", meta.date),
            ("time taken", "" if math.isnan(meta.seconds) else f"{meta.seconds:.1f} s")]
    table = "".join(f'<tr><th scope="row">{escape(k)}</th><td>{escape(str(v))}</td></tr>' for k, v in rows if v)
    out = f'<div class="headline">{"".join(big)}</div><table class="meta">{table}</table>'
    if coco_numbers:
        head = "".join(f"<th>{escape(k)}</th>" for k, _ in coco_numbers)
        cells = "".join(f'<td class="num">{pct(v)}</td>' for _, v in coco_numbers)
        out += f"<h3>COCO metrics</h3><table><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>"
    return out


ERRORS_NOTE = (
    '<p class="note">Each false positive (a detection the VOC devkit does not count as a hit) has one kind, '
    "tested in this order as TIDE does: <b>localisation</b>: its best IoU with an object of its class is 0.1 to "
    "0.5; <b>confusion</b>: it covers an object of another class at IoU &gt; 0.5; <b>duplicate</b>: its object "
    "was already found by a higher-scoring detection; <b>background</b>: IoU &lt; 0.1 with every object; "
    "<b>both</b>: the rest (near an object of another class only). <b>Missed</b>: objects no detection found "
    "and no localisation or confusion error aims at. dAP: the AP after fixing every error of one kind, minus the "
    "AP (a localisation or confusion error becomes the hit of its object, other errors are removed, missed "
    "objects leave the positives); all FP / all FN: every false positive removed / every object not found "
    "removed. Difficult objects take no part.</p>")
CONFUSION_NOTE = (
    '<p class="note">Rows: what the object was; columns: what was detected on it (IoU &gt; 0.5). Diagonal: '
    "true positives; off the diagonal: confusion errors; last row: background errors by detected class; "
    "last column: missed objects.</p>")


def build_report(*, manifest, detections: Sequence[Mapping], voc_result: dict, proposals: Sequence | None = None,
                 coco: Mapping | None = None, meta: ReportMeta = ReportMeta(), per_class: int = PER_CLASS,
                 max_examples: int = MAX_EXAMPLES) -> str:
    """The report as an HTML string (``write_report``'s arguments)."""
    if len(detections) != len(manifest.images):
        raise ValueError(f"{len(detections)} images of detections for a manifest of {len(manifest.images)} images")
    iou = float(voc_result.get("iou_thresh", 0.5))
    metric = voc_result.get("metric", "11point")
    dets = detections_by_class(detections, len(manifest.classes))
    classified = classify_detections(dets, manifest, iou_thresh=iou)
    fixes = delta_ap(classified, metric)
    for name, ap in voc_result["ap"].items():
        if not (math.isnan(ap) and math.isnan(fixes["ap"][name])) and abs(ap - fixes["ap"][name]) > 1e-9:
            raise ValueError(f"class {name!r}: AP {ap} in the VOC result but {fixes['ap'][name]} from the detections; "
                             "give the detections the VOC result was computed from")
    counts = kind_counts(classified)
    curves = precision_recall(dets, manifest, iou_thresh=iou)
    coco_numbers, coco_per_class = _coco_parts(coco)
    recall = proposal_recall_of_boxes(proposals, manifest) if proposals is not None else None
    rows = _class_rows(voc_result, curves, dets, counts, list(manifest.classes))
    sections = {
        "summary": _summary(manifest, voc_result, meta, coco_numbers, sum(c["detections"] for c in counts.values())),
        "classes": class_table(rows, map_value=voc_result["map"], coco_column=coco_per_class)
        + '<p class="note">Best F1: the detection, in score order, where F1 of precision and recall is highest; '
          "its precision, recall and score. Click a column head to sort.</p>",
        "curves": pr_curves(curves, voc_result["ap"]),
        "proposals": proposal_recall_html(recall),
        "errors": ERRORS_NOTE + error_breakdown(counts, fixes),
        "confusion": CONFUSION_NOTE + confusion_html(confusion_table(classified), list(manifest.classes)),
        "examples": examples_html(classified, manifest, list(detections), per_class=per_class,
                                  max_examples=max_examples),
    }
    return page(f"frcnn evaluation: {manifest.name}", sections)


def write_report(path: str | os.PathLike, *, manifest, detections: Sequence[Mapping], voc_result: dict,
                 proposals: Sequence | None = None, coco: Mapping | None = None, meta: ReportMeta = ReportMeta(),
                 per_class: int = PER_CLASS, max_examples: int = MAX_EXAMPLES) -> Path:
    """Write the evaluation report, one self-contained HTML file, atomically to ``path``; returns it.

    ``detections``: one dict per manifest image, ``{"boxes" [D, 4] original pixels, "scores" [D], "labels" [D]
    in 1..K}`` (tensors or arrays: ``inference.detect_manifest``'s); ``voc_result``: what
    ``voc.evaluate_detections`` made of them (checked: the AP must be the same); ``proposals``: per image the
    test proposals ``[R_i, 4]`` of the same forward passes, sorted by score (recall vs IoU); ``coco``: COCO
    metrics (its numbers in the header, a mapping class -> AP as a column); ``per_class`` and
    ``max_examples``: the cap on the pictures.
    """
    path = Path(path)
    html = build_report(manifest=manifest, detections=detections, voc_result=voc_result, proposals=proposals,
                        coco=coco, meta=meta, per_class=per_class, max_examples=max_examples)
    atomic_write_text(path, html)
    return path
