"""Training throughput (images/s): frcnn's joint step and each alternating step against torchvision's step.

frcnn's steps are those of ``frcnn_cli.train`` (``stage_spec`` freezing, ``build_optimizer``, the same
forward and losses as ``train/loop.py``): ``joint``; ``rpn`` (step 1), ``detector`` (step 2, on 2000
stored-style proposals per image), ``rpn-frozen`` (step 3) and ``detector-frozen`` (step 4), each with
its images per batch of the vgg16 preset (RPN 1, detector and joint 2); ``dump`` is the RPN-only
inference of a proposal dump (no pre-NMS cap, top 2000); ``joint-direct`` (not run unless named in
``--kinds``) is the joint step with oneDNN's direct convolutions (``runtime.cpu_winograd=false``). The
peer is torchvision's ``FasterRCNN`` (``torchvision_peer.py``: same VGG16, anchors, heads, 12000/2000
training proposals, 256 anchors and 64 RoIs per image) training jointly on the same 2-image batches: its
only mode. Random weights, random
ground truth (3 boxes per image), SGD lr 0.001, momentum 0.9, weight decay 0.0005, bf16 autocast on CUDA.

The 4-step schedule estimate uses the preset's iterations (80k RPN, 40k detector, twice each) and two
dumps of the 5011 VOC07 trainval images.

    python benchmarks/train_throughput.py --quick           # shorter side 256, 2 steps each
    python benchmarks/train_throughput.py --kinds joint joint-direct --steps 2   # full size, two kinds
    python benchmarks/train_throughput.py --device cuda --steps 20 --warmup 5
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from harness import Stopwatch, interleaved, median_of, ratio_line, setup_run
from torchvision_peer import build_peer

from frcnn_cli.config import Config, RuntimeConfig, get_preset
from frcnn_cli.data.images import batch_from_images
from frcnn_cli.data.targets import Targets
from frcnn_cli.data.voc import VOC_CLASSES
from frcnn_cli.devices import autocast, place_model
from frcnn_cli.inference import InferenceSettings, Predictor
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.rpn import ProposalSettings, RPNProposer
from frcnn_cli.train.loop import build_optimizer
from frcnn_cli.train.steps import freeze_for_stage, stage_spec

KINDS = {"joint": ("joint", False), "rpn": ("rpn", False), "detector": ("detector", False),
         "rpn-frozen": ("rpn", True), "detector-frozen": ("detector", True),
         "joint-direct": ("joint", False)}  # oneDNN's direct convolutions (runtime.cpu_winograd=false)
SCHEDULE_KINDS = ("rpn", "detector", "rpn-frozen", "detector-frozen", "dump")
VOC07_TRAINVAL = 5011


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter side 256 (max 448), 2 steps, 1 warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps per kind (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: CPU time, with --threads 1")
    p.add_argument("--kinds", nargs="+", choices=(*KINDS, "dump"), default=[k for k in KINDS if k != "joint-direct"]
                   + ["dump"], help="frcnn steps to time (default: all but joint-direct); torchvision always runs")
    args = p.parse_args()
    args.steps = args.steps or (2 if args.quick else 5)
    return args


def train_config(quick: bool) -> Config:
    cfg = get_preset("vgg16")
    scale, max_size = (256, 448) if quick else (600, 1000)
    return replace(cfg, input=replace(cfg.input, train_scales=(scale,), test_scale=scale, max_size=max_size))


def synthetic_data(count: int, seed: int = 0):
    """uint8 images ``[3, 375, 500]``, 3 random boxes per image (original pixels) and labels 1..20."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=gen) for _ in range(count)]
    boxes, labels = [], []
    for _ in range(count):
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([350.0, 250.0])
        wh = 30.0 + torch.rand(3, 2, generator=gen) * 120.0
        boxes.append(torch.cat((xy, xy + wh), 1))
        labels.append(torch.randint(1, 21, (3,), generator=gen))
    return images, boxes, labels


def random_proposals(batch, count: int = 2000, seed: int = 1) -> list[torch.Tensor]:
    """``count`` random boxes inside each scaled image, as a proposal file would give."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for h, w in batch.image_sizes.tolist():
        xy = torch.rand(count, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16.0 + torch.rand(count, 2, generator=gen) * torch.tensor([w * 0.5, h * 0.5])
        out.append(torch.minimum(torch.cat((xy, xy + wh), 1), torch.tensor([w, h, w, h], dtype=torch.float32)))
    return [p.to(batch.tensor.device) for p in out]


def frcnn_step_runner(kind: str, cfg: Config, data, device: torch.device):
    name, frozen = KINDS[kind]
    spec = stage_spec(name, freeze_shared=frozen)
    runtime = RuntimeConfig(cpu_winograd=not kind.endswith("-direct"))
    torch.manual_seed(0)
    model = FasterRCNN(cfg, list(VOC_CLASSES)).to(device)
    freeze_for_stage(model, spec)
    optimizer = build_optimizer(model, cfg.solver)
    place_model(model, device, runtime, training=True)  # as train/stage.py
    proposer = RPNProposer(ProposalSettings.from_config(cfg.rpn, "train")) if name == "joint" else None  # loop.py
    model.train()
    n = spec.images_per_batch(cfg.solver)
    images, boxes, labels = data
    batch = batch_from_images(images[:n], cfg.input).to(device)
    targets = Targets([b * s for b, s in zip(boxes[:n], batch.scales.tolist())], labels[:n]).to(device)
    proposals = random_proposals(batch) if spec.needs_proposal_file else None

    def run() -> dict[str, float]:
        watch = Stopwatch(device)
        with autocast(device, runtime.amp):
            out = model(batch.tensor, batch.image_sizes, batch.scales, targets=targets, proposals=proposals,
                        run_rpn=spec.run_rpn, run_roi_head=spec.run_roi_head, proposer=proposer,
                        sample_rois=True)
            losses = model.losses(out, targets, batch.image_sizes)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        watch.lap("step")
        return {"step": watch.laps["step"], "images": float(n)}

    return run


def dump_runner(cfg: Config, data, device: torch.device):
    torch.manual_seed(0)
    model = FasterRCNN(cfg, list(VOC_CLASSES))
    predictor = Predictor(model, device, InferenceSettings.from_config(cfg, mode="dump"))  # as frcnn dump-proposals
    batch = batch_from_images(data[0][:1], cfg.input).to(device)
    batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run() -> dict[str, float]:
        watch = Stopwatch(device)
        predictor.forward(batch, detections=False)
        watch.lap("step")
        return {"step": watch.laps["step"], "images": 1.0}

    return run


def torchvision_runner(cfg: Config, data, device: torch.device):
    torch.manual_seed(0)
    model = build_peer(cfg, min_size=cfg.input.train_scales[0])  # VGG16: the paper's numbers, as the preset's
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=0.0005)
    images, boxes, labels = data
    inputs = [im.to(device).float().div(255.0) for im in images[:2]]
    targets = [{"boxes": b.to(device), "labels": lb.to(device)} for b, lb in zip(boxes[:2], labels[:2])]

    def run() -> dict[str, float]:
        watch = Stopwatch(device)
        with autocast(device):  # frcnn's policy, as its own runs
            losses = model(inputs, targets)
        loss = sum(v.float() for v in losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        watch.lap("step")
        return {"step": watch.laps["step"], "images": 2.0}

    return run


def images_per_s(samples: list[dict[str, float]]) -> float:
    return samples[0]["images"] / median_of(samples, "step")


def schedule_hours(rates: dict[str, float], cfg: Config) -> float:
    """The 4-step schedule from measured rates (images/s): iterations x images per batch, and 2 dumps."""
    s = cfg.solver
    seconds = (s.rpn_iters * s.rpn_images_per_batch / rates["rpn"]
               + s.det_iters * s.det_images_per_batch / rates["detector"]
               + s.rpn_iters * s.rpn_images_per_batch / rates["rpn-frozen"]
               + s.det_iters * s.det_images_per_batch / rates["detector-frozen"]
               + 2 * VOC07_TRAINVAL / rates["dump"])
    return seconds / 3600.0


def main() -> None:
    args = parse_args()
    device = setup_run(args)
    cfg = train_config(args.quick)
    print(f"VGG16 training, shorter side {cfg.input.train_scales[0]} (max {cfg.input.max_size}), "
          f"median of {args.steps} steps after {args.warmup} warm-up, {args.clock} clock")
    data = synthetic_data(2)
    runs = {kind: frcnn_step_runner(kind, cfg, data, device) for kind in args.kinds if kind != "dump"}
    if "dump" in args.kinds:
        runs["dump"] = dump_runner(cfg, data, device)
    runs["torchvision"] = torchvision_runner(cfg, data, device)
    results = interleaved(runs, repeats=args.steps, warmup=args.warmup, device=device)
    rates = {name: images_per_s(samples) for name, samples in results.items()}
    peer = rates["torchvision"]
    for name, rate in rates.items():
        print(f"  {name:16s} {rate:8.3f} images/s   ({1000.0 / rate:9.1f} ms/image)")
    for name in (k for k in KINDS if k in rates):
        print("  " + ratio_line(f"{name} step vs torchvision joint step", rates[name], peer, "img/s"))
    if not all(k in rates for k in SCHEDULE_KINDS):
        return
    hours = schedule_hours(rates, cfg)
    goal = " (target on one H100: <= 2 h)" if device.type == "cuda" else ""
    print(f"  4-step VOC07 schedule estimate at these rates: {hours:.1f} h{goal}"
          f"{'' if not args.quick else ' (quick: smaller images than the real schedule)'}")


if __name__ == "__main__":
    main()
