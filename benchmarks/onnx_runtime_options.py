"""ONNX Runtime's own ways to run frcnn's exported graph faster on a CPU, each checked against the export's
tolerance: graph optimisation levels, threads, float16 and bfloat16 graphs, int8 dynamic quantisation.

Two models, each exported with ``frcnn_cli.export.writer.export_model`` (``frcnn export``'s path, its own check
included):

- accuracy: a trained checkpoint (``--checkpoint``, e.g. the demo's ``run/final.pt``): every variant's detections
  on ``frcnn export``'s check images (or ``--images M.json``'s) against the checkpoint's float32 ``Predictor``,
  compared as ``frcnn export`` compares them (``export.verify``: boxes within 1 px, scores within 0.002, the
  same detections above 0.5);
- speed: frcnn's ``vgg16`` preset (random weights, seeded) on one 600x800 uint8 image (``--quick``: 256x320),
  end to end, each variant and the default session taking turns (median of ``--runs`` after ``--warmup``).

Variants (``--variants``): ``default`` (what ``frcnn detect --model model.onnx`` runs: ``ORT_ENABLE_ALL``,
``runtime.threads``), ``opt-disabled``, ``opt-basic``, ``opt-extended``, ``threads-N`` (N intra-op threads),
``fp16`` (``onnxruntime.transformers.float16``, float32 inputs and outputs kept), ``bf16`` (every float32
initializer of a Conv, MatMul or Gemm stored as bfloat16 and cast back: does ONNX Runtime's CPU provider run it
at all), ``int8`` (``quantize_dynamic``: MatMul/Gemm weights int8, activations quantised per call) and
``int8-conv`` (Conv too, as ConvInteger).

    python benchmarks/onnx_runtime_options.py --checkpoint /tmp/demo/run/final.pt --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from harness import Stopwatch, interleaved, median_of, setup_run
from onnx_runtime import frcnn_model

from frcnn_cli.config import RuntimeConfig
from frcnn_cli.export.metadata import ExportMetadata
from frcnn_cli.export.predictor import ExportedPredictor
from frcnn_cli.export.runtime import INPUT_NAME, OUTPUT_NAMES
from frcnn_cli.export.verify import check_images, verify_export
from frcnn_cli.export.writer import export_model
from frcnn_cli.inference import InferenceSettings, Predictor
from frcnn_cli.model.checkpoint import load_model, save_checkpoint

LEVELS = {"opt-disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "opt-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "opt-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
DEFAULT_VARIANTS = "default,opt-disabled,opt-basic,opt-extended,threads-2,fp16,bf16,int8,int8-conv"


class SessionRunner:
    """An ONNX file in a CPU session of the given options, with ``export.runtime.OnnxRunner``'s interface."""

    def __init__(self, path: Path, options: ort.SessionOptions, metadata: dict[str, str]) -> None:
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.device, self.metadata = torch.device("cpu"), metadata

    def __call__(self, image: torch.Tensor):
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)


def session_options(variant: str, threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = int(variant.split("-")[1]) if variant.startswith("threads-") else threads
    if variant in LEVELS:
        options.graph_optimization_level = LEVELS[variant]
    return options


def _bf16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Conv/MatMul/Gemm float32 initializers stored as bfloat16 and cast to float32 where they are read: the
    only bf16 an ONNX Runtime CPU session can be given without bf16 kernels for those ops."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    used = {name for node in graph.node if node.op_type in ("Conv", "MatMul", "Gemm") for name in node.input}
    casts = []
    for init in graph.initializer:
        if init.name in used and init.data_type == TensorProto.FLOAT:
            values = torch.from_numpy(numpy_helper.to_array(init).copy()).bfloat16()
            bits = values.view(torch.int16).numpy()
            bf16 = helper.make_tensor(init.name + "_bf16", TensorProto.BFLOAT16, list(values.shape),
                                      bits.astype("uint16").tobytes(), raw=True)
            init.CopyFrom(bf16)
            casts.append(helper.make_node("Cast", [init.name], [init.name[:-5]], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)  # the casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def variant_file(variant: str, exported: Path, folder: Path) -> Path:
    """The ONNX file a variant runs (the export itself, or a converted copy with its metadata)."""
    if variant in ("fp16", "bf16", "int8", "int8-conv"):
        out = folder / f"{exported.stem}-{variant}.onnx"
        if variant.startswith("int8"):
            from onnxruntime.quantization import QuantType, quantize_dynamic

            ops = ["MatMul", "Gemm"] + (["Conv"] if variant == "int8-conv" else [])
            quantize_dynamic(str(exported), str(out), op_types_to_quantize=ops, weight_type=QuantType.QInt8)
            return out
        model = onnx.load(str(exported))
        if variant == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(model, keep_io_types=True)
        else:
            model = _bf16_weights(model)
        onnx.save(model, str(out))
        return out
    return exported


def open_variant(variant: str, exported: Path, folder: Path, threads: int):
    """(runner, None) or (None, why it cannot run)."""
    metadata = dict(ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
                    .get_modelmeta().custom_metadata_map)
    try:
        return SessionRunner(variant_file(variant, exported, folder), session_options(variant, threads), metadata), None
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error types: report and go on
        return None, str(exc).strip().splitlines()[0][:200]


def export(model, folder: Path, name: str, threads: int) -> Path:
    checkpoint = folder / f"{name}.pt"
    save_checkpoint(checkpoint, model, stage="final", provenance={})
    runtime = replace(RuntimeConfig(), num_workers=0, threads=threads, amp=False)
    return export_model(model, InferenceSettings.from_config(model.cfg), folder / f"{name}.onnx", fmt="onnx",
                        checkpoint=checkpoint, runtime=runtime).path


def test_images(manifest_path: Path | None, count: int) -> list[torch.Tensor]:
    """The first ``count`` images of a manifest (uint8 ``[3, H, W]``), or ``frcnn export``'s check images."""
    if manifest_path is None:
        return check_images()
    from frcnn_cli.data.images import load_image
    from frcnn_cli.data.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    return [load_image(manifest.image_path(rec)) for rec in manifest.images[:count]]


def accuracy(checkpoint: Path, variants: list[str], folder: Path, threads: int, images: list[torch.Tensor]) -> None:
    model, _ = load_model(checkpoint)
    runtime = replace(RuntimeConfig(), num_workers=0, threads=threads, amp=False)
    reference = Predictor(model, "cpu", InferenceSettings.from_config(model.cfg), runtime)
    exported = export(model, folder, "checked", threads)
    meta = ExportMetadata.from_strings({p.key: p.value for p in onnx.load(str(exported)).metadata_props}, exported)
    print(f"accuracy against the checkpoint {checkpoint} (float32 Predictor) on {len(images)} images:")
    for variant in variants:
        runner, why = open_variant(variant, exported, folder, threads)
        if runner is None:
            print(f"  {variant:14s} does not run: {why}")
            continue
        result = verify_export(reference, ExportedPredictor(runner, meta, exported, runtime), images)
        print(f"  {variant:14s} {'within' if result.ok else 'OUTSIDE'} the export's tolerance: largest box "
              f"difference {result.box_px:.3g} px, score {result.score:.3g} ({result.detections} detections)"
              + ("" if result.ok else f"; {result.failure()}"))


def _timed(runner, image):
    def run() -> dict[str, float]:
        watch = Stopwatch(torch.device("cpu"))
        runner(image)
        watch.lap("total")
        return watch.laps

    return run


def speed(args, variants: list[str], folder: Path, device) -> None:
    """Each variant against the default session, taking turns; one variant's session open at a time (a VGG16
    session holds about 0.6 GB of weights and its arena)."""
    height, width = (256, 320) if args.quick else (600, 800)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    exported = export(frcnn_model(args.quick), folder, "vgg16", args.threads)
    default, _ = open_variant("default", exported, folder, args.threads)
    print(f"speed: VGG16 (random weights) on one {width}x{height} image, end to end, {args.clock} clock, median of "
          f"{args.runs} after {args.warmup} warm-up, each variant beside the default session:")
    for variant in (v for v in variants if v != "default"):
        runner, why = open_variant(variant, exported, folder, args.threads)
        if runner is None:
            print(f"  {variant:14s} does not run: {why}")
            continue
        runs = {"default": _timed(default, image), variant: _timed(runner, image)}
        results = interleaved(runs, repeats=args.runs, warmup=args.warmup, device=device)
        ms = {name: 1000.0 * median_of(samples, "total") for name, samples in results.items()}
        print(f"  {variant:14s} {ms[variant]:9.1f} ms, default {ms['default']:9.1f} ms: "
              f"{ms[variant] / ms['default']:.3f}x", flush=True)
        del runner, runs
        gc.collect()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint for the accuracy check")
    p.add_argument("--images", type=Path, default=None,
                   help="check on this manifest's images (default: frcnn export's synthetic check images)")
    p.add_argument("--count", type=int, default=20, help="how many of the manifest's images")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--quick", action="store_true", help="speed on a 256x320 image")
    p.add_argument("--no-speed", action="store_true", help="the accuracy check only")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every session but threads-N")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args()
    args.device = "cpu"
    device = setup_run(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="frcnn-ort-options-") as tmp:
        if args.checkpoint is not None:
            accuracy(args.checkpoint, variants, Path(tmp), args.threads, test_images(args.images, args.count))
        if not args.no_speed:
            speed(args, variants, Path(tmp), device)


if __name__ == "__main__":
    main()
