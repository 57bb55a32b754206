"""``frcnn export``: a detector checkpoint as one ONNX or TorchScript graph, image in, detections out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
from rich.markup import escape

from . import console
from .options import FiniteFloatRange, checkpoint_overrides, checkpoint_set_option, hold_output, positive_int

FORMAT_CHOICES = ("onnx", "torchscript")


@click.command("export")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A detector checkpoint (train-detector or frcnn train).")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMAT_CHOICES),
              help="onnx (run with ONNX Runtime, TensorRT, …) or torchscript (torch.jit.load, libtorch).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The model file to write, e.g. model.onnx.")
@click.option("--score-thresh", type=FiniteFloatRange(0, 1), default=None,
              help="Keep detections scoring above this (default: the config's roi_head.score_thresh, 0.05).")
@click.option("--proposals-n", type=positive_int, default=None, metavar="N",
              help="Test proposals per image (default: the config's, 300 for the paper's models).")
@click.option("--check-images", "check_paths", multiple=True, type=click.Path(path_type=Path),
              metavar="IMAGE|DIR",
              help="Check the export on these images (repeatable; default: synthetic scenes of two sizes).")
@checkpoint_set_option
def export(model_path, fmt, out, score_thresh, proposals_n, check_paths, set_) -> None:
    """Export a detector to ONNX or TorchScript: the whole detector in one graph (resize to the test scale,
    normalise, backbone, RPN, proposal NMS, RoI pooling, head, per-class NMS and score threshold).

    The graph takes one uint8 RGB image [3, H, W] of any size, named image, and gives boxes [N, 4] (x1 y1 x2
    y2 in the image's pixels), scores [N] and labels [N] (index into the class list); the class names, the
    config and the checkpoint's hash are in its metadata (docs/deploying.md). Before it is written the
    exported model is run on the check images and must give the checkpoint's detections (boxes within 1 px,
    scores within 0.002; detections whose scores tie are matched by class and score); otherwise nothing is
    written. An existing file at --out is replaced once the new export has passed (export says so); its
    suffix must fit --format (.onnx; .ts, .torchscript, .jit or .pt). detect, eval and bench take the file as
    --model.
    """
    from ..bench import load_images
    from ..config import runtime_defaults
    from ..devices import process_settings
    from ..export.writer import check_suffix, export_model
    from ..inference import InferenceSettings
    from ..model.checkpoint import load_model
    from .detect import ablation_from_options

    overrides = checkpoint_overrides(set_, model_path)
    check_suffix(out, fmt)
    replacing = out.is_file()
    hold_output(out, "--out", inputs={"--model": model_path, "--check-images": list(check_paths)})
    images = load_images(check_paths) if check_paths else None
    model, _ = load_model(model_path, device="cpu", require=("rpn", "roi_head"))
    runtime = overrides.apply_runtime(runtime_defaults(model.cfg.name))
    process_settings(torch_cpu(), runtime)
    settings = InferenceSettings.from_config(model.cfg, overrides=overrides,
                                             ablation=ablation_from_options(proposals_n, False, False, False))
    if score_thresh is not None:  # the graph keeps what detect --score-thresh would show
        settings = replace(settings, detections=replace(settings.detections, score_thresh=score_thresh))
    console.info(f"exporting {escape(str(model_path))} to {fmt}, then checking it against the checkpoint")
    report = export_model(model, settings, out, fmt=fmt, checkpoint=model_path, images=images, runtime=runtime)
    v, meta = report.verification, report.metadata
    console.info(f"checked on {len(v.sizes)} images ({', '.join(f'{w}x{h}' for h, w in v.sizes)}): the "
                 f"checkpoint's detections, largest differences {v.box_px:.2g} px and {v.score:.2g} in score "
                 f"({v.detections} detections)")
    for line in v.inconclusive():
        console.warn(escape(line))
    classes = len(meta.classes)
    console.info(f"wrote {escape(str(out))}{' (it replaces the file that was there)' if replacing else ''}: "
                 f"{classes} class{'es' if classes != 1 else ''}, {meta.settings.proposals.post_nms_top_n} "
                 f"proposals, score > {meta.settings.detections.score_thresh:g}")
    click.echo(str(out))


def torch_cpu():
    import torch

    return torch.device("cpu")
