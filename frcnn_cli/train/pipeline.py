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

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_write_json, ensure_dir
from ..callbacks import OnNote, Progress, StepCallback
from ..config import TRAIN_MODES, Config, RuntimeConfig
from ..config_io import config_from_dict, config_to_dict
from ..data.manifest import Manifest, manifest_hash
from ..errors import ConfigError, DataError
from ..inference import Predictor, dump_proposals
from ..model.anchor_fit import AnchorDecision, decide_anchors
from ..model.checkpoint import Init, load_model, read_init
from . import distributed
from .budget import format_duration
from .budget import now as budget_now
from .budget_control import StepBudget
from .data_schedule import LengthChoice, carve_note, carve_validation, carves, choose_length
from .loop import LoopState
from .run_budget import BudgetedStep, RunBudget
from .run_differences import check_data, nothing_trained, option_differences, refusal
from .schedule import StepPlan, plan_step
from .stage import StageRequest, run_stage
from .stage_setup import check_has_objects, decide_run_anchors, training_images
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
    mode: str | None = None  # None: the config's solver.mode
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
    seconds: float | None = None  # --time: the whole run fitted to this many seconds (not with iters/epochs)
    carved: int = 0  # validation images carved from the training manifest (settle_request)
    started: float | None = None  # budget.now() when the command began (its start-up spent too); None: now


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
    return {"mode": req.mode, "iters": req.iters, "epochs": req.epochs, "time": req.seconds, "val_hash": val_hash,
            "val_every": req.val_every, "patience": req.patience, "val": str(req.val_path) if req.val_path else None,
            "carved": req.carved, "manifest": str(req.manifest_path), "manifest_hash": manifest_hash(req.manifest),
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


def settle_request(req: PipelineRequest) -> PipelineRequest:
    """The request as the run sees it (a copy): the mode (the config's ``solver.mode`` unless given) and,
    when no ``--val`` is given and the config carves one (``data_schedule``), the training manifest less a
    validation split carved from it, and that split. Settling a settled request changes nothing."""
    if req.seconds is not None and (req.iters is not None or req.epochs is not None):
        raise ConfigError("give one of --time, --epochs or --iters: --time fits every step's length to the budget")
    out = dataclasses.replace(req, mode=req.mode or req.cfg.solver.mode)
    if req.val_manifest is None and carves(req.cfg, iters=req.iters, epochs=req.epochs):
        carved = carve_validation(req.manifest, req.cfg)
        if carved is not None:
            out.manifest, out.val_manifest = carved
            out.carved = len(carved[1].images)
    return out


def length_choice(req: PipelineRequest) -> LengthChoice:
    """What decides each step's length in a settled request (``data_schedule.choose_length``)."""
    return choose_length(req.cfg, iters=req.iters, epochs=req.epochs, seconds=req.seconds,
                         validating=req.val_manifest is not None, patience=req.patience)


def _steps(req: PipelineRequest) -> tuple[Step, ...]:
    return ALTERNATING if req.mode == "alternating" else JOINT


def plans(req: PipelineRequest, cfg: Config) -> list[tuple[str, StepPlan]]:
    """Every training step's plan (images, epochs, iterations, lr drops) under ``cfg``; under ``--time`` the
    preset's epochs, which the budget then scales (``run_budget``)."""
    req = settle_request(req)
    until_plateau = length_choice(req).until_plateau
    out = []
    for step in _steps(req):
        if step.kind == "dump":
            continue
        spec = stage_spec(step.kind, freeze_shared=step.freeze_shared)
        images = training_images(req.manifest, spec, cfg, req.manifest_path)
        out.append((step.name, plan_step(cfg.solver, spec.kind, images=len(images.images), flip=cfg.input.flip,
                                         world_size=distributed.world_size(), iters=req.iters, epochs=req.epochs,
                                         until_plateau=until_plateau)))
    return out


def _run_step(req: PipelineRequest, step: Step, run: _Run, budget: StepBudget | None = None) -> None:
    out = step_path(req.workdir, step)
    steps = {s.name: s for s in _steps(req)}
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
    length = length_choice(req)
    on_validation = None
    if req.on_validation is not None:
        on_validation = lambda row: req.on_validation(step.name, row)  # noqa: E731
    run_stage(StageRequest(cfg=run.cfg, spec=spec, manifest=req.manifest, manifest_path=req.manifest_path,
                           out=last_path(req.workdir, step) if validating else out, best_out=out,
                           init=init, device=req.device, runtime=req.runtime, iters=req.iters,
                           epochs=req.epochs, proposals_path=proposals, checkpoint_every=req.checkpoint_every,
                           resume=True, metrics_path=req.workdir / "metrics.jsonl", on_log=req.on_log,
                           on_warning=req.on_warning, anchors=run.anchors, val_manifest=req.val_manifest,
                           val_path=req.val_path, val_every=req.val_every, patience=length.patience,
                           on_validation=on_validation, until_plateau=length.until_plateau, budget=budget))


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


def _announce_plan(req: PipelineRequest, cfg: Config) -> None:
    """The plan at the start (under ``--time`` once the first iterations are timed: ``run_budget``), and what
    was decided about validation."""
    if not distributed.is_main():
        return
    if req.on_plan is not None and req.seconds is None:
        req.on_plan(plans(req, cfg))
    if req.on_note is None:
        return
    if req.seconds is not None:
        req.on_note(f"--time {format_duration(req.seconds)}: every step's length is fitted to the budget once "
                    "the first iterations are timed, and fitted again as the run goes")
    if req.carved or (req.val_manifest is None and carves(req.cfg, iters=req.iters, epochs=req.epochs)):
        req.on_note(carve_note(req.manifest, req.val_manifest if req.carved else None, req.cfg, req.manifest_path))
    length = length_choice(req)
    if length.until_plateau:
        req.on_note(f"each step runs until {length.patience} validations in a row bring no progress: the first "
                    f"time its lr drops, the second time it ends (at most {cfg.solver.max_epochs:g} epochs); "
                    "--epochs E or --time T fix the length instead")


def _budget(req: PipelineRequest, state: dict, started: float) -> RunBudget | None:
    """The run's budget under ``--time``, with what a resumed run had spent and measured, and the seconds this
    process has spent since ``started`` (reading the data, deciding the anchors)."""
    if req.seconds is None:
        return None
    budget = RunBudget(req.seconds, val_images=len(req.val_manifest.images) if req.val_manifest else 0,
                       val_every=req.val_every, on_plan=req.on_plan, on_note=req.on_note,
                       dump_images=len(req.manifest.images))
    budget.restore(state.get("budget"))
    budget.spent += budget.clock() - started
    return budget


def _budgeted_steps(req: PipelineRequest, run: _Run) -> list[BudgetedStep]:
    nominal = dict(plans(req, run.cfg))
    return [BudgetedStep(s.name, s.kind, s.freeze_shared, nominal.get(s.name)) for s in _steps(req)
            if s.name not in run.state["done"]]


def _run_budgeted_step(req: PipelineRequest, step: Step, run: _Run, budget: RunBudget) -> None:
    """One step under ``--time``: its share of what is left, and what it spent and measured recorded."""
    left = _budgeted_steps(req, run)
    if step.kind == "dump":
        tick = budget.clock()
        _run_step(req, step, run)
        budget.dumped(budget.clock() - tick, len(req.manifest.images))
    else:
        step_budget = budget.step_budget(left)
        _run_step(req, step, run, step_budget)
        budget.trained(left[0], step_budget.report)
    run.state["budget"] = budget.to_state()


def run_pipeline(req: PipelineRequest) -> Path:
    """Run (or continue) every step; returns the path of the final unified model."""
    started = req.started if req.started is not None else budget_now()
    req = settle_request(req)
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
    _announce_plan(req, run.cfg)
    budget = _budget(req, state, started)
    for step in _steps(req):
        if step.name in state["done"]:
            if req.on_step:
                req.on_step(step.name, "skip")
            continue
        if req.on_step:
            req.on_step(step.name, "start")
        if budget is not None:
            _run_budgeted_step(req, step, run, budget)
        else:
            _run_step(req, step, run)
        state["done"].append(step.name)
        if distributed.is_main():
            atomic_write_json(state_path, state)
        if req.on_step:
            req.on_step(step.name, "done")
    return req.workdir / "final.pt"
