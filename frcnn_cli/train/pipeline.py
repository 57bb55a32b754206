"""The whole 4-step alternating optimisation (or joint training) as one resumable job in a run folder.

Run folder: ``rpn1.pt``, ``props1.h5``, ``det1.pt``, ``rpn2.pt``, ``props2.h5``, ``final.pt`` (joint:
``final.pt`` only), ``metrics.jsonl`` and ``state.json`` (which steps are done, the manifest hash and the
config). Rerunning the same command continues after the last finished step, and inside an interrupted one
(training stages from their ``.resume.pt``, dumps from their ``.partial`` file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_write_json, ensure_dir
from ..callbacks import Progress, StepCallback, WarningCallback
from ..config import TRAIN_MODES, Config, RuntimeConfig
from ..config_io import config_from_dict, config_to_dict
from ..data.manifest import Manifest, manifest_hash
from ..errors import ConfigError, DataError
from ..inference import InferenceSettings, Predictor, dump_proposals
from ..model.checkpoint import load_model, read_init
from . import distributed
from .loop import LoopState
from .stage import StageRequest, run_stage
from .steps import stage_spec

STATE_FORMAT = "frcnn-run"
STATE_VERSION = 1


@dataclass(frozen=True)
class Step:
    name: str  # file stem in the run folder and key in state.json
    kind: str  # "rpn", "detector", "joint" or "dump"
    freeze_shared: bool = False
    init_from: str | None = None  # another step's name, or None for cfg.init
    proposals_from: str | None = None
    model_from: str | None = None  # for dumps


ALTERNATING = (
    Step("rpn1", "rpn"),
    Step("props1", "dump", model_from="rpn1"),
    Step("det1", "detector", proposals_from="props1"),
    Step("rpn2", "rpn", freeze_shared=True, init_from="det1"),
    Step("props2", "dump", model_from="rpn2"),
    Step("final", "detector", freeze_shared=True, init_from="rpn2", proposals_from="props2"),
)
JOINT = (Step("final", "joint"),)


def step_path(workdir: Path, step: Step) -> Path:
    return workdir / (step.name + (".h5" if step.kind == "dump" else ".pt"))


@dataclass
class PipelineRequest:
    cfg: Config
    manifest: Manifest
    manifest_path: Path
    workdir: Path
    device: torch.device
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    mode: str = "alternating"
    iters: int | None = None
    checkpoint_every: int = 0
    resume: bool = False  # asked to resume (``frcnn train --resume``): warn when there is nothing to resume
    on_log: Callable[[LoopState], None] | None = None
    on_step: StepCallback | None = None  # (step name, "start" | "done" | "skip")
    on_warning: WarningCallback | None = None
    progress: Progress | None = None  # dump progress (done, total)


def _read_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable run state ({exc}); delete it to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DataError(f"{path} is not an frcnn run state; use an empty --workdir")
    if state.get("version", 0) > STATE_VERSION:
        raise DataError(f"{path} was written by a newer frcnn (version {state.get('version')}); upgrade frcnn")
    return state


def _check_same_run(state: dict, req: PipelineRequest, path: Path) -> Config:
    if state["manifest_hash"] != manifest_hash(req.manifest):
        raise DataError(f"{req.workdir} holds a run on another dataset than {req.manifest_path} "
                        f"(see {path}); use another --workdir or the original manifest")
    if state["mode"] != req.mode or state.get("iters") != req.iters:
        iters = state.get("iters") or "of the preset"
        raise ConfigError(f"{req.workdir} holds an {state['mode']} run with iterations {iters}; "
                          "rerun it with the same options or use another --workdir")
    saved = config_from_dict(state["config"])  # the recipe only: runtime settings may change between runs
    if saved != req.cfg:
        raise ConfigError(f"{req.workdir} was started with another config (see {path}); rerun with the same "
                          "--config/--set or use another --workdir")
    return saved


def _new_state(req: PipelineRequest) -> dict:
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "mode": req.mode, "iters": req.iters,
            "manifest": str(req.manifest_path), "manifest_hash": manifest_hash(req.manifest),
            "config": config_to_dict(req.cfg), "done": []}


def _run_step(req: PipelineRequest, step: Step) -> None:
    out = step_path(req.workdir, step)
    steps = {s.name: s for s in (ALTERNATING if req.mode == "alternating" else JOINT)}
    if step.kind == "dump":
        if distributed.is_main():  # one rank dumps; the others wait for the file
            model_path = step_path(req.workdir, steps[step.model_from])
            model, _ = load_model(model_path, device=req.device, require=("rpn",))
            settings = InferenceSettings.from_config(model.cfg, mode="dump")
            dump_proposals(Predictor(model, req.device, settings, req.runtime, owned=True), req.manifest, out,
                           checkpoint_path=model_path, progress=req.progress)
        distributed.barrier()
        return
    init = str(step_path(req.workdir, steps[step.init_from])) if step.init_from else req.cfg.init
    proposals = step_path(req.workdir, steps[step.proposals_from]) if step.proposals_from else None
    spec = stage_spec(step.kind, freeze_shared=step.freeze_shared)
    run_stage(StageRequest(cfg=req.cfg, spec=spec, manifest=req.manifest, manifest_path=req.manifest_path,
                           out=out, init=read_init(init), device=req.device, runtime=req.runtime, iters=req.iters,
                           proposals_path=proposals, checkpoint_every=req.checkpoint_every, resume=True,
                           metrics_path=req.workdir / "metrics.jsonl", on_log=req.on_log,
                           on_warning=req.on_warning))


def run_pipeline(req: PipelineRequest) -> Path:
    """Run (or continue) every step; returns the path of the final unified model."""
    if req.mode not in TRAIN_MODES:
        raise ConfigError(f"--mode must be one of {', '.join(TRAIN_MODES)}, got {req.mode}")
    init = req.cfg.init
    if init not in ("imagenet", "none") and not Path(init).is_file():
        raise ConfigError(f"init {init} does not exist; give imagenet, none, a weights file or a checkpoint "
                          "(--set init=...)")
    ensure_dir(req.workdir)
    req.device = distributed.setup(req.device)  # before any barrier: a resumed run may start with a dump
    state_path = req.workdir / "state.json"
    state = _read_state(state_path)
    if state is None:
        if req.resume and req.on_warning is not None and distributed.is_main():
            req.on_warning(f"--resume: {req.workdir} holds no run to resume (no {state_path.name}); starting one")
        state = _new_state(req)
        if distributed.is_main():
            atomic_write_json(state_path, state)
    else:
        _check_same_run(state, req, state_path)
    for step in ALTERNATING if req.mode == "alternating" else JOINT:
        if step.name in state["done"]:
            if req.on_step:
                req.on_step(step.name, "skip")
            continue
        if req.on_step:
            req.on_step(step.name, "start")
        _run_step(req, step)
        state["done"].append(step.name)
        if distributed.is_main():
            atomic_write_json(state_path, state)
        if req.on_step:
            req.on_step(step.name, "done")
    return req.workdir / "final.pt"
