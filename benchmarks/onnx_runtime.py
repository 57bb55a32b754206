"""ONNX Runtime latency of an exported frcnn VGG16 against torchvision's FasterRCNN and frcnn's own CPU path.

One run builds frcnn's ``vgg16`` preset (random weights, seeded), writes it as a checkpoint, exports it with
``frcnn_cli.export.writer.export_model`` (the path of ``frcnn export``, its check against the checkpoint
included) and times, on the same uint8 images (default 600x800: already at the test scale, so no resize
changes the cost), taking turns:

- ``onnxruntime``: the exported graph in an ONNX Runtime CPU session (``export.runtime.OnnxRunner``, as
  ``frcnn detect --model model.onnx`` runs it): image in, detections out;
- ``onnxruntime-svd``: the same, exported with ``--set roi_head.fc_svd_rank=1024`` (Fast R-CNN's SVD);
- ``frcnn``: ``Predictor`` (Winograd convs, the table RoIPool), resize and normalise + forward + detect;
- ``torchvision``: ``torchvision_peer.build_torchvision_vgg16`` (same backbone, anchors, 6000/300
  proposals, head, thresholds), ``model.transform`` + forward + post-processing.

All end to end (uint8 image in, detections out), because the exported graph resizes and normalises inside.
Prints ms per image and the ratio of ONNX Runtime against each peer; issue 19's goal is ONNX Runtime at most
0.5x torchvision's time. Random weights: speed only.

    python benchmarks/onnx_runtime.py --quick                            # smoke test
    python benchmarks/onnx_runtime.py --threads 1 --clock cpu --runs 3 --warmup 1
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from harness import Stopwatch, interleaved, median_of, ratio_line, setup_run
from torchvision_peer import build_torchvision_vgg16, torchvision_network

from frcnn_cli.config import RuntimeConfig, get_preset
from frcnn_cli.data.images import batch_from_images
from frcnn_cli.data.voc import VOC_CLASSES
from frcnn_cli.export.runtime import OnnxRunner
from frcnn_cli.export.writer import export_model
from frcnn_cli.inference import InferenceSettings, Predictor
from frcnn_cli.model.checkpoint import save_checkpoint
from frcnn_cli.model.detector import FasterRCNN

VARIANTS = ("onnxruntime", "onnxruntime-svd", "frcnn", "torchvision")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter side 256 (max 448), images 256x320, 1 run")
    p.add_argument("--image-size", default=None, help="HxW of the synthetic input images (default 600x800)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per variant (default 3, quick 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: theirs)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (with --threads 1), steadier on a busy shared machine")
    p.add_argument("--variants", default="onnxruntime,frcnn,torchvision",
                   help=f"comma-separated of {', '.join(VARIANTS)}")
    p.add_argument("--svd-rank", type=int, default=1024, help="fc6/fc7 rank of onnxruntime-svd")
    args = p.parse_args()
    args.device = "cpu"
    args.runs = args.runs or (1 if args.quick else 3)
    args.image_size = args.image_size or ("256x320" if args.quick else "600x800")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    return args


def frcnn_model(quick: bool) -> FasterRCNN:
    cfg = get_preset("vgg16")
    test_scale, max_size = (256, 448) if quick else (600, 1000)
    torch.manual_seed(0)
    return FasterRCNN(replace(cfg, input=replace(cfg.input, test_scale=test_scale, max_size=max_size)),
                      list(VOC_CLASSES))


def exported_runner(model: FasterRCNN, folder: Path, checkpoint: Path, threads: int, svd_rank: int = 0):
    """Export ``model`` (checked against the checkpoint) and open it as ``frcnn detect`` does."""
    overrides = [f"roi_head.fc_svd_rank={svd_rank}"] if svd_rank else []
    settings = InferenceSettings.from_config(model.cfg, overrides=overrides)
    runtime = replace(RuntimeConfig(), num_workers=0, threads=threads)
    report = export_model(model, settings, folder / f"vgg16-svd{svd_rank}.onnx", fmt="onnx", checkpoint=checkpoint,
                          runtime=runtime)
    v = report.verification
    print(f"  exported {report.path.name}: checked on {len(v.sizes)} images ({v.detections} detections of the "
          f"checkpoint), largest differences {v.box_px:.2g} px, {v.score:.2g} score")
    return OnnxRunner(report.path, torch.device("cpu"), threads)


def onnx_run(runner: OnnxRunner, images: list[torch.Tensor]):
    def run() -> dict[str, float]:
        watch = Stopwatch(torch.device("cpu"))
        for image in images:
            runner(image)
        watch.lap("total")
        return watch.laps

    return run


def frcnn_run(predictor: Predictor, images: list[torch.Tensor]):
    @torch.inference_mode()
    def run() -> dict[str, float]:
        watch = Stopwatch(predictor.device)
        for image in images:
            predictor.run(batch_from_images([image], predictor.settings.config.input))
        watch.lap("total")
        return watch.laps

    return run


def torchvision_run(model, images: list[torch.Tensor]):
    @torch.inference_mode()
    def run() -> dict[str, float]:
        watch = Stopwatch(torch.device("cpu"))
        for image in images:
            floats = [image.float().div_(255.0)]
            image_list, _ = model.transform(floats)
            torchvision_network(model, image_list, [tuple(image.shape[-2:])])
        watch.lap("total")
        return watch.laps

    return run


def main() -> None:
    args = parse_args()
    device = setup_run(args)
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)]
    model = frcnn_model(args.quick)
    print(f"VGG16 (frcnn's vgg16 preset), image {width}x{height}, shorter side {model.cfg.input.test_scale}, "
          f"random weights, batch 1, median of {args.runs} runs after {args.warmup} warm-up, {args.clock} clock")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="frcnn-onnx-bench-") as tmp:
        folder = Path(tmp)
        checkpoint = folder / "vgg16.pt"
        save_checkpoint(checkpoint, model, stage="final", provenance={})
        threads = args.threads or 0
        if "onnxruntime" in args.variants:
            runs["onnxruntime"] = onnx_run(exported_runner(model, folder, checkpoint, threads), images)
        if "onnxruntime-svd" in args.variants:
            runs["onnxruntime-svd"] = onnx_run(exported_runner(model, folder, checkpoint, threads, args.svd_rank),
                                               images)
        if "frcnn" in args.variants:
            predictor = Predictor(model, device, InferenceSettings.from_config(model.cfg), RuntimeConfig())
            runs["frcnn"] = frcnn_run(predictor, images)
        if "torchvision" in args.variants:
            min_size, max_size = model.cfg.input.test_scale, model.cfg.input.max_size
            tv = build_torchvision_vgg16(min_size=min_size, max_size=max_size).eval()
            runs["torchvision"] = torchvision_run(tv, images)
        del model
        results = interleaved(runs, repeats=args.runs, warmup=args.warmup, device=device)
    ms = {name: 1000.0 * median_of(samples, "total") / len(images) for name, samples in results.items()}
    for name, value in ms.items():
        print(f"  {name:16s} {value:9.1f} ms/image (end to end)")
    for name in (n for n in ms if n.startswith("onnxruntime")):
        if "torchvision" in ms:
            print("  " + ratio_line("latency", ms[name], ms["torchvision"], "ms/img", target=0.5, name=name))
        if "frcnn" in ms:
            print("  " + ratio_line("latency", ms[name], ms["frcnn"], "ms/img", peer_name="frcnn CPU path", name=name))


if __name__ == "__main__":
    main()
