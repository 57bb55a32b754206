"""``frcnn detect``, and the Table 1 proposal-ablation options it shares with ``frcnn eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from ..devices import resolve_device
from ..errors import DataError
from . import console
from .options import (
    FiniteFloatRange,
    checkpoint_overrides,
    hold_output,
    inference_process,
    model_run_options,
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
@model_run_options()
@ablation_options
def detect(inputs, model_path, out, score_thresh, as_json, classes, batch_size, device, set_, proposals_n,
           no_rpn_nms, no_rpn_scores, no_rpn_reg) -> None:
    """Detect objects in images, folders of images (searched recursively) and the images of manifests (.json).

    Boxes are in original image pixels, 0-based continuous x1 y1 x2 y2. Folders of any size are read as the
    detection goes; with --out, rerunning a stopped command goes on where it stopped. Under torchrun the images
    are shared among the processes.
    """
    from ..detect_stream import stream_detections
    from ..sharding import RankGroup

    group, dev = RankGroup.join(resolve_device(device))
    ablation = ablation_from_options(proposals_n, no_rpn_nms, no_rpn_scores, no_rpn_reg)
    wanted = parse_class_list(classes)
    source, predictor, digest = group.agree(lambda: _set_up(inputs, model_path, out, set_, dev, ablation, wanted,
                                                            score_thresh, batch_size, main=group.is_main))
    if ablation is not None and group.is_main:
        console.info(f"proposals: {ablation.describe()}")
    printed = _Printer(score_thresh, as_json, out)
    with console.ProgressReporter("detect", every=50, quiet=not group.is_main) as bar:
        summary = stream_detections(predictor, source, group, out_dir=out, digest=digest, batch_size=batch_size,
                                    score_thresh=score_thresh, classes_filter=wanted, on_result=printed,
                                    progress=bar, on_note=lambda note: console.warn(escape(note)))
    if summary is None:
        return
    printed.close()
    if out is not None:
        drawn = summary.images - summary.unreadable
        console.info(f"wrote {drawn} image(s) and {escape(str(out / 'detections.json'))}")
        if not as_json:
            click.echo(str(out / "detections.json"))
    _fail_for_unreadable(summary, out)


def _set_up(inputs, model_path, out, set_, device, ablation, wanted, score_thresh, batch_size, *, main: bool):
    """Every rank: the outputs held (rank 0), the model, the class filter checked; rank 0 also checks the inputs
    (it alone reads the folders) and says what the results depend on (a rerun with --out takes them up)."""
    from .. import detect as lib
    from ..data.discovery import ImageSource
    from ..detect_results import detect_digest
    from ..detect_stream import check_roots_apart
    from ..inference import load_predictor
    from ..model.checkpoint import file_sha256

    hold_output(out, "--out", folder=True, discard_on_failure=True)
    overrides = checkpoint_overrides(set_, model_path)
    source = ImageSource(manifest_images(inputs), exclude=out) if main else None
    if source is not None and out is not None:
        check_roots_apart(source.roots, out)
    predictor = load_predictor(model_path, device, overrides=overrides, ablation=ablation, score_thresh=score_thresh,
                               on_runtime=inference_process)
    lib.label_filter(predictor.classes, wanted)  # an unknown class name fails before any image is read
    digest = ""
    if main and out is not None:
        digest = detect_digest(file_sha256(model_path), predictor.settings, inputs=inputs,
                               score_thresh=score_thresh, classes=wanted, batch_size=batch_size)
    return source, predictor, digest


class _Printer:
    """Each image's entry as it comes (rank 0): a table on stderr, and with --json the list on stdout, streamed.

    When the results also go to a file or stdout (--out, --json), only the first ``TABLES`` images get a table:
    rendering one costs milliseconds, more than detecting a small image, and a folder of 100,000 photos would
    otherwise be bound by rank 0's printing."""

    TABLES = 20

    def __init__(self, score_thresh: float, as_json: bool, out: Path | None) -> None:
        self.score_thresh, self.as_json, self.out, self.count = score_thresh, as_json, out, 0

    def __call__(self, entry: dict) -> None:
        if self.count == 0:  # its entry is in --out's results file: from now on a failure keeps the folder to resume
            output_complete(self.out, folder=True)
        if self.count < self.TABLES or not (self.as_json or self.out is not None):
            _show(entry, self.score_thresh)
        elif self.count == self.TABLES:
            where = escape(str(self.out / "detections.json")) if self.out is not None else "the JSON on stdout"
            console.info(f"(the detections of the other images are not shown here: see {where})")
        if self.as_json:
            line = json.dumps(entry, ensure_ascii=False, allow_nan=False)
            click.echo(("[\n" if self.count == 0 else ",\n") + line, nl=False)
        self.count += 1

    def close(self) -> None:
        if self.as_json:
            click.echo("\n]" if self.count else "[]")


def _fail_for_unreadable(summary, out: Path | None) -> None:
    """After every readable image is done and written: exit 1 naming the images that could not be read."""
    if not summary.unreadable:
        return
    listed = f"; in {out / 'detections.json'} they have an \"error\"" if out is not None else ""
    raise DataError(f"{summary.unreadable} of {summary.images} images could not be read (first: "
                    f"{summary.first_error}){listed}; the other images were detected. Replace or remove the "
                    "unreadable ones and run detect again")
