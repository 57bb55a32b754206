"""One training stage from start to checkpoint: ``train-rpn``, ``train-detector`` and the joint mode.

Wires the model, the data, the proposal file and the resume state around the one loop in ``loop.py``.
While it runs, ``<out>.resume.pt`` holds the latest resumable state (written atomically every
``checkpoint_every`` iterations); the final checkpoint appears under ``<out>`` only when the stage is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import append_text, check_writable
from ..callbacks import WarningCallback
from ..config import Config, RuntimeConfig
from ..data.images import DetectionDataset
from ..data.loading import make_loader
from ..data.manifest import Manifest, manifest_hash
from ..data.proposal_store import ProposalStore
from ..devices import place_model
from ..errors import ConfigError, TrainingError
from ..model.checkpoint import Init, file_sha256, read_checkpoint, save_checkpoint
from . import distributed
from .batching import device_batches, proposal_source
from .loop import LoopHooks, LoopState, Schedule, build_optimizer, run_loop
from .steps import StageSpec, build_stage_model, freeze_for_stage, scaled_schedule, shared_convs_warning


@dataclass
class StageRequest:
    """Everything one stage needs; the CLI and the pipeline both build one."""

    cfg: Config
    spec: StageSpec
    manifest: Manifest
    manifest_path: Path
    out: Path
    init: Init
    device: torch.device
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    iters: int | None = None
    proposals_path: Path | None = None
    checkpoint_every: int = 0
    resume: bool = False
    metrics_path: Path | None = None
    on_log: Callable[[LoopState], None] | None = None
    on_warning: WarningCallback | None = None  # something odd but allowed (rank 0 only)
    # once every input is checked, just before the first iteration: (first iteration, total) (rank 0 only)
    on_start: Callable[[int, int], None] | None = None


def resume_path(out: Path) -> Path:
    """Where the resumable state of a stage writing ``out`` lives while it runs."""
    return out.with_name(out.name + ".resume.pt")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _MetricsLog:
    """``metrics.jsonl`` (one line per logged step) and TensorBoard events when tensorboard is installed."""

    def __init__(self, path: Path | None, stage: str) -> None:
        self.path, self.stage, self.tb = path, stage, None
        if path is not None:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard" / stage))

    def write(self, state: LoopState) -> None:
        if self.path is None:
            return
        row = {"stage": self.stage, "iteration": state.iteration, **state.losses, "lr": state.lr,
               "images_per_s": round(state.images_per_s, 3)}
        append_text(self.path, json.dumps(row) + "\n")  # a full disk: an error naming the file
        if self.tb is not None:
            for key, value in state.losses.items():
                self.tb.add_scalar(f"{self.stage}/{key}", value, state.iteration)
            self.tb.add_scalar(f"{self.stage}/lr", state.lr, state.iteration)


def _provenance(req: StageRequest, init_info: dict, total: int, seed: int) -> dict:
    prov = {"manifest_hash": manifest_hash(req.manifest), "manifest": str(req.manifest_path),
            "iterations": total, "seed": seed, **init_info,
            "runtime": {**dataclasses.asdict(req.runtime), "device": str(req.device)}}  # a record, never replayed
    if req.proposals_path is not None:
        prov["proposals"] = str(req.proposals_path)
        prov["proposals_hash"] = file_sha256(req.proposals_path)
    return prov


def _load_resume(req: StageRequest, model, optimizer, total: int) -> int:
    path = resume_path(req.out)
    if not (req.resume and path.exists()):
        return 0
    ckpt = read_checkpoint(path)
    state = ckpt.get("train_state") or {}
    if state.get("manifest_hash") != manifest_hash(req.manifest):
        raise TrainingError(f"{path} was made from another dataset manifest than {req.manifest_path}; "
                            f"delete {path} to start this stage afresh")
    if ckpt.get("stage") != req.spec.label:
        raise TrainingError(f"{path} holds an interrupted '{ckpt.get('stage')}' stage, not "
                            f"'{req.spec.label}'; resume it with the command that started it, or "
                            f"delete {path} to start this stage afresh")
    if state.get("total", total) != total:
        raise TrainingError(f"{path} is a run of {state['total']} iterations, this one asks for {total}; resume "
                            f"with the same --iters, or delete {path} to start this stage afresh")
    model.load_state_dict({f"{p}.{k}": v for p, sd in ckpt["parts"].items() for k, v in sd.items()},
                          strict=False)
    optimizer.load_state_dict(state["optimizer"])
    per_rank = state.get("rng_per_rank") or []
    _restore_rng(per_rank[distributed.rank()] if len(per_rank) == distributed.world_size() else state["rng"])
    return int(state["iteration"])


def _saver(req: StageRequest, model, optimizer, parts: tuple[str, ...], prov: dict, total: int):
    label = req.spec.label

    def save(done: int) -> None:
        # every rank samples anchors and RoIs with its own RNG stream: rank 0 keeps them all
        rngs = distributed.all_gather_objects(_rng_state()) if done < total else []
        if not distributed.is_main():
            return
        if done < total:
            state = {"iteration": done, "total": total, "optimizer": optimizer.state_dict(),
                     "rng": rngs[0], "rng_per_rank": rngs, "manifest_hash": prov["manifest_hash"]}
            save_checkpoint(resume_path(req.out), model, stage=label, provenance=prov,
                            parts=model.part_names, train_state=state)
            return
        save_checkpoint(req.out, model, stage=label, provenance=prov, parts=parts,
                        train_state={"iteration": done, "total": total, "finished": True})
        with contextlib.suppress(FileNotFoundError):
            resume_path(req.out).unlink()

    return save


def _check_request(req: StageRequest) -> None:
    if req.spec.needs_proposal_file and req.proposals_path is None:
        raise ConfigError("train-detector needs --proposals P.h5 (made by frcnn dump-proposals)")
    if req.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be 0 (off) or positive, got {req.checkpoint_every}")
    if not req.manifest.images:
        raise ConfigError(f"{req.manifest_path} holds no images; there is nothing to train on")
    for path in (req.out, req.metrics_path):
        if path is not None:  # before any training: a checkpoint that cannot be written is better known now
            check_writable(path, option="--out")


def _announce(req: StageRequest, warning: str | None, start: int, total: int) -> None:
    """The warning and the start, on rank 0, once the init, the proposals and the resume state are checked."""
    if not distributed.is_main():
        return
    if warning is not None and req.on_warning is not None:
        req.on_warning(warning)
    if req.on_start is not None:
        req.on_start(start, total)


def run_stage(req: StageRequest) -> Path:
    """Train one stage and write its checkpoint to ``req.out``; returns ``req.out``."""
    _check_request(req)
    cfg, spec = req.cfg, req.spec
    torch.manual_seed(cfg.seed)
    req.device = distributed.setup(req.device)
    store = None
    if spec.needs_proposal_file:
        store = ProposalStore(req.proposals_path)
        store.check_manifest(req.manifest, req.manifest_path)
    model, init_info, loaded = build_stage_model(cfg, req.manifest.classes, spec, req.init)
    freeze_for_stage(model, spec)
    # on the CPU 3x3 convs >= 128 channels: Winograd forward (and gradients when trained)
    place_model(model, req.device, req.runtime, training=True)
    channels_last = req.device.type == "cuda" and req.runtime.channels_last
    default_iters, steps = spec.iterations(cfg.solver)
    total, steps = scaled_schedule(default_iters, steps, req.iters)
    optimizer = build_optimizer(model, cfg.solver)
    start = _load_resume(req, model, optimizer, total)
    if start >= total:
        raise TrainingError(f"{resume_path(req.out)} is already at iteration {start} of {total}; "
                            "delete it or ask for more --iters")
    prov = _provenance(req, init_info, total, cfg.seed)
    _announce(req, shared_convs_warning(spec, init_info), start, total)
    parts = tuple(p for p in model.part_names if p in spec.trainable or p in loaded)
    wrapped = distributed.wrap(model, req.device)
    dataset = DetectionDataset(req.manifest, cfg, train=True)
    batch_size = spec.images_per_batch(cfg.solver)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=cfg.seed,
                         num_workers=req.runtime.num_workers, start_iteration=start,
                         pin_memory=req.device.type == "cuda", **distributed.shard_kwargs())
    metrics = _MetricsLog(req.metrics_path if distributed.is_main() else None, spec.label)

    def on_log(state: LoopState) -> None:
        metrics.write(state)
        if req.on_log is not None and distributed.is_main():
            req.on_log(state)

    hooks = LoopHooks(on_log=on_log, save=_saver(req, model, optimizer, parts, prov, total),
                      checkpoint_every=req.checkpoint_every, log_every=req.runtime.log_every)
    warmup = min(cfg.solver.warmup_iters, max(steps[0] if steps else total, 1) // 2)  # short runs warm up less
    schedule = Schedule(cfg.solver.lr, steps, cfg.solver.gamma, warmup, cfg.solver.warmup_factor)
    note = (f"the last good state is in {resume_path(req.out)}." if req.checkpoint_every else
            "no checkpoint was written (use --checkpoint-every N to keep one).")
    run_loop(model=wrapped, core=model, spec=spec, optimizer=optimizer, schedule=schedule,
             batches=device_batches(loader, req.device, channels_last=channels_last,
                                    proposals_for=proposal_source(store, req.device) if store is not None else None),
             start=start, total=total, amp=req.runtime.amp, hooks=hooks, last_good_note=note)
    distributed.barrier()
    return req.out
