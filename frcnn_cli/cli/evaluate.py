"""``frcnn eval``: VOC AP of a detector over a manifest, or the recall of a proposal file."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
from rich.markup import escape

from ..data.manifest import Manifest, read_manifest
from ..devices import resolve_device
from ..errors import ConfigError, DataError
from ..evaluate.voc import METRICS
from . import console
from .detect import ablation_from_options, ablation_options
from .options import check_checkpoint_overrides, checkpoint_set_option, hold_output, load_predictor, positive_int

IOU_THRESH = 0.5  # PASCAL VOC's overlap criterion
SUMMARY_PLOT = "ap_summary.png"
RECALL_PLOT = "recall_vs_iou.png"


def _number(value: float) -> float | None:
    """JSON has no NaN: a class without positives gets null."""
    return None if value is None or math.isnan(value) else float(value)


def split_of(manifest_name: str) -> str:
    """The devkit split of a manifest name: the part after the last '-' (``voc2007-test`` -> ``test``),
    else ``test``."""
    head, sep, tail = manifest_name.rpartition("-")
    return tail if sep and head and tail else "test"


def check_classes(manifest: Manifest, manifest_path: Path, classes: list[str], model_path: Path) -> None:
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


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.warn("matplotlib is not installed, so no plots are written: pip install frcnn[plot]")
        return False
    return True


def _show_ap(result: dict, title: str) -> None:
    rows = [[escape(name), str(result["npos"][name]), "n/a" if math.isnan(ap) else f"{100 * ap:.1f}"]
            for name, ap in result["ap"].items()]
    mean = result["map"]
    rows.append(["[bold]mAP[/bold]", str(sum(result["npos"].values())),
                 "n/a" if math.isnan(mean) else f"[bold]{100 * mean:.1f}[/bold]"])
    console.table(title, ["class", "objects", "AP (%)"], rows)


def _write_ap_outputs(out: Path, dets: dict, manifest: Manifest, result: dict) -> None:
    from ..evaluate.voc import precision_recall, write_result_files

    split = split_of(manifest.name)
    write_result_files(out, dets, manifest, split)
    console.info(f"wrote {len(manifest.classes)} result files comp4_det_{escape(split)}_<class>.txt "
                 f"to {escape(str(out))}")
    if _have_matplotlib():
        from ..evaluate.plots import plot_ap_summary, plot_pr_curves

        curves = precision_recall(dets, manifest, iou_thresh=IOU_THRESH)
        plot_pr_curves(curves, result["ap"], out)
        plot_ap_summary(result["ap"], out / SUMMARY_PLOT, map_value=result["map"], metric=result["metric"])
        console.info(f"wrote precision-recall plots pr_<class>.png and {SUMMARY_PLOT}")


def _report_settings(metric: str, device, batch_size: int, set_: tuple[str, ...], ablation) -> dict:
    """The settings of an ``eval`` run, as the report's header lists them."""
    return {"metric": metric, "IoU": IOU_THRESH, "device": str(device), "batch size": batch_size,
            "--set": " ".join(set_) or "none", "proposals": ablation.describe() if ablation else "the RPN's"}


def _write_report(report: Path, *, model_path: Path, data: Path, manifest: Manifest, results: list, result: dict,
                  proposals: list | None, settings: dict, started: float) -> None:
    """``eval --report``: the HTML report of this run's detections (docs/report.md)."""
    import datetime

    from ..data.manifest import manifest_hash
    from ..evaluate.report import ReportMeta, write_report
    from ..model.checkpoint import file_sha256

    meta = ReportMeta(model=str(model_path), model_sha256=file_sha256(model_path), data=str(data),
                      manifest_hash=manifest_hash(manifest), settings=settings,
                      date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      seconds=time.perf_counter() - started)
    write_report(report, manifest=manifest, detections=results, voc_result=result, proposals=proposals, meta=meta)
    console.info(f"wrote the report {escape(str(report))}")


def _eval_model(model_path: Path, data: Path, manifest: Manifest, *, metric: str, out: Path | None,
                batch_size: int, device: str | None, ablation, set_: tuple[str, ...] = (),
                report: Path | None = None) -> dict:
    from ..evaluate.voc import detections_by_class, evaluate_detections
    from ..inference import predict_manifest

    started = time.perf_counter()
    dev = resolve_device(device)
    predictor = load_predictor(model_path, set_, dev, require=("rpn", "roi_head"), ablation=ablation)
    check_classes(manifest, data, predictor.classes, model_path)
    if ablation is not None:
        console.info(f"proposals: {ablation.describe()}")
    with console.ProgressReporter("detect", every=100) as bar:
        results, proposals = predict_manifest(predictor, manifest, batch_size=batch_size, progress=bar,
                                              proposals=report is not None)
    dets = detections_by_class(results, len(predictor.classes))
    result = evaluate_detections(dets, manifest, iou_thresh=IOU_THRESH, metric=metric)
    _show_ap(result, f"{escape(manifest.name)}: VOC AP ({metric}, IoU > {IOU_THRESH})")
    if out is not None:
        _write_ap_outputs(out, dets, manifest, result)
    if report is not None:
        _write_report(report, model_path=model_path, data=data, manifest=manifest, results=results, result=result,
                      proposals=proposals, settings=_report_settings(metric, dev, batch_size, set_, ablation),
                      started=started)
    return {"metric": metric, "map": _number(result["map"]),
            "ap": {name: _number(v) for name, v in result["ap"].items()}}


def _show_recall(result: dict, title: str) -> None:
    thresholds = result["iou_thresholds"]
    rows = []
    for n in result["top_ns"]:
        cells = ["n/a" if math.isnan(r) else f"{r:.3f}" for r in result["recall"][n]]
        ar = result["average_recall"][n]
        rows.append([str(n), *cells, "n/a" if math.isnan(ar) else f"[bold]{ar:.3f}[/bold]"])
    console.table(title, ["N", *(f"{t:.2f}" for t in thresholds), "AR"], rows)


def _eval_proposals(proposals_path: Path, data: Path, manifest: Manifest, out: Path | None) -> dict:
    from ..data.proposal_store import ProposalStore
    from ..evaluate.recall import proposal_recall

    with ProposalStore(proposals_path) as store:
        store.check_manifest(manifest, data)
        result = proposal_recall(store, manifest)
    _show_recall(result, f"{escape(manifest.name)}: recall of the top N proposals at IoU >= t "
                         f"({result['num_objects']} objects, {result['mean_proposals']:.0f} proposals/image)")
    if out is not None and _have_matplotlib():
        from ..evaluate.plots import plot_recall_vs_iou

        plot_recall_vs_iou(result, out / RECALL_PLOT, title=f"{manifest.name}: recall vs IoU")
        console.info(f"wrote {escape(str(out / RECALL_PLOT))}")
    return {"iou_thresholds": result["iou_thresholds"], "top_ns": result["top_ns"],
            "recall": {str(n): [_number(v) for v in result["recall"][n]] for n in result["top_ns"]},
            "average_recall": {str(n): _number(result["average_recall"][n]) for n in result["top_ns"]},
            "num_objects": result["num_objects"], "num_images": result["num_images"],
            "mean_proposals": result["mean_proposals"]}


def _check_usage(model_path, proposals_path, voc2007: bool, metric: str | None, ablation, set_=(),
                 report=None) -> str:
    """The AP metric; a ``ConfigError`` (one ``Error:`` line, exit 2) for options that do not go together."""
    if (model_path is None) == (proposals_path is None):
        raise ConfigError("give exactly one of --model CKPT (detection AP) and --proposals P.h5 "
                          "(proposal recall)")
    if voc2007 and metric not in (None, "11point"):
        raise ConfigError(f"--voc2007 is the 11-point metric; it cannot go with --metric {metric}: drop one")
    if proposals_path is not None and (voc2007 or metric is not None or ablation is not None or set_):
        raise ConfigError("--voc2007, --metric, --set and the proposal ablations (--proposals-n, --no-rpn-*) "
                          "apply to --model only; drop them for --proposals")
    if proposals_path is not None and report is not None:
        raise ConfigError("--report is the report of a detector's evaluation (--model); drop it for --proposals")
    return metric or "11point"


@click.command("eval")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A detector checkpoint: VOC AP per class and mAP.")
@click.option("--proposals", "proposals_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An HDF5 proposal file (dump-proposals): recall against IoU (the paper's Fig. 2).")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Dataset manifest (frcnn prepare), e.g. voc2007-test.json.")
@click.option("--voc2007", is_flag=True, help="VOC2007's 11-point interpolated AP at IoU 0.5 (the paper's).")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="11point (VOC2007, the default) or area (VOC2010+: area under the precision envelope).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the devkit result files comp4_det_<split>_<class>.txt and plots here.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the evaluation as one self-contained HTML page: per-class table, curves, "
                   "error analysis, confusion table, pictures of errors (docs/report.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--batch-size", type=positive_int, default=1, show_default=True, help="Images per forward pass.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@checkpoint_set_option
@ablation_options
def eval_command(model_path, proposals_path, data, voc2007, metric, out, report, as_json, batch_size, device, set_,
                 proposals_n, no_rpn_nms, no_rpn_scores, no_rpn_reg) -> None:
    """VOC AP of a detector (--model), or the recall of a proposal file (--proposals), on a manifest.

    AP follows the VOC devkit: IoU > 0.5 with +1 pixel widths, difficult objects ignored, duplicates
    false positives. The result files' split is the manifest name's last '-' part (voc2007-test: test).
    """
    ablation = ablation_from_options(proposals_n, no_rpn_nms, no_rpn_scores, no_rpn_reg)
    metric = _check_usage(model_path, proposals_path, voc2007, metric, ablation, set_, report)
    hold_output(out, "--out", folder=True)
    hold_output(report, "--report")
    check_checkpoint_overrides(set_, model_path)
    manifest = read_manifest(data)
    if model_path is not None:
        summary = _eval_model(model_path, data, manifest, metric=metric, out=out, batch_size=batch_size,
                              device=device, ablation=ablation, set_=set_, report=report)
    else:
        summary = _eval_proposals(proposals_path, data, manifest, out)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, allow_nan=False))
    elif out is not None:
        click.echo(str(out))
