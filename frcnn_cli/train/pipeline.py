"""The whole 4-step alternating optimisation (or joint training) as one resumable job in a run folder.

Run folder: ``rpn1.pt``, ``props1.h5``, ``det1.pt``, ``rpn2.pt``, ``props2.h5``, ``final.pt`` (joint:
``final.pt`` only), ``metrics.jsonl`` and ``state.json`` (which steps are done, the manifest hash, the
config asked for and the one trained: the anchors are measured, and fitted when ``anchors.auto``, once at the
start). With validation (``val_manifest``) each training step's file is its best checkpoint and
``<step>.last.pt`` its last, so every later step starts from the best of the one before and ``final.pt`` is
the best unified detector. Rerunning the same command continues after the last finished step, and inside an
interrupted one (training stages from their ``.resume.pt``, dumps from their ``.partial`` file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..atomic import atomic_write_json, ensure_dir
from ..callbacks import OnNote, Progress, StepCallback
from ..config import TRAIN_MODES, Config, RuntimeConfig, runtime_defaults
from ..config_io import Overrides, config_from_dict, config_to_dict, resolve_settings
from ..data.manifest import Manifest, manifest_hash, read_manifest, require_annotations
from ..devices import resolve_device
from ..errors import ConfigError, DataError
from ..inference import Predictor, dump_proposals
from ..locks import output_lock
from ..model.anchor_fit import AnchorDecision, decide_anchors
from ..model.checkpoint import Init, load_model, read_init
from . import distributed
from .loop import LoopState
from .run_differences import check_data, nothing_trained, option_differences, refusal
from .schedule import StepPlan, plan_step
from .stage import StageRequest, run_stage
from .stage_setup import check_has_objects, decide_run_anchors, training_images
from .steps import stage_spec
from .validation import read_val_manifest

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
    """The file a step leaves for the later ones (with validation: a training step's best checkpoint)."""
    return workdir / (step.name + (".h5" if step.kind == "dump" else ".pt"))


def last_path(workdir: Path, step: Step) -> Path:
    """A training step's last checkpoint when it validates (its ``step_path`` is then the best one)."""
    return workdir / (step.name + ".last.pt")


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
    on_warning: OnNote | None = None
    progress: Progress | None = None  # dump progress (done, total)
    epochs: float | None = None  # --epochs of each training step (not with iters)
    val_manifest: Manifest | None = None
    val_path: Path | None = None
    val_every: int | None = None
    patience: int | None = None
    on_plan: Callable[[list[tuple[str, StepPlan]]], None] | None = None  # every training step's plan, at start
    on_note: OnNote | None = None
    on_validation: Callable[[str, dict], None] | None = None  # (step name, metrics row)


def _read_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable run state ({exc}); delete it to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DataError(f"{path} is not an frcnn run state; use an empty --workdir")
    version = state.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        raise DataError(f"{path} was written by a newer frcnn (version {state.get('version')}); upgrade frcnn")
    problem = _state_problem(state)
    if problem is not None:  # a state edited by hand (a step taken out of "done" to redo it, gone wrong)
        raise DataError(f"{path}: {problem}; restore it, or delete it to start the run afresh")
    return state


_STATE_KEYS = (("version", int, "a version number"), ("manifest_hash", str, "a text hash"),
               ("config", dict, "an object"), ("done", list, "a list of step names"))


def _state_problem(state: dict) -> str | None:
    """What is wrong with the keys a run state must hold, or None."""
    for key, kind, what in _STATE_KEYS:
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"\"{key}\" is missing or not {what}"
    names = {step.name for step in (*ALTERNATING, *JOINT)}
    if not all(isinstance(name, str) and name in names for name in state["done"]):
        return f"\"done\" names a step other than {', '.join(sorted(names))}: {state['done']!r}"
    for key in ("trained_config", "anchors"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return f"\"{key}\" is not an object"
    return None


def run_record(req: PipelineRequest) -> dict:
    """The options a run is started with, as ``state.json`` records them (and a rerun must repeat)."""
    val_hash = manifest_hash(req.val_manifest) if req.val_manifest is not None else None
    return {"mode": req.mode, "iters": req.iters, "epochs": req.epochs, "val_hash": val_hash,
            "val_every": req.val_every, "patience": req.patience, "val": str(req.val_path) if req.val_path else None,
            "manifest": str(req.manifest_path), "manifest_hash": manifest_hash(req.manifest),
            "config": config_to_dict(req.cfg)}


def _differences(state: dict, req: PipelineRequest) -> list[str]:
    """Each option the request asks differently from the run in the folder (the data checked first: a
    ``DataError`` when it differs); the recipe only: runtime settings may change between runs."""
    now = run_record(req)
    check_data(state, now, req.workdir)
    saved = {**state, "config": config_to_dict(config_from_dict(state["config"]))}
    return option_differences(saved, now)


def _new_state(req: PipelineRequest, init: Init) -> tuple[dict, AnchorDecision]:
    """A new run's state; the anchors are decided (measured, fitted when ``anchors.auto``) here, once, as a
    single step decides them (``decide_run_anchors``, for the run's first stage)."""
    first = ALTERNATING[0] if req.mode == "alternating" else JOINT[0]
    decision = decide_run_anchors(req.cfg, req.manifest, init, spec=stage_spec(first.kind))
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, **run_record(req),
             "trained_config": config_to_dict(decision.config), "done": [], "anchors": decision.to_dict()}
    return state, decision


def _recorded_anchors(state: dict, cfg: Config, manifest: Manifest) -> AnchorDecision:
    """The anchors decision of a resumed run, as its state records it (a run folder of an older frcnn that
    recorded none, its init holding an RPN: measured again, never fitted)."""
    if state.get("anchors") is not None:
        return AnchorDecision.from_dict(state["anchors"], cfg)
    return decide_anchors(cfg, manifest, may_fit=False)


def plans(req: PipelineRequest, cfg: Config) -> list[tuple[str, StepPlan]]:
    """Every training step's plan (images, epochs, iterations, lr drops) under ``cfg``."""
    out = []
    for step in ALTERNATING if req.mode == "alternating" else JOINT:
        if step.kind == "dump":
            continue
        spec = stage_spec(step.kind, freeze_shared=step.freeze_shared)
        images = training_images(req.manifest, spec, cfg, req.manifest_path)
        out.append((step.name, plan_step(cfg.solver, spec.kind, images=len(images.images), flip=cfg.input.flip,
                                         world_size=distributed.world_size(), iters=req.iters, epochs=req.epochs)))
    return out


def _run_step(req: PipelineRequest, step: Step, run: _Run) -> None:
    out = step_path(req.workdir, step)
    steps = {s.name: s for s in (ALTERNATING if req.mode == "alternating" else JOINT)}
    if step.kind == "dump":
        if distributed.is_main():  # one rank dumps; the others wait for the file
            model_path = step_path(req.workdir, steps[step.model_from])
            model, _ = load_model(model_path, device=req.device, require=("rpn",))
            predictor = Predictor.for_model(model, req.device, runtime=req.runtime, owned=True, mode="dump")
            dump_proposals(predictor, req.manifest, out, checkpoint_path=model_path, progress=req.progress)
        distributed.barrier()
        return
    init = read_init(str(step_path(req.workdir, steps[step.init_from]))) if step.init_from else run.init()
    proposals = step_path(req.workdir, steps[step.proposals_from]) if step.proposals_from else None
    spec = stage_spec(step.kind, freeze_shared=step.freeze_shared)
    validating = req.val_manifest is not None
    on_validation = None
    if req.on_validation is not None:
        on_validation = lambda row: req.on_validation(step.name, row)  # noqa: E731
    run_stage(StageRequest(cfg=run.cfg, spec=spec, manifest=req.manifest, manifest_path=req.manifest_path,
                           out=last_path(req.workdir, step) if validating else out, best_out=out,
                           init=init, device=req.device, runtime=req.runtime, iters=req.iters,
                           epochs=req.epochs, proposals_path=proposals, checkpoint_every=req.checkpoint_every,
                           resume=True, metrics_path=req.workdir / "metrics.jsonl", on_log=req.on_log,
                           on_warning=req.on_warning, anchors=run.anchors, val_manifest=req.val_manifest,
                           val_path=req.val_path, val_every=req.val_every, patience=req.patience,
                           on_validation=on_validation))


def _replaced_first_attempt(state: dict, req: PipelineRequest) -> bool:
    """Whether the run in the folder never trained an iteration and was started with other options: then it
    holds nothing to lose and the request starts a new run instead (said in a note)."""
    if not nothing_trained(state, req.workdir):
        return False
    try:
        differences = _differences(state, req)
    except DataError as exc:  # another dataset, a changed manifest
        differences = [str(exc)]
    if differences and req.on_note is not None and distributed.is_main():
        req.on_note(f"{req.workdir} held a run that never trained an iteration, started with other options "
                    f"({'; '.join(differences)}); starting a new run with these")
    return bool(differences)


@dataclass
class _Run:
    """What every step of a run shares: its state, the config its steps train with, the anchors decided at
    its start (handed to each stage) and the init of ``cfg.init``, read once (``init()``)."""

    state: dict
    cfg: Config
    anchors: AnchorDecision
    first_init: Init | None = None

    def init(self) -> Init:
        if self.first_init is None:  # a resumed run reads it when a step first needs it
            self.first_init = read_init(self.cfg.init)
        return self.first_init


def _start(req: PipelineRequest, state_path: Path) -> _Run:
    """The run's state (new, or the one in the folder, checked against the request), the config its steps
    train with and the anchors decided at the start."""
    state = _read_state(state_path)
    found = state is not None
    if state is not None and _replaced_first_attempt(state, req):
        state = None
    if state is None:
        if req.resume and not found and req.on_warning is not None and distributed.is_main():
            req.on_warning(f"--resume: {req.workdir} holds no run to resume (no {state_path.name}); starting one")
        init = read_init(req.cfg.init)
        state, decision = _new_state(req, init)
        if distributed.is_main():
            atomic_write_json(state_path, state)
            if decision.warn and req.on_warning is not None:
                req.on_warning(decision.message)
            elif req.on_note is not None:
                req.on_note(decision.message)
        return _Run(state, decision.config, decision, init)
    differences = _differences(state, req)
    if differences:
        raise refusal(differences, req.workdir, state_path)
    cfg = config_from_dict(state.get("trained_config") or state["config"])
    return _Run(state, cfg, _recorded_anchors(state, cfg, req.manifest))


def run_pipeline(req: PipelineRequest) -> Path:
    """Run (or continue) every step; returns the path of the final unified model."""
    if req.mode not in TRAIN_MODES:
        raise ConfigError(f"--mode must be one of {', '.join(TRAIN_MODES)}, got {req.mode}")
    init = req.cfg.init
    if init not in ("imagenet", "none") and not Path(init).is_file():
        raise ConfigError(f"init {init} does not exist; give imagenet, none, a weights file or a checkpoint "
                          "(--set init=...)")
    check_has_objects(req.manifest, req.manifest_path)
    ensure_dir(req.workdir)
    req.device = distributed.setup(req.device)  # before any barrier: a resumed run may start with a dump
    state_path = req.workdir / "state.json"
    run = _start(req, state_path)
    state = run.state
    if req.on_plan is not None and distributed.is_main():
        req.on_plan(plans(req, run.cfg))
    for step in ALTERNATING if req.mode == "alternating" else JOINT:
        if step.name in state["done"]:
            if req.on_step:
                req.on_step(step.name, "skip")
            continue
        if req.on_step:
            req.on_step(step.name, "start")
        _run_step(req, step, run)
        state["done"].append(step.name)
        if distributed.is_main():
            atomic_write_json(state_path, state)
        if req.on_step:
            req.on_step(step.name, "done")
    return req.workdir / "final.pt"


def train(data: str | os.PathLike, workdir: str | os.PathLike, *, config: str | Config | None = None,
          overrides: Overrides | Sequence[str] = (), mode: str = "alternating", iters: int | None = None,
          epochs: float | None = None, val: str | os.PathLike | None = None, val_every: int | None = None,
          patience: int | None = None, seed: int | None = None, device: torch.device | str | None = None,
          checkpoint_every: int | None = None, resume: bool = False,
          progress: Callable[[LoopState], None] | None = None, on_step: StepCallback | None = None,
          on_note: OnNote | None = None, on_warning: OnNote | None = None,
          on_plan: Callable[[list[tuple[str, StepPlan]]], None] | None = None,
          on_validation: Callable[[str, dict], None] | None = None,
          on_runtime: Callable[[torch.device, RuntimeConfig], None] | None = None) -> Path:
    """``frcnn train`` from Python: the paper's four steps (or ``mode="joint"``) on the manifest ``data`` in the
    run folder ``workdir``, resumable (rerun to continue); returns the path of the final detector.

    ``config``: a preset name, a TOML file or a ``Config`` (default vgg16), then ``overrides`` (``--set``
    items) and ``seed``; ``iters``/``epochs``: each step's length (default the preset's epochs); ``val``: a
    validation manifest (the best checkpoint of each step is kept, with ``val_every`` and ``patience``);
    ``checkpoint_every``: iterations between resumable states (default a tenth of the first detector step).
    ``progress(state)`` gets a ``train.loop.LoopState`` every ``runtime.log_every`` iterations (step,
    iteration of total, losses, lr, images/s); ``on_step(name, "start"|"done"|"skip")``, ``on_note`` and
    ``on_warning`` (sentences), ``on_plan`` (each step's plan) and ``on_validation(step, row)`` tell the rest;
    ``on_runtime(device, runtime)`` comes before the work (the command line sets its threads there). The
    folder is locked while it runs (``locks.output_lock``).

    >>> final = frcnn_cli.train("synth/trainval.json", "run", config="tiny", epochs=1, device="cpu",
    ...                         progress=lambda s: print(s.iteration, s.total, s.losses))  # doctest: +SKIP
    """
    workdir = Path(workdir)
    lock = output_lock(workdir, option="--workdir", folder=True) if distributed.is_main() else nullcontext()
    with lock:
        manifest = read_manifest(data)
        require_annotations(manifest, data, "there is nothing to train on: give an annotated manifest (frcnn "
                                            "prepare of a trainval split)")
        val_manifest = read_val_manifest(val, manifest, data, iters=iters, epochs=epochs, val_every=val_every,
                                         patience=patience)
        cfg, runtime = _train_settings(config, Overrides.parse(overrides), seed)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        if on_runtime is not None:
            on_runtime(dev, runtime)
        req = PipelineRequest(cfg=cfg, manifest=manifest, manifest_path=Path(data), workdir=workdir, device=dev,
                              runtime=runtime, mode=mode, iters=iters, resume=resume, on_log=progress,
                              on_step=on_step, on_warning=on_warning, epochs=epochs, val_manifest=val_manifest,
                              val_path=Path(val) if val is not None else None, val_every=val_every,
                              patience=patience, on_plan=on_plan, on_note=on_note, on_validation=on_validation)
        req.checkpoint_every = checkpoint_every if checkpoint_every is not None else _default_checkpoint_every(req)
        return run_pipeline(req)


def _train_settings(config: str | Config | None, overrides: Overrides,
                    seed: int | None) -> tuple[Config, RuntimeConfig]:
    """The preset, file or ``Config``, then the ``--set`` overrides (recipe and runtime keys apart), then the seed."""
    cfg, runtime = (config, runtime_defaults(config.name)) if isinstance(config, Config) else resolve_settings(config)
    cfg = overrides.apply(cfg)
    return (cfg if seed is None else replace(cfg, seed=seed)), overrides.apply_runtime(runtime)


def _default_checkpoint_every(req: PipelineRequest) -> int:
    """A tenth of the first detector step's iterations (100 without one): a resumable state that often."""
    first_detector = next((p for _, p in plans(req, req.cfg) if p.kind != "rpn"), None)
    return max(1, (first_detector.iterations if first_detector else 100) // 10)
