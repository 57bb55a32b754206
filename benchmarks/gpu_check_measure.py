"""The timed steps of ``gpu_check.py``: inference against torchvision, training images/s, the data pipeline, cuDNN
autotuning over varying image sizes. Each is a function of the check's options that returns a JSON-able dict;
``gpu_check.py`` runs each in its own process (``python benchmarks/gpu_check_measure.py STEP --out FILE``).

They reuse the benchmarks' pieces (``inference_vs_torchvision``, ``train_throughput``, ``torchvision_peer``,
``harness``) with the GPU settings: VGG16 at 600x1000, fp32 and bf16, batch 1 up to 64, medians of interleaved
runs, peak memory per model. ``--quick`` runs the same code on the tiny preset at 96 px with a few runs, on any
device (the CPU figures of docs/benchmarks.md's placeholder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from harness import interleaved, median_of, peak_memory_mb

from frcnn_cli.config import Config, RuntimeConfig, get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data.images import batch_from_images
from frcnn_cli.devices import process_settings, resolve_device

QUICK_SIZE = ("input.train_scales=96", "input.test_scale=96", "input.max_size=128")
FULL_BATCHES, QUICK_BATCHES = (1, 8, 32, 64), (1, 2)


def config(quick: bool) -> Config:
    """VGG16 at 600x1000 (the paper's test scale), or the tiny preset at 96 px for ``--quick``."""
    if quick:
        return apply_overrides(get_preset("tiny"), list(QUICK_SIZE))
    cfg = get_preset("vgg16")
    return replace(cfg, input=replace(cfg.input, test_scale=600, max_size=1000))


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def attempt(fn, what: str):
    """``(fn(), None)``, or ``(None, what went wrong)`` with the traceback in the log: one failure on the GPU costs
    one row of the results, not the step."""
    try:
        return fn(), None
    except torch.cuda.OutOfMemoryError:
        return None, f"{what}: out of GPU memory"
    except Exception as exc:  # a check records what broke and goes on
        traceback.print_exc()
        return None, f"{what}: {type(exc).__name__}: {exc}"[:500]


# --------------------------------------------------------------------------------------------------
# inference


def host_syncs(predictor, images: list[torch.Tensor]) -> dict | None:
    """The host syncs of one ``Predictor.run`` on a pinned host batch (``frcnn detect``'s path), counted by
    ``torch.cuda.set_sync_debug_mode("warn")`` and grouped by the Python line that caused them; None on the CPU."""
    if predictor.device.type != "cuda":
        return None
    batch = batch_from_images(images, predictor.settings.config.input).pin_memory()
    predictor.run(batch)
    torch.cuda.synchronize(predictor.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            predictor.run(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {"count": sum(where.values()), "where": dict(where.most_common(12))}


def _inference_row(precision: str, batch: int, samples: dict, memory: dict) -> dict:
    ours = batch / median_of(samples["frcnn"], "net")
    peer = batch / median_of(samples["torchvision"], "net")
    return {"precision": precision, "batch": batch, "frcnn_images_per_s": ours, "torchvision_images_per_s": peer,
            "ratio": ours / peer, "frcnn_ms_per_image": 1000.0 / ours, "torchvision_ms_per_image": 1000.0 / peer,
            "frcnn_peak_mb": memory["frcnn"]["peak_mb"], "torchvision_peak_mb": memory["torchvision"]["peak_mb"],
            "frcnn_above_resident_mb": memory["frcnn"]["above_resident_mb"],
            "torchvision_above_resident_mb": memory["torchvision"]["above_resident_mb"]}


def _amp(precision: str, device) -> bool | None:
    """``runtime.amp`` of a row: fp32 off; bf16 on CUDA, and on the CPU (``--quick``) frcnn's policy: bf16 where
    the CPU computes it natively, else float32 (emulated bf16 would only slow the placeholder run down)."""
    if precision != "bf16":
        return False
    return True if device.type == "cuda" else None


def _time_batches(predictor, peer, precision: str, opts, cfg: Config, device) -> list[dict]:
    from inference_vs_torchvision import frcnn_runner, synthetic_images, torchvision_runner

    def measure(batch: int) -> dict:
        images = synthetic_images(batch, opts.image_size)
        runs = {"frcnn": frcnn_runner(predictor, images, device, True, end_to_end=False),
                "torchvision": torchvision_runner(peer, images, device, amp=_amp(precision, device))}
        samples = interleaved(runs, repeats=opts.runs if batch > 1 else opts.runs * 2, warmup=opts.warmup,
                              device=device)
        memory = {name: peak_memory_mb(run, device) for name, run in runs.items()}
        return _inference_row(precision, batch, samples, memory)

    rows = []
    for batch in opts.batches:
        row, error = attempt(lambda b=batch: measure(b), f"{precision} batch {batch}")
        rows.append(row or {"precision": precision, "batch": batch, "error": error})
        _free(device)
    return rows


def inference(opts) -> dict:
    """frcnn (``Predictor.forward`` + ``detect``) against torchvision's FasterRCNN, VGG16 at 600x1000, fp32 and
    bf16 autocast, batch 1 up to 64: images/s of the network (forward and post-processing; the batch is
    prepared on the device beforehand), peak memory, the ratio; host syncs of one ``Predictor.run``."""
    from inference_vs_torchvision import build_frcnn, synthetic_images
    from torchvision_peer import build_peer

    device, cfg = resolve_device(opts.device), config(opts.quick)
    process_settings(device, RuntimeConfig(), autotune=True)  # as frcnn detect, eval and bench
    peer = build_peer(cfg).eval().to(device)
    rows, syncs, args = [], {}, SimpleNamespace(quick=opts.quick, svd_rank=0)
    for precision in ("fp32", "bf16"):
        predictor, error = attempt(lambda p=precision: build_frcnn("frcnn", args, device, cfg=cfg, amp=_amp(p, device)),
                                   "frcnn's model")
        if predictor is None:
            rows += [{"precision": precision, "batch": batch, "error": error} for batch in opts.batches]
            continue
        rows += _time_batches(predictor, peer, precision, opts, cfg, device)
        if precision == "bf16":
            best = max((r for r in rows if r["precision"] == "bf16" and "error" not in r),
                       key=lambda r: r["frcnn_images_per_s"], default={"batch": 1})
            for batch in sorted({1, best["batch"]}):
                found, error = attempt(lambda b=batch, p=predictor: host_syncs(p, synthetic_images(b, opts.image_size)),
                                       f"host syncs at batch {batch}")
                syncs[str(batch)] = found if error is None else {"error": error}
        del predictor
        _free(device)
    return {"rows": rows, "host_syncs": syncs, "image_size": list(opts.image_size), "model": cfg.name,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "summary": inference_summary(rows)}


def inference_summary(rows: list[dict]) -> dict:
    """Per precision the batch-1 row and the best batch's; the issue's targets for bf16."""
    out: dict = {}
    for precision in ("fp32", "bf16"):
        ok = [r for r in rows if r["precision"] == precision and "error" not in r]
        if ok:
            out[precision] = {"batch1": next((r for r in ok if r["batch"] == 1), None),
                              "best": max(ok, key=lambda r: r["frcnn_images_per_s"])}
    return out


# --------------------------------------------------------------------------------------------------
# training


STEP_NAMES = {"rpn": "step 1 (RPN)", "detector": "step 2 (detector)", "rpn-frozen": "step 3 (RPN, shared frozen)",
              "detector-frozen": "step 4 (detector, shared frozen)", "joint": "joint", "dump": "proposal dump",
              "torchvision": "torchvision joint step"}
FRCNN_STEPS = ("rpn", "detector", "rpn-frozen", "detector-frozen", "joint")


def training(opts) -> dict:
    """Images/s of one SGD step of each of the four steps and of joint mode (``train_throughput``'s runners:
    frcnn's stage specs, optimiser, forward and losses, bf16 autocast on CUDA) and of a proposal dump, against
    torchvision's joint step on the same batches; the memory one step needs."""
    from train_throughput import (
        SCHEDULE_KINDS,
        dump_runner,
        frcnn_step_runner,
        images_per_s,
        schedule_hours,
        synthetic_data,
    )
    from train_throughput import torchvision_runner as peer_step_runner

    device = resolve_device(opts.device)
    cfg = config(opts.quick) if opts.quick else get_preset("vgg16")  # training at the paper's scale 600 (max 1000)
    process_settings(device, RuntimeConfig())  # as frcnn train-rpn and train-detector: no cuDNN autotuning
    data = synthetic_data(max(cfg.solver.rpn_images_per_batch, cfg.solver.det_images_per_batch, 2))
    builders = {kind: (lambda k=kind: frcnn_step_runner(k, cfg, data, device)) for kind in FRCNN_STEPS}
    builders["dump"] = lambda: dump_runner(cfg, data, device)
    builders["torchvision"] = lambda: peer_step_runner(cfg, data, device)
    runs, errors = {}, {}
    for name, build in builders.items():  # a runner that cannot build or run once is left out, with its error
        runs[name], errors[name] = attempt(lambda b=build: _ran_once(b()), STEP_NAMES[name])
    runs = {name: run for name, run in runs.items() if run is not None}
    samples = interleaved(runs, repeats=opts.steps, warmup=opts.warmup, device=device)
    rates = {name: images_per_s(s) for name, s in samples.items()}
    peer = rates.get("torchvision")
    rows = []
    for name in builders:
        if name not in runs:
            rows.append({"kind": name, "what": STEP_NAMES[name], "error": errors[name]})
            continue
        rows.append({"kind": name, "what": STEP_NAMES[name], "images_per_s": rates[name],
                     "ms_per_image": 1000.0 / rates[name], "vs_torchvision": rates[name] / peer if peer else None,
                     **peak_memory_mb(runs[name], device)})
    schedule = schedule_hours(rates, cfg) if all(k in rates for k in SCHEDULE_KINDS) else None
    return {"rows": rows, "model": cfg.name, "train_scale": cfg.input.train_scales[0],
            "schedule_hours": schedule, "steps": opts.steps, "warmup": opts.warmup}


def _ran_once(run):
    run()
    return run


# --------------------------------------------------------------------------------------------------
# the data pipeline and cuDNN autotuning over image sizes


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pipeline(opts) -> dict:
    """``predict_manifest`` (what ``frcnn eval`` runs: decode, resize and normalise in loader workers, pinned
    batches, forward, detections to the host) over synthetic VOC-sized JPEGs of varying size, with 2 loader
    workers (the default) and more, against the network alone on the same batches already loaded."""
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.data.synthetic import make_synthetic_set
    from frcnn_cli.data.voc import VOC_CLASSES
    from frcnn_cli.inference import InferenceSettings, Predictor, predict_manifest
    from frcnn_cli.model.detector import FasterRCNN

    device, cfg = resolve_device(opts.device), config(opts.quick)
    process_settings(device, RuntimeConfig(), autotune=True)
    count, batch_size = (6, 2) if opts.quick else (64, 8)
    with tempfile.TemporaryDirectory() as tmp:
        size = (128, 96) if opts.quick else (500, 375)
        manifest = read_manifest(make_synthetic_set(Path(tmp) / "set", n_train=1, n_test=count, image_size=size)[1])
        torch.manual_seed(0)
        model, settings = FasterRCNN(cfg, list(VOC_CLASSES)), InferenceSettings.from_config(cfg)
        predictor = Predictor(model, device, settings, RuntimeConfig(num_workers=0))

        def passes(workers: int) -> dict:
            p = Predictor(model, device, settings, RuntimeConfig(num_workers=workers))
            first = _timed(lambda: predict_manifest(p, manifest, batch_size=batch_size))
            again = _timed(lambda: predict_manifest(p, manifest, batch_size=batch_size))
            return {"workers": workers, "first_pass_images_per_s": count / first, "images_per_s": count / again}

        rows = [row or {"workers": w, "error": error} for w in ((0, 1) if opts.quick else (2, 8))
                for row, error in [attempt(lambda w=w: passes(w), f"{w} workers")]]
        batches = list(predictor.manifest_batches(manifest, batch_size=batch_size))
        network, error = attempt(lambda: _timed(lambda: [predictor.run(b) for b in batches]), "network alone")
    return {"rows": rows, "network_images_per_s": count / network if network else None, "network_error": error,
            "images": count, "batch_size": batch_size, "image_size": list(size)}


AUTOTUNE_SHAPES = ((375, 500), (500, 375), (333, 500), (500, 333), (281, 500), (400, 500), (500, 400), (366, 500))


def autotune(opts) -> dict:
    """``Predictor.run`` on one image of each of several VOC-like sizes (each a new padded input shape), twice
    over, with ``cudnn.benchmark`` as ``--autotune`` says: what autotuning every new shape costs on the first
    pass, and what it gains on the second. One process per setting: cuDNN's choices are per process."""
    from inference_vs_torchvision import build_frcnn

    device, cfg = resolve_device(opts.device), config(opts.quick)
    torch.backends.cudnn.benchmark = opts.autotune == "on"
    predictor = build_frcnn("frcnn", SimpleNamespace(quick=opts.quick, svd_rank=0), device, cfg=cfg)
    gen = torch.Generator().manual_seed(0)
    shapes = AUTOTUNE_SHAPES[:3] if opts.quick else AUTOTUNE_SHAPES
    batches = [batch_from_images([torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)], cfg.input)
               for h, w in shapes]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]  # as the loader's
    warm_up = batch_from_images([torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)], cfg.input)
    predictor.run(warm_up)  # CUDA context, cuBLAS handles: not the shapes' cost
    passes = []
    for _ in range(2):
        passes.append([_timed(lambda b=b: predictor.run(b)) for b in batches])
    padded = {tuple(b.tensor.shape[-2:]) for b in batches}
    return {"autotune": opts.autotune, "shapes": len(padded), "first_pass_s": sum(passes[0]),
            "second_pass_s": sum(passes[1]), "first_pass_median_s": statistics.median(passes[0]),
            "second_pass_median_s": statistics.median(passes[1])}


# --------------------------------------------------------------------------------------------------


STEPS = {"inference": inference, "training": training, "pipeline": pipeline, "autotune": autotune}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out", type=Path, required=True, help="the step's JSON result")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny preset at 96 px, a few runs")
    p.add_argument("--autotune", choices=("on", "off"), default="on", help="autotune step: cudnn.benchmark")
    args = p.parse_args(argv)
    args.image_size = (96, 128) if args.quick else (600, 1000)
    args.batches = QUICK_BATCHES if args.quick else FULL_BATCHES
    args.runs, args.warmup, args.steps = (2, 1, 1) if args.quick else (8, 3, 15)
    return args


def main(argv=None) -> None:
    from harness import machine

    args = parse_args(argv)
    result = STEPS[args.step](args)
    result["machine"] = machine(resolve_device(args.device))
    args.out.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
