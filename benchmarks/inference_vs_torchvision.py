"""Inference latency: frcnn against torchvision's FasterRCNN in the paper's VGG16 configuration.

Both detectors get the same synthetic uint8 images (default 500x375, a typical PASCAL size; shorter
side 600, longer at most 1000), random weights (speed only), 6000/300 proposals, 21 classes, score >
0.05, per-class NMS 0.3, 100 detections. The peer is described in ``torchvision_peer.py``. Runs take
turns (frcnn, torchvision, torchvision, frcnn, ...) so that the load of a shared machine hits both
alike. Per batch size it prints ms per image of the network (forward + post-processing, the paper's
Table 4 total) and end to end (uint8 images in, detections out: + resize and normalise), and the ratio
against the targets of issue 7: CPU at most 0.8x torchvision's latency; CUDA (bf16) at least 2x
torchvision's images/s, 60 images/s at batch 1 and 500 images/s batched.

Variants (``--variants``): ``frcnn`` (frcnn's inference settings: channels-last, inference mode, bf16
on CUDA, Winograd F(4x4, 3x3) convs on the CPU: ``frcnn_cli.inference.Predictor``), ``frcnn-direct``
(the same with oneDNN's direct convolutions: ``runtime.cpu_winograd=false``), ``frcnn-nchw`` (the same
as frcnn without channels-last),
``frcnn-svd`` (fc6/fc7 as rank-``--svd-rank`` factor pairs: Fast R-CNN's truncated SVD; random
factors, so the timing is that of a real compression without its one-off factorisation),
``torchvision``.

    python benchmarks/inference_vs_torchvision.py --quick              # smoke test, a few minutes on 2 cores
    python benchmarks/inference_vs_torchvision.py --batch-sizes 1 8
    python benchmarks/inference_vs_torchvision.py --device cuda --image-size 600x1000 --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from harness import Stopwatch, interleaved, median_of, ratio_line, setup_run, target_line
from torchvision_peer import build_torchvision_vgg16, torchvision_network

from frcnn_cli.config import Config, RuntimeConfig, get_preset
from frcnn_cli.data.images import batch_from_images
from frcnn_cli.data.voc import VOC_CLASSES
from frcnn_cli.devices import autocast
from frcnn_cli.inference import InferenceSettings, Predictor
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.svd import SVDLinear

VARIANTS = ("frcnn", "frcnn-direct", "frcnn-nchw", "frcnn-svd", "torchvision")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter side 256 (max 448), 2 runs, 1 warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=None, help="timed runs per variant (default 3, quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--image-size", default="375x500", help="HxW of the synthetic input images")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--variants", default="frcnn,torchvision", help=f"comma-separated of {', '.join(VARIANTS)}")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (with --threads 1), steadier on a busy shared machine")
    p.add_argument("--svd-rank", type=int, default=1024, help="rank of the frcnn-svd variant's fc6/fc7")
    args = p.parse_args()
    args.runs = args.runs or (2 if args.quick else 3)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    return args


def scales(quick: bool) -> tuple[int, int]:
    """(shorter side, longer-side cap) of both detectors."""
    return (256, 448) if quick else (600, 1000)


def frcnn_config(quick: bool) -> Config:
    cfg = get_preset("vgg16")
    test_scale, max_size = scales(quick)
    return replace(cfg, input=replace(cfg.input, test_scale=test_scale, max_size=max_size))


def random_svd(model: FasterRCNN, rank: int) -> None:
    """fc6/fc7 as rank-``rank`` factor pairs with random weights: the compressed model's speed."""
    head = model.roi_head.head_top.classifier
    for index in (0, 3):
        fc = head[index]
        head[index] = SVDLinear(fc.in_features, fc.out_features, min(rank, fc.out_features, fc.in_features))


def build_frcnn(variant: str, args, device: torch.device, *, cfg: Config | None = None,
                amp: bool | None = None) -> Predictor:
    """frcnn's model prepared as ``frcnn detect`` prepares it (the ``Predictor``), with the variant's runtime;
    ``cfg`` (default: the vgg16 preset at this run's size), ``amp``: ``runtime.amp`` (None: frcnn's policy, bf16
    autocast on CUDA and on CPUs that compute bf16 natively; True forces it)."""
    torch.manual_seed(0)
    model = FasterRCNN(cfg or frcnn_config(args.quick), list(VOC_CLASSES))
    if variant == "frcnn-svd":
        random_svd(model, args.svd_rank)
    runtime = RuntimeConfig(cpu_winograd=variant != "frcnn-direct", channels_last=variant != "frcnn-nchw", amp=amp)
    return Predictor(model, device, InferenceSettings.from_config(model.cfg), runtime, owned=True)


def frcnn_runner(predictor: Predictor, images: list[torch.Tensor], device: torch.device, channels_last: bool, *,
                 end_to_end: bool = True):
    """One timed run of frcnn on ``images``: ``pre`` (resize, normalise, copy to the device) and ``net`` (forward
    and detections). ``end_to_end=False`` prepares the device batch once, before timing (``pre`` is then 0)."""
    def prepare():
        batch = batch_from_images(images, predictor.settings.config.input)
        keys = batch.indices.tolist()  # from the host, as Predictor.run
        batch = batch.to(device)
        if channels_last:
            batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        return batch, keys

    prepared = None if end_to_end else prepare()

    @torch.inference_mode()
    def run() -> dict[str, float]:
        watch = Stopwatch(device)
        batch, keys = prepared or prepare()
        watch.lap("pre")
        out = predictor.forward(batch, image_keys=keys)  # the one forward, as frcnn detect runs it
        predictor.model.detect(out, batch.image_sizes, batch.scales, batch.original_sizes,
                               settings=predictor.settings.detections)
        watch.lap("net")
        return {**watch.laps, "total": watch.laps["pre"] + watch.laps["net"]}

    return run


def torchvision_runner(model, images: list[torch.Tensor], device: torch.device, *, amp: bool | None = None):
    """One timed run of torchvision's detector: ``pre`` (its transform) and ``net``; bf16 autocast as frcnn's
    under ``runtime.amp`` = ``amp`` (``devices.autocast``)."""
    @torch.inference_mode()
    def run() -> dict[str, float]:
        watch = Stopwatch(device)
        floats = [im.to(device).float().div_(255.0) for im in images]
        originals = [tuple(im.shape[-2:]) for im in floats]
        with autocast(device, amp):
            image_list, _ = model.transform(floats)
            watch.lap("pre")
            torchvision_network(model, image_list, originals)
        watch.lap("net")
        return {**watch.laps, "total": watch.laps["pre"] + watch.laps["net"]}

    return run


def synthetic_images(count: int, size: tuple[int, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen) for _ in range(count)]


def report(batch_size: int, results: dict, device: torch.device) -> None:
    ms = {name: {k: 1000.0 * median_of(samples, k) / batch_size for k in ("pre", "net", "total")}
          for name, samples in results.items()}
    for name, v in ms.items():
        print(f"  {name:12s} network {v['net']:9.1f} ms/image   end-to-end {v['total']:9.1f} ms/image   "
              f"({1000.0 / v['net']:.2f} images/s network)")
    peer = ms.get("torchvision")
    for name in (n for n in ms if n != "torchvision" and peer):
        if device.type == "cuda":
            print("  " + ratio_line(f"{name} images/s (network)", 1000 / ms[name]["net"], 1000 / peer["net"],
                                    "img/s", target=2.0, higher_is_better=True))
        else:
            print("  " + ratio_line(f"{name} latency (network)", ms[name]["net"], peer["net"], "ms/img",
                                    target=0.8))
            print("  " + ratio_line(f"{name} latency (end to end)", ms[name]["total"], peer["total"], "ms/img",
                                    target=0.8))
    if device.type == "cuda" and "frcnn" in ms:
        goal = 60.0 if batch_size == 1 else 500.0
        print("  " + target_line(f"frcnn batch {batch_size} images/s", 1000 / ms["frcnn"]["net"], goal, "img/s"))


def main() -> None:
    args = parse_args()
    device = setup_run(args)
    size = tuple(int(v) for v in args.image_size.lower().split("x"))
    min_size, max_size = scales(args.quick)
    print(f"VGG16, images {size[1]}x{size[0]} -> shorter side {min_size} (max {max_size}), random weights, "
          f"median of {args.runs} runs after {args.warmup} warm-up, {args.clock} clock, variants {args.variants}")
    models = {}
    for variant in args.variants:
        if variant == "torchvision":
            tv = build_torchvision_vgg16(min_size=min_size, max_size=max_size).eval().to(device)
            models[variant] = tv
        else:
            models[variant] = build_frcnn(variant, args, device)
    for batch_size in args.batch_sizes:
        images = synthetic_images(batch_size, size)
        runs = {name: (torchvision_runner(m, images, device) if name == "torchvision" else
                       frcnn_runner(m, images, device, channels_last=name != "frcnn-nchw"))
                for name, m in models.items()}
        results = interleaved(runs, repeats=args.runs, warmup=args.warmup, device=device)
        print(f"batch {batch_size}:")
        report(batch_size, results, device)


if __name__ == "__main__":
    main()
