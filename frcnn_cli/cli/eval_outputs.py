"""``frcnn eval``'s outputs: the tables on stderr, the devkit's result files, plots, COCO's results file, the
HTML report, and the ``--json`` document."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from ..data.manifest import Manifest
from ..evaluate import IOU_THRESH
from . import console

if TYPE_CHECKING:
    from ..evaluate.run import Evaluation

SUMMARY_PLOT = "ap_summary.png"
RECALL_PLOT = "recall_vs_iou.png"
COCO_RESULTS = "coco_results.json"


def json_number(value: float) -> float | None:
    """JSON has no NaN: a class without positives gets null."""
    return None if value is None or math.isnan(value) else float(value)


def split_of(manifest_name: str) -> str:
    """The devkit split of a manifest name: the part after the last '-', or after the last '.' when that is a
    word and comes later (``voc2007-test`` -> ``test``, ``mine.val`` of ``prepare folder --val-fraction`` ->
    ``val``), else ``test``."""
    parts = [manifest_name.rpartition("-")]
    dotted = manifest_name.rpartition(".")
    if re.fullmatch(r"\w+", dotted[2]):
        parts.append(dotted)
    head, sep, tail = max(parts, key=lambda p: len(p[0]))
    return tail if sep and head and tail else "test"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.warn("matplotlib is not installed, so no plots are written: pip install frcnn[plot]")
        return False
    return True


def show_ap(result: dict, title: str) -> None:
    rows = [[escape(name), str(result["npos"][name]), "n/a" if math.isnan(ap) else f"{100 * ap:.1f}"]
            for name, ap in result["ap"].items()]
    mean = result["map"]
    rows.append(["[bold]mAP[/bold]", str(sum(result["npos"].values())),
                 "n/a" if math.isnan(mean) else f"[bold]{100 * mean:.1f}[/bold]"])
    console.table(title, ["class", "objects", "AP (%)"], rows)


def write_ap_outputs(out: Path, dets: dict, manifest: Manifest, result: dict) -> None:
    from ..evaluate.voc import precision_recall, write_result_files

    split = split_of(manifest.name)
    write_result_files(out, dets, manifest, split)
    console.info(f"wrote {len(manifest.classes)} result files comp4_det_{escape(split)}_<class>.txt "
                 f"to {escape(str(out))}")
    if have_matplotlib():
        from ..evaluate.plots import plot_ap_summary, plot_pr_curves

        curves = precision_recall(dets, manifest, iou_thresh=IOU_THRESH)
        plot_pr_curves(curves, result["ap"], out)
        plot_ap_summary(result["ap"], out / SUMMARY_PLOT, map_value=result["map"], metric=result["metric"])
        console.info(f"wrote precision-recall plots pr_<class>.png and {SUMMARY_PLOT}")


def report_settings(metric: str, device, batch_size: int, set_: tuple[str, ...], ablation) -> dict:
    """The settings of an ``eval`` run, as the report's header lists them."""
    return {"metric": metric, "IoU": IOU_THRESH, "device": str(device), "batch size": batch_size,
            "--set": " ".join(set_) or "none", "proposals": ablation.describe() if ablation else "the RPN's"}


def write_report_page(report: Path, *, model_path: Path, data: Path, manifest: Manifest, run: Evaluation,
                      settings: dict) -> None:
    """``eval --report``: the HTML report of this run's detections (docs/report.md)."""
    import datetime

    from ..data.manifest import manifest_hash
    from ..evaluate.report import ReportMeta, write_report
    from ..model.checkpoint import file_sha256

    meta = ReportMeta(model=str(model_path), model_sha256=file_sha256(model_path), data=str(data),
                      manifest_hash=manifest_hash(manifest), settings=settings,
                      date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      seconds=run.seconds)
    write_report(report, manifest=manifest, detections=run.detections, voc_result=run.voc, proposals=run.proposals,
                 coco=_report_coco(run.coco), meta=meta)
    console.info(f"wrote the report {escape(str(report))}")


def show_recall(result: dict, title: str) -> None:
    thresholds = result["iou_thresholds"]
    rows = []
    for n in result["top_ns"]:
        cells = ["n/a" if math.isnan(r) else f"{r:.3f}" for r in result["recall"][n]]
        ar = result["average_recall"][n]
        rows.append([str(n), *cells, "n/a" if math.isnan(ar) else f"[bold]{ar:.3f}[/bold]"])
    console.table(title, ["N", *(f"{t:.2f}" for t in thresholds), "AR"], rows)




def _report_coco(coco: dict | None) -> dict | None:
    """COCO's numbers as the report's header shows them (summary numbers first, then AP per class)."""
    return None if coco is None else {**coco["stats"], "AP per class": coco["ap"]}


def show_coco(coco: dict, title: str) -> None:
    """COCO's 12 summary numbers, then AP@[.5:.95] and AP50 per class."""
    fmt = lambda v: "n/a" if math.isnan(v) else f"{100 * v:.1f}"  # noqa: E731
    console.table(f"{title} ({coco['evaluator']})", list(coco["stats"]), [[fmt(v) for v in coco["stats"].values()]])
    rows = [[escape(name), fmt(ap), fmt(coco["ap50"][name])] for name, ap in coco["ap"].items()]
    console.table(f"{title}: per class", ["class", "AP@[.5:.95] (%)", "AP50 (%)"], rows)


def write_coco_outputs(out: Path, results: list[dict]) -> None:
    """``out/coco_results.json``: the standard COCO results file (``COCO.loadRes``, the evaluation server)."""
    from ..evaluate.coco import write_coco_results

    write_coco_results(out / COCO_RESULTS, results)
    console.info(f"wrote {len(results)} detections in COCO's results format to {escape(str(out / COCO_RESULTS))}")


def summary_json(run: Evaluation) -> dict:
    """``eval --json`` of a detector: ``{"metric", "map", "ap"}`` (VOC), and ``"coco"`` when computed."""
    voc = run.voc
    doc = {"metric": voc["metric"], "map": json_number(voc["map"]),
           "ap": {name: json_number(v) for name, v in voc["ap"].items()}}
    if run.coco is not None:
        c = run.coco
        doc["coco"] = {"evaluator": c["evaluator"], "map": json_number(c["map"]),
                       "stats": {k: json_number(v) for k, v in c["stats"].items()},
                       "ap": {k: json_number(v) for k, v in c["ap"].items()},
                       "ap50": {k: json_number(v) for k, v in c["ap50"].items()}}
    return doc
