"""``frcnn eval``: VOC AP (and COCO's metrics) of a detector over a manifest, or the recall of a proposal file.

The library does the work (``evaluate.run.evaluate_model``: one inference pass, every metric from the same
detections); ``eval_outputs.py`` renders it and writes the files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.markup import escape

from ..data.manifest import Manifest, read_manifest, require_annotations, require_objects
from ..devices import resolve_device
from ..errors import ConfigError
from ..evaluate import IOU_THRESH, METRICS
from . import console
from .detect import ablation_from_options, ablation_options
from .eval_outputs import (
    RECALL_PLOT,
    have_matplotlib,
    json_number,
    report_settings,
    show_ap,
    show_coco,
    show_recall,
    split_of,
    summary_json,
    write_ap_outputs,
    write_coco_outputs,
    write_report_page,
)
from .eval_proposals import TEST_PROPOSALS_HELP, with_test_proposals, write_results_only
from .options import checkpoint_overrides, hold_output, inference_process, model_run_options, output_complete

__all__ = ["eval_command", "split_of"]


def _eval_model(model_path: Path, data: Path, *, usage: Callable[[], str], coco: bool, out: Path | None,
                report: Path | None, batch_size: int, device: str | None, ablation, set_: tuple[str, ...],
                test_proposals: Path | None = None, results_only: bool = False) -> dict | None:
    """The evaluation's summary on rank 0 (or the one process); under torchrun the other ranks run their share of
    the images and return None. Every check and read is agreed among the ranks: an error is one line, rank 0's."""
    from ..evaluate.run import score_detections
    from ..sharded_inference import predict_sharded
    from ..sharding import RankGroup

    group, dev = RankGroup.join(resolve_device(device))
    metric, manifest, predictor = group.agree(lambda: _set_up(
        model_path, data, usage=usage, coco=coco, out=out, report=report, device=dev, ablation=ablation, set_=set_,
        test_proposals=test_proposals, results_only=results_only, batch_size=batch_size))
    ablation = predictor.settings.ablation
    if ablation is not None and group.is_main:
        console.info(escape(f"proposals: {ablation.describe()}"))
    started = time.perf_counter()
    with console.ProgressReporter("detect", every=100, quiet=not group.is_main) as bar:
        found = predict_sharded(predictor, manifest, group, batch_size=batch_size, progress=bar,
                                proposals=report is not None and not results_only)
    if found is None:
        return None
    if results_only:
        summary = write_results_only(found[0], manifest, out)
        output_complete(out, folder=True)
        return summary
    run = score_detections(*found, manifest, metric=metric, coco=coco, started=started)
    show_ap(run.voc, f"{escape(manifest.name)}: VOC AP ({metric}, IoU > {IOU_THRESH})")
    if run.coco is not None:
        show_coco(run.coco, f"{escape(manifest.name)}: COCO AP")
    if out is not None:
        write_ap_outputs(out, run.by_class, manifest, run.voc)
        if run.coco_results is not None:
            write_coco_outputs(out, run.coco_results)
        output_complete(out, folder=True)
    if report is not None:
        write_report_page(report, model_path=model_path, data=data, manifest=manifest, run=run,
                          settings=report_settings(metric, dev, batch_size, set_, ablation))
    return summary_json(run)


def _set_up(model_path: Path, data: Path, *, usage, coco: bool, out, report, device, ablation, set_,
            test_proposals: Path | None, results_only: bool, batch_size: int):
    """Every rank: the options checked, the outputs held (rank 0), the manifest and the model read: ``(metric,
    manifest, predictor)``."""
    from ..evaluate.run import check_classes, check_coco_evaluator
    from ..inference import load_predictor

    metric = usage()
    if coco:
        check_coco_evaluator()  # before the model is read and the images are run
    hold_output(out, "--out", folder=True, discard_on_failure=True)
    hold_output(report, "--report", inputs={"--data": data, "--model": model_path,
                                            "--test-proposals": test_proposals})
    overrides = checkpoint_overrides(set_, model_path)
    manifest = read_manifest(data)
    if not results_only:
        _require_scored(manifest, data)
    given = test_proposals is not None
    predictor = load_predictor(model_path, device, overrides=overrides, require=("roi_head",) if given else
                               ("rpn", "roi_head"), ablation=None if given else ablation, on_runtime=inference_process)
    check_classes(manifest, data, predictor.classes, model_path)
    if given:
        predictor = with_test_proposals(predictor, test_proposals, manifest=manifest, data=data, set_=set_,
                                        device=device, ablation=ablation, batch_size=batch_size)
    return metric, manifest, predictor


def _require_scored(manifest: Manifest, data: Path) -> None:
    """AP and recall need annotations and at least one object that counts (not difficult)."""
    require_annotations(manifest, data, "AP and recall need them: write the evaluation server's files with "
                                        "frcnn eval --model CKPT --results-only --out DIR")
    require_objects(manifest, data, "AP and recall are scored against objects, so every number would be n/a; "
                                    "evaluate on a manifest with annotated objects (the detections alone: frcnn "
                                    "detect M.json --out DIR, or eval --results-only --out DIR)")


def _eval_proposals(proposals_path: Path, data: Path, manifest: Manifest, out: Path | None) -> dict:
    from ..data.proposal_store import ProposalStore
    from ..evaluate.recall import proposal_recall

    with ProposalStore(proposals_path) as store:
        store.check_manifest(manifest, data)
        result = proposal_recall(store, manifest)
    show_recall(result, f"{escape(manifest.name)}: recall of the top N proposals at IoU >= t "
                         f"({result['num_objects']} objects, {result['mean_proposals']:.0f} proposals/image)")
    if out is not None and have_matplotlib():
        from ..evaluate.plots import plot_recall_vs_iou

        plot_recall_vs_iou(result, out / RECALL_PLOT, title=f"{manifest.name}: recall vs IoU")
        console.info(f"wrote {escape(str(out / RECALL_PLOT))}")
    output_complete(out, folder=True)
    return {"iou_thresholds": result["iou_thresholds"], "top_ns": result["top_ns"],
            "recall": {str(n): [json_number(v) for v in result["recall"][n]] for n in result["top_ns"]},
            "average_recall": {str(n): json_number(result["average_recall"][n]) for n in result["top_ns"]},
            "num_objects": result["num_objects"], "num_images": result["num_images"],
            "mean_proposals": result["mean_proposals"]}


def _check_usage(model_path, proposals_path, voc2007: bool, metric: str | None, ablation, set_=(),
                 report: Path | None = None, coco: bool = False, test_proposals: Path | None = None,
                 results_only: bool = False, out: Path | None = None) -> str:
    """The AP metric; a ``ConfigError`` (one ``Error:`` line, exit 2) for options that do not go together."""
    if (model_path is None) == (proposals_path is None):
        raise ConfigError("give exactly one of --model CKPT (detection AP) and --proposals P.h5 "
                          "(proposal recall)")
    if test_proposals is not None and model_path is None:
        raise ConfigError("--test-proposals are the proposals a detector (--model) is evaluated on; give --model, "
                          "or --proposals P.h5 alone for their recall")
    if results_only and (model_path is None or out is None or voc2007 or metric or coco or report is not None):
        raise ConfigError("--results-only writes a detector's (--model) detections as the evaluation server's files "
                          "under --out DIR, without AP: give --model and --out, and drop --voc2007, --metric, --coco "
                          "and --report")
    if voc2007 and metric not in (None, "11point"):
        raise ConfigError(f"--voc2007 is the 11-point metric; it cannot go with --metric {metric}: drop one")
    if proposals_path is not None and (voc2007 or metric is not None or ablation is not None or set_ or coco):
        raise ConfigError("--voc2007, --metric, --coco, --set and the proposal ablations (--proposals-n, "
                          "--no-rpn-*) apply to --model only; drop them for --proposals")
    if proposals_path is not None and report is not None:
        raise ConfigError("--report is the report of a detector's evaluation (--model); drop it for --proposals")
    return metric or "11point"


def _rank() -> int:
    from ..train import distributed

    return distributed.rank()


@click.command("eval")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A detector checkpoint, or a model file of frcnn export: VOC AP per class and mAP.")
@click.option("--proposals", "proposals_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An HDF5 proposal file (dump-proposals): recall against IoU (the paper's Fig. 2).")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Dataset manifest (frcnn prepare), e.g. voc2007-test.json.")
@click.option("--voc2007", is_flag=True, help="VOC2007's 11-point interpolated AP at IoU 0.5 (the paper's).")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="11point (VOC2007, the default) or area (VOC2010+: area under the precision envelope).")
@click.option("--coco", is_flag=True,
              help="Also COCO's metrics (AP@[.5:.95], AP50, AP75, APs/m/l, AR1/10/100, per class), from the same "
                   "detections; with --out also DIR/coco_results.json. Needs pip install \"frcnn[coco]\".")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the devkit result files comp4_det_<split>_<class>.txt and plots here (with --coco "
                   "also coco_results.json).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the evaluation as one self-contained HTML page: per-class table, curves, "
                   "error analysis, confusion table, pictures of errors (docs/report.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@model_run_options()
@click.option("--test-proposals", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="CKPT|P.h5|dense", help=TEST_PROPOSALS_HELP)
@click.option("--results-only", is_flag=True,
              help="No AP: write the detections as the evaluation server's files under --out DIR "
                   "(results/VOC2012/Main/comp4_det_test_<class>.txt and results.tar.gz), e.g. for VOC2012 test.")
@ablation_options
def eval_command(model_path, proposals_path, data, voc2007, metric, coco, out, report, as_json, batch_size, device,
                 test_proposals, results_only, set_, proposals_n, no_rpn_nms, no_rpn_scores, no_rpn_reg) -> None:
    """VOC AP (and with --coco COCO's AP) of a detector (--model), or the recall of a proposal file
    (--proposals), on a manifest.

    AP follows the VOC devkit: IoU > 0.5 with +1 pixel widths, difficult objects ignored, duplicates
    false positives. The result files' split is the manifest name's last '-' or '.' part (voc2007-test: test,
    mine.val: val); ids holding whitespace are written %-escaped (IMG%200001).
    Under torchrun a model's images are shared among the processes (the figures are one process's).
    """
    ablation = ablation_from_options(proposals_n, no_rpn_nms, no_rpn_scores, no_rpn_reg)
    if model_path is not None and proposals_path is None:  # a model: shared out among torchrun's processes
        usage = lambda: _check_usage(model_path, proposals_path, voc2007, metric, ablation, set_, report,  # noqa: E731
                                     coco, test_proposals, results_only, out)
        summary = _eval_model(model_path, data, usage=usage, coco=coco, out=out, report=report,
                              batch_size=batch_size, device=device, ablation=ablation, set_=set_,
                              test_proposals=test_proposals, results_only=results_only)
    elif _rank() == 0:  # a proposal file (or a usage error): under torchrun rank 0 alone does it
        _check_usage(model_path, proposals_path, voc2007, metric, ablation, set_, report, coco, test_proposals,
                     results_only, out)
        hold_output(out, "--out", folder=True, discard_on_failure=True)
        manifest = read_manifest(data)
        _require_scored(manifest, data)
        summary = _eval_proposals(proposals_path, data, manifest, out)
    else:
        summary = None
    if summary is None:
        return
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, allow_nan=False))
    elif out is not None:
        click.echo(str(out))
