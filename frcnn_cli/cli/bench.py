"""``frcnn bench``: the paper's Table 4 (ms per image per stage) for this machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..devices import resolve_device
from ..errors import ConfigError
from . import console
from .options import (
    PRESET_HELP,
    checkpoint_overrides,
    inference_process,
    load_cli_config,
    model_run_options,
    positive_int,
)

# Faster R-CNN, Table 4 (K40 GPU, ms per image): shared convs, proposals, region-wise, total, fps
PAPER_TABLE4 = {"vgg16": (141, 10, 47, 198, 5), "zf": (31, 3, 25, 59, 17)}
def _build_predictor(model_path: Path | None, config: str | None, set_: tuple[str, ...], device, threads):
    """The prepared model to time and whether its weights are random."""

    from ..data.voc import VOC_CLASSES
    from ..inference import Predictor, load_predictor
    from ..model.detector import FasterRCNN

    if (model_path is None) == (config is None):
        raise ConfigError("give exactly one of --model CKPT (a trained model) or --config PRESET (random "
                          "weights, speed only), e.g. frcnn bench --config vgg16")
    extra = () if threads is None else (f"runtime.threads={threads}",)
    if model_path is not None:
        overrides = checkpoint_overrides((*set_, *extra), model_path,
                                         advice="drop it, or benchmark a --config preset instead")
        return load_predictor(model_path, device, overrides=overrides, on_runtime=inference_process), False
    cfg, runtime = load_cli_config(config, (*set_, *extra), None)
    inference_process(device, runtime)
    model = FasterRCNN(cfg, list(VOC_CLASSES))
    return Predictor.for_model(model, device, runtime=runtime, owned=True), True


def _fmt(ms: float) -> str:
    return f"{ms:.1f}"


def _show(result, backbone: str, random_weights: bool) -> None:
    paper = PAPER_TABLE4.get(backbone)
    columns = ["stage", "ms / image"] + ([f"paper {backbone} (K40)"] if paper else [])
    names = [("shared convs", "backbone"), ("proposals", "proposals"), ("region-wise", "region_wise"),
             ("total", "total")]
    rows = []
    for i, (label, key) in enumerate(names):
        row = [label, _fmt(result.ms_per_image[key]) if key in result.ms_per_image else "n/a"]
        rows.append(row + ([str(paper[i])] if paper else []))
    rows.append(["images/s", f"{result.images_per_s:.2f}"] + ([str(paper[4])] if paper else []))
    h, w = result.image_size
    title = (f"frcnn bench: {backbone} on {result.device} ({result.device_name}), batch {result.batch_size}, "
             f"input {w}x{h}, median of {result.runs} runs after {result.warmup} warm-up")
    console.table(title, columns, rows)
    notes = [f"peak memory {result.peak_memory_mb:.0f} MiB"
             + (" (process peak RSS)" if result.device == "cpu" else " (max allocated)")]
    notes.append(_precision_note(result))
    if result.exported:
        runner = "ONNX Runtime" if result.exported == "onnx" else "TorchScript"
        notes.append(f"an exported {result.exported} graph on {runner}, timed as a whole: total only, including "
                     "the resize and normalisation inside the graph")
    if result.svd_layers:
        notes.append(f"truncated SVD of {', '.join(result.svd_layers)}")
    if result.winograd_layers:
        notes.append(f"Winograd F(4x4, 3x3) for {len(result.winograd_layers)} convs "
                     f"(--set runtime.cpu_winograd=false: direct)")
    console.info("; ".join(notes))
    if random_weights:
        console.warn("random weights (--config without --model): the timings are for speed only; the "
                     "post-processing of a trained model has more boxes above the score threshold")


def _precision_note(result) -> str:
    """Which precision ran, and on the CPU why: natively computed bf16, or bf16 forced where it is emulated."""
    from ..devices import cpu_bf16_kind

    if result.device != "cpu" or result.exported:
        return "bf16 autocast" if result.amp else "float32"
    kind = cpu_bf16_kind()
    if not result.amp:
        return "float32" + (f" (--set runtime.amp=false; this CPU computes bf16 natively: {kind})" if kind else "")
    note = (f"bf16 autocast (this CPU computes bf16 natively: {kind})" if kind else
            "bf16 autocast (forced: this CPU emulates bf16, which is slower than float32)")
    if result.float32_winograd_layers:
        note += f", {len(result.float32_winograd_layers)} Winograd convs in float32"
    return note


@click.command("bench")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A trained checkpoint, or a model file of frcnn export (ONNX, TorchScript).")
@click.option("--config", default=None, metavar="PRESET|FILE",
              help=f"Random weights, speed only: {PRESET_HELP}")
@model_run_options(set_help="Override a setting, e.g. --set roi_head.fc_svd_rank=1024, runtime.cpu_winograd=false "
                            "or runtime.amp=false (float32) (repeatable; on --model only test-time and runtime "
                            "keys).")
@click.option("--runs", type=positive_int, default=10, show_default=True, help="Timed runs (median).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def bench(images, model_path, config, set_, device, batch_size, runs, warmup, threads, as_json):
    """Milliseconds per image of the shared convs, the proposal stage and the region-wise stage (the
    paper's Table 4), images/s and peak memory. Without IMAGE|DIR a synthetic 500x375 image is timed."""
    from ..bench import load_images, run_benchmark

    dev = resolve_device(device)
    predictor, random_weights = _build_predictor(model_path, config, set_, dev, threads)
    decoded = load_images(images) if images else None
    result = run_benchmark(predictor, decoded, batch_size=batch_size, runs=runs, warmup=warmup)
    _show(result, predictor.settings.config.backbone, random_weights)
    if as_json:
        click.echo(json.dumps(result.to_json()))
