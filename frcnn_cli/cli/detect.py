"""``frcnn detect``, and the Table 1 proposal-ablation options it shares with ``frcnn eval``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..devices import resolve_device
from ..errors import DataError
from . import console
from .options import (
    FiniteFloatRange,
    check_checkpoint_overrides,
    checkpoint_set_option,
    hold_output,
    load_predictor,
    output_complete,
    positive_int,
)


def ablation_options(f):
    """``--proposals-n N``, ``--no-rpn-nms``, ``--no-rpn-scores``, ``--no-rpn-reg`` (paper, Table 1)."""
    f = click.option("--no-rpn-reg", is_flag=True,
                     help="Ablation: the anchors themselves as proposals (RPN reg deltas off).")(f)
    f = click.option("--no-rpn-scores", is_flag=True,
                     help="Ablation: N proposals drawn at random, no ranking and no NMS (RPN cls off).")(f)
    f = click.option("--no-rpn-nms", is_flag=True,
                     help="Ablation: the top N proposals by score without NMS (the paper: N=6000).")(f)
    f = click.option("--proposals-n", type=positive_int, default=None, metavar="N",
                     help="Test proposals per image (default: the config's, 300 for the paper's models).")(f)
    return f


def ablation_from_options(proposals_n: int | None, no_rpn_nms: bool, no_rpn_scores: bool,
                          no_rpn_reg: bool):
    """The ``ProposalAblation`` the options ask for; None when they ask for none."""
    from ..ablations import ProposalAblation

    ablation = ProposalAblation(nms=not no_rpn_nms, use_scores=not no_rpn_scores,
                                use_regression=not no_rpn_reg, top_n=proposals_n)
    return None if ablation.is_default else ablation


def manifest_images(inputs) -> list[Path]:
    """The inputs, each manifest among them (a ``.json`` file, e.g. an images-only test set) as its images."""
    from ..data.manifest import read_manifest

    paths: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.suffix.lower() == ".json" and path.is_file():
            manifest = read_manifest(path)
            paths.extend(manifest.image_path(rec) for rec in manifest.images)
        else:
            paths.append(path)
    return paths


def parse_class_list(text: str | None) -> list[str] | None:
    """``"cat, dog"`` -> ``["cat", "dog"]``; None or only commas -> None."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


def _show(result: dict, score_thresh: float) -> None:
    if "error" in result:
        console.warn(escape(f"not read: {result['error']}"))
        return
    where = f"{escape(result['image'])} ({result['width']}x{result['height']})"
    dets = result["detections"]
    if not dets:
        console.info(f"{where}: no detections with score >= {score_thresh:.2f}")
        return
    rows = [[escape(d["label"]), f"{d['score']:.3f}", *(f"{v:.1f}" for v in d["box"])] for d in dets]
    console.table(f"{where}: {len(dets)} detection{'s' if len(dets) != 1 else ''}",
                  ["class", "score", "x1", "y1", "x2", "y2"], rows)


@click.command("detect")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE|DIR|M.json...", type=click.Path(path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A detector checkpoint (train-detector or frcnn train), or a model file of frcnn export.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each image with its detections drawn, and DIR/detections.json.")
@click.option("--score-thresh", type=FiniteFloatRange(0, 1), default=0.5, show_default=True,
              help="Keep detections with at least this score.")
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON on stdout.")
@click.option("--classes", default=None, metavar="A,B", help="Only these classes (comma-separated names).")
@click.option("--batch-size", type=positive_int, default=1, show_default=True, help="Images per forward pass.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@checkpoint_set_option
@ablation_options
def detect(inputs, model_path, out, score_thresh, as_json, classes, batch_size, device, set_, proposals_n,
           no_rpn_nms, no_rpn_scores, no_rpn_reg) -> None:
    """Detect objects in images, folders of images (searched recursively) and the images of manifests (.json).

    Boxes are in original image pixels, 0-based continuous x1 y1 x2 y2.
    """
    from .. import detect as lib
    from ..data.images import find_images

    hold_output(out, "--out", folder=True, discard_on_failure=True)
    check_checkpoint_overrides(set_, model_path)
    images = find_images(manifest_images(inputs), exclude=out)
    if out is not None:
        lib.check_outputs_apart(images, out)
    ablation = ablation_from_options(proposals_n, no_rpn_nms, no_rpn_scores, no_rpn_reg)
    predictor = load_predictor(model_path, set_, resolve_device(device), require=("rpn", "roi_head"),
                               ablation=ablation)
    wanted = parse_class_list(classes)
    lib.label_filter(predictor.classes, wanted)  # an unknown class name fails before any image is read
    if ablation is not None:
        console.info(f"proposals: {ablation.describe()}")
    with console.ProgressReporter("detect", every=50) as bar:
        results = lib.detect_images(predictor, images, batch_size=batch_size, score_thresh=score_thresh,
                                    classes_filter=wanted, progress=bar)
    for result in results:
        _show(result, score_thresh)
    if out is not None:
        lib.save_detections(results, out, classes=predictor.classes)
        output_complete(out, folder=True)  # whole: kept when unreadable photos make the command exit 1
        drawn = len(results) - len(lib.unreadable(results))
        console.info(f"wrote {drawn} image(s) and {escape(str(out / 'detections.json'))}")
    if as_json:
        click.echo(lib.detections_json(results))
    elif out is not None:
        click.echo(str(out / "detections.json"))
    _fail_for_unreadable(lib.unreadable(results), len(results), out)


def _fail_for_unreadable(failed: list[dict], total: int, out: Path | None) -> None:
    """After every readable image is done and written: exit 1 naming the images that could not be read."""
    if not failed:
        return
    listed = f"; in {out / 'detections.json'} they have an \"error\"" if out is not None else ""
    raise DataError(f"{len(failed)} of {total} images could not be read (first: {failed[0]['error']}){listed}; "
                    "the other images were detected. Replace or remove the unreadable ones and run detect again")
