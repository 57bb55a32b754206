"""``frcnn demo``: the whole paper in miniature on the synthetic shapes set, on a laptop CPU in minutes.

Makes the synthetic set (``DIR/data``: training, validation and test images), runs the 4-step alternating
optimisation with the ``tiny`` preset's epoch schedule, validated every epoch on the validation images and
each step stopped by early stopping once it has learnt (``DIR/run``, resumable: a rerun continues after the
last finished step; every step goes on from the best checkpoint of the one before), evaluates the unified model with
the VOC2007 metric (11-point AP at IoU 0.5) on the test split, draws the detections of a few test images
(``DIR/detections/``), dumps the test proposals of the final model and plots their recall against IoU
(the paper's Fig. 2), and writes ``DIR/summary.json`` atomically. The same pipeline with the ``vgg16``
preset on PASCAL VOC is what the paper describes; docs/demo.md explains the tiny preset's choices.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .atomic import atomic_write_json, ensure_dir
from .callbacks import Progress, StepCallback
from .config import Config, RuntimeConfig, get_preset, runtime_defaults
from .data import synthetic
from .data.manifest import Manifest, read_manifest
from .data.proposal_store import ProposalStore
from .data.synthetic import make_synthetic_set
from .errors import DataError
from .evaluate.recall import proposal_recall
from .evaluate.voc import detections_by_class, evaluate_detections
from .inference import InferenceSettings, Predictor, detect_manifest, dump_proposals
from .model.checkpoint import load_model
from .train.loop import LoopState
from .train.pipeline import PipelineRequest, plans, run_pipeline

SUMMARY_FORMAT = "frcnn-demo-summary"
SUMMARY_VERSION = 1
PRESET = "tiny"
DEFAULT_TRAIN, DEFAULT_TEST, DEFAULT_SEED = synthetic.DEFAULT_TRAIN, synthetic.DEFAULT_TEST, synthetic.DEFAULT_SEED
DEFAULT_VAL = 40  # validation images: a validation costs about 2 % of an epoch's training
PATIENCE = 1  # validations without a better figure before the lr drop comes forward, then the stop
PICTURES = 4  # test images drawn with their detections
DRAW_SCORE = 0.5  # detections drawn: score at least this (all of them count for the AP)
RECALL_TOP_NS = (10, 50, 100, 300)


def _make_data(data_dir: Path, n_train: int, n_test: int, seed: int,
               on_step: StepCallback | None) -> tuple[Path, Path, Path]:
    """The synthetic set under ``data_dir`` (training, test, validation), made unless a complete one of the
    same size is there."""
    train_path, test_path, val_path = data_dir / "trainval.json", data_dir / "test.json", data_dir / "val.json"
    if train_path.exists() and test_path.exists() and val_path.exists():
        sizes = (len(read_manifest(train_path).images), len(read_manifest(test_path).images))
        if sizes != (n_train, n_test):
            raise DataError(f"{data_dir} holds a synthetic set of {sizes[0]} + {sizes[1]} images, not "
                            f"{n_train} + {n_test}; rerun with --train {sizes[0]} --test {sizes[1]} or use "
                            "another --workdir")
        _notify(on_step, "data", "skip")
        return train_path, test_path, val_path
    _notify(on_step, "data", "start")
    paths = make_synthetic_set(data_dir, n_train=n_train, n_test=n_test, seed=seed, n_val=DEFAULT_VAL)
    _notify(on_step, "data", "done")
    return (*paths, val_path)


def _notify(on_step: StepCallback | None, name: str, what: str) -> None:
    if on_step is not None:
        on_step(name, what)


def _plain_detections(det: dict[str, torch.Tensor], classes: list[str], min_score: float) -> list[dict]:
    """One image's detections as ``{"label", "score", "box"}`` dicts, score at least ``min_score``."""
    keep = det["scores"] >= min_score
    return [{"label": classes[int(label) - 1], "score": float(score), "box": [float(v) for v in box]}
            for box, score, label in zip(det["boxes"][keep].tolist(), det["scores"][keep].tolist(),
                                         det["labels"][keep].tolist())]


def _draw_pictures(results: list[dict], manifest: Manifest, out_dir: Path) -> list[str]:
    """The first ``PICTURES`` test images with objects, their detections drawn, as ``out_dir/<id>.jpg``."""
    from .detect import draw_detections

    chosen = [i for i, rec in enumerate(manifest.images) if rec.boxes][:PICTURES]
    paths = []
    for i in chosen:
        rec = manifest.images[i]
        dets = _plain_detections(results[i], manifest.classes, DRAW_SCORE)
        out = draw_detections(manifest.image_path(rec), dets, out_dir / f"{rec.id}.jpg", classes=manifest.classes)
        paths.append(str(out.resolve()))
    return paths


def _recall(predictor: Predictor, manifest: Manifest, workdir: Path, final: Path,
            notes: list[str]) -> tuple[dict, str | None]:
    """Dump the test proposals of the final model; recall against IoU and its plot (when matplotlib is here)."""
    props = workdir / "run" / "test_proposals.h5"
    if not props.exists():
        dump = predictor.with_settings(InferenceSettings.from_config(predictor.model.cfg, mode="dump"))
        dump_proposals(dump, manifest, props, checkpoint_path=final)
    with ProposalStore(props) as store:
        result = proposal_recall(store, manifest, top_ns=RECALL_TOP_NS)
    recall = {"average_recall": {str(n): v for n, v in result["average_recall"].items()},
              "recall_at_0.5": {str(n): r[0] for n, r in result["recall"].items()},
              "recall_at_0.7": {str(n): r[result["iou_thresholds"].index(0.7)] for n, r in result["recall"].items()},
              "proposals": str(props.resolve())}
    if importlib.util.find_spec("matplotlib") is None:
        notes.append("the recall plot was skipped: matplotlib is not installed (pip install frcnn[plot])")
        return recall, None
    from .evaluate.plots import plot_recall_vs_iou

    path = plot_recall_vs_iou(result, workdir / "recall_vs_iou.png",
                              title="Recall vs IoU, test proposals of the demo model")
    return recall, str(path.resolve())


def _finite(value: float) -> float | None:
    """JSON has no NaN: a class without positives gets null."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _steps(run: Path) -> dict[str, dict]:
    """Per training step: the iterations it ran of its plan, and the epoch of its best validation."""
    from .model.checkpoint import read_checkpoint

    out = {}
    for name in ("rpn1", "det1", "rpn2", "final"):
        prov = read_checkpoint(run / f"{name}.pt").get("provenance") or {}
        last = read_checkpoint(run / f"{name}.last.pt").get("provenance") or {} if (
            run / f"{name}.last.pt").exists() else prov
        best = prov.get("best") or {}
        out[name] = {"iterations": last.get("iterations"), "planned": (prov.get("plan") or {}).get("iterations"),
                     "best_epoch": best.get("epoch"),
                     "best": best.get("val_map", (best.get("val_recall") or {}).get("0.7"))}
    return out


def _evaluate(final: Path, test_path: Path, workdir: Path, device: torch.device, runtime: RuntimeConfig,
              on_step: StepCallback | None, notes: list[str]) -> dict:
    """Detections, VOC2007 AP, the drawn pictures and the recall plot of the final model (prepared once)."""
    test = read_manifest(test_path)
    _notify(on_step, "eval", "start")
    model, _ = load_model(final, device=device, require=("rpn", "roi_head"))
    predictor = Predictor.for_model(model, device, runtime=runtime, owned=True)
    results = detect_manifest(predictor, test)
    ev = evaluate_detections(detections_by_class(results, len(test.classes)), test, iou_thresh=0.5,
                             metric="11point")
    _notify(on_step, "eval", "done")
    _notify(on_step, "pictures", "start")
    pictures = _draw_pictures(results, test, workdir / "detections")
    recall, plot = _recall(predictor, test, workdir, final, notes)
    _notify(on_step, "pictures", "done")
    return {"map": _finite(ev["map"]), "metric": "voc2007 (11-point AP, IoU 0.5)",
            "ap": {k: _finite(v) for k, v in ev["ap"].items()}, "npos": ev["npos"],
            "pictures": {"detections": pictures, "recall_vs_iou": plot}, "recall": recall,
            "test_images": len(test.images)}


def demo_config() -> Config:
    """The ``tiny`` preset as the demo trains it: the paper's alternating optimisation (``tiny`` defaults to joint
    training) on the preset's own epochs, 4 per RPN step and 5 per detector step (docs/demo.md: 3 / 4 measured
    0.842, 4 / 5 0.944), each step stopped early by its patience, not run up to ``solver.max_epochs``, and
    without ``tiny``'s augmentation (the synthetic images have one size and plain colours; the demo's figures
    were measured without it)."""
    cfg = get_preset(PRESET)
    return replace(cfg, input=replace(cfg.input, train_scales=(cfg.input.test_scale,), scale_jitter=False,
                                      photometric=0.0),
                   solver=replace(cfg.solver, mode="alternating", max_epochs=0.0))


def default_threads() -> int:
    """Intra-op threads of a CPU demo: the cores idle when it starts (the 1-minute load average rounded
    off the core count), at least half the cores. On an idle 2-core laptop that is 2; with another job
    running, 1: more threads than free cores make PyTorch's CPU kernels wait on each other, several times
    slower on a busy 2-core machine. ``frcnn demo`` sets it (``devices.process_settings``) unless
    ``--threads`` says otherwise."""
    cores = os.cpu_count() or 2
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else cores
    return max(1, cores // 2, min(cores, cores - busy))


def run_demo(workdir: str | Path, *, device: torch.device | str = "cpu", n_train: int = DEFAULT_TRAIN,
             n_test: int = DEFAULT_TEST, iters: int | None = None, seed: int = DEFAULT_SEED,
             runtime: RuntimeConfig | None = None, on_log: Callable[[LoopState], None] | None = None,
             on_step: StepCallback | None = None, progress: Progress | None = None) -> dict:
    """Run (or continue) the demo in ``workdir``; returns the summary also written to ``workdir/summary.json``.

    ``iters``: iterations of every training step instead of the preset's (quick runs and tests).
    ``runtime``: this machine's settings (default: the tiny preset's). ``on_step(name, "start" | "done" |
    "skip")`` for ``data``, the six training steps, ``eval`` and ``pictures``; ``on_log`` at the training
    loop's logging steps; ``progress(done, total)`` during dumps.
    """
    start = time.perf_counter()
    workdir, device = Path(workdir), torch.device(device)
    runtime = runtime if runtime is not None else runtime_defaults(PRESET)
    ensure_dir(workdir)
    train_path, test_path, val_path = _make_data(workdir / "data", n_train, n_test, seed, on_step)
    cfg = demo_config()
    skipped: list[str] = []

    def step_cb(name: str, what: str) -> None:
        if what == "skip":
            skipped.append(name)
        _notify(on_step, name, what)

    train = read_manifest(train_path)
    request = PipelineRequest(cfg=cfg, manifest=train, manifest_path=train_path, workdir=workdir / "run",
                              device=device, runtime=runtime, iters=iters, on_log=on_log, on_step=step_cb,
                              progress=progress, val_manifest=read_manifest(val_path), val_path=val_path,
                              val_every=1, patience=PATIENCE)
    step_plans = plans(request, cfg)
    request.checkpoint_every = max(1, max(p.iterations for _, p in step_plans) // 4)
    final = run_pipeline(request)
    notes: list[str] = []
    if skipped:
        notes.append(f"resumed: steps {', '.join(skipped)} were already done by an earlier run; "
                     "seconds counts this run only")
    summary = {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION,
               **_evaluate(final, test_path, workdir, device, runtime, on_step, notes)}
    planned = dict(step_plans)
    summary.update({"seconds": round(time.perf_counter() - start, 1), "device": str(device),
                    "config": cfg.name,
                    "schedule": {"rpn_epochs": cfg.solver.rpn_epochs, "det_epochs": cfg.solver.det_epochs},
                    "iterations": {"rpn": planned["rpn1"].iterations, "detector": planned["det1"].iterations},
                    "steps": _steps(workdir / "run"), "val_images": DEFAULT_VAL, "train_images": len(train.images),
                    "seed": seed, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "model": str(final.resolve()), "notes": notes})
    atomic_write_json(workdir / "summary.json", summary)
    return summary
