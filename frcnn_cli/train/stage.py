"""One training stage from start to checkpoint: ``train-rpn``, ``train-detector`` and the joint mode.

Wires the model, the data, the proposal file and the resume state around the one loop in ``loop.py``; what
the stage decides from its data before the first iteration (images, anchors, target statistics, validator) is
in ``stage_setup.py``, its schedule in ``schedule.py``, validation and early stopping in ``step_control.py``,
what it records besides its weights (the resume state's path and loading, the provenance, ``metrics.jsonl``) in
``stage_records.py``.
While it runs, ``<out>.resume.pt`` holds the latest resumable state (written atomically every
``checkpoint_every`` iterations); the final checkpoint appears under ``<out>`` only when the stage is done.
With validation, the best checkpoint so far is ``best_out`` (default ``<out stem>.best.pt``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import check_writable
from ..callbacks import OnNote
from ..config import Config, RuntimeConfig
from ..data.images import DetectionDataset
from ..data.loading import make_loader
from ..data.manifest import Manifest, manifest_hash
from ..data.proposal_store import ProposalStore
from ..dense_proposals import DenseProposalSource, is_dense
from ..devices import place_model
from ..errors import ConfigError, TrainingError
from ..model.anchor_fit import AnchorDecision
from ..model.checkpoint import Init, save_checkpoint
from ..model.detector import FasterRCNN
from . import distributed
from .batching import device_batches, proposal_source
from .budget_control import CALIBRATION, BudgetControl, StepBudget
from .loop import LoopHooks, LoopState, build_optimizer, run_loop
from .schedule import StepPlan, plan_step
from .stage_records import BUDGET_CAP, _load_resume, _MetricsLog, _provenance, _rng_state, resume_path
from .stage_setup import (
    best_path,
    check_has_objects,
    decide_run_anchors,
    make_validator,
    stage_target_stats,
    training_images,
)
from .step_control import StepControl
from .steps import StageSpec, build_stage_model, freeze_for_stage, shared_convs_warning
from .target_stats import TargetNormaliser, folded
from .validation import default_val_every


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
    on_warning: OnNote | None = None  # something odd but allowed (rank 0 only)
    # once every input is checked, just before the first iteration: (first iteration, total) (rank 0 only)
    on_start: Callable[[int, int], None] | None = None
    epochs: float | None = None  # --epochs (per step; not with iters)
    val_manifest: Manifest | None = None  # --val: validated every val_every epochs
    val_path: Path | None = None
    val_every: int | None = None  # epochs between validations (None: default_val_every)
    patience: int | None = None  # validations without a better figure before the lr drop / the stop
    best_out: Path | None = None  # where the best checkpoint goes (default best_path(out))
    # the anchors its caller decided for the whole run (the pipeline: once, at the start; it said so then); the
    # stage trains with anchors.config. None: the stage decides them itself (decide_run_anchors) and says so
    anchors: AnchorDecision | None = None
    on_plan: Callable[[StepPlan], None] | None = None  # the step's plan, before on_start (rank 0 only)
    on_note: OnNote | None = None  # what the stage decided from the data (rank 0 only)
    on_validation: Callable[[dict], None] | None = None  # each validation's (and event's) metrics row
    until_plateau: bool = False  # validation with patience decides the length: up to solver.max_epochs
    budget: StepBudget | None = None  # --time: the step's length fitted to these seconds (budget_control.py)


@dataclass
class _Saving:
    """What a stage's checkpoints hold besides the weights, and the per-class target statistics that are
    folded into ``bbox_pred`` in every checkpoint but the resumable state."""

    model: FasterRCNN
    parts: tuple[str, ...]
    prov: dict
    total: int
    stats: object = None  # TargetStats | None

    def write(self, path: Path, label: str, train_state: dict, extra: dict) -> None:
        with folded(self.model.roi_head.bbox_pred, self.stats, self.model.box_coder):
            save_checkpoint(path, self.model, stage=label, provenance={**self.prov, **extra}, parts=self.parts,
                            train_state=train_state)


def _saver(req: StageRequest, optimizer, saving: _Saving, control: StepControl):
    label, model, total = req.spec.label, saving.model, saving.total

    def save(done: int, final: bool) -> None:
        # every rank samples anchors and RoIs with its own RNG stream: rank 0 keeps them all
        rngs = distributed.all_gather_objects(_rng_state()) if not final else []
        if not distributed.is_main():
            return
        if not final:
            state = {"iteration": done, "total": total, "optimizer": optimizer.state_dict(),
                     "rng": rngs[0], "rng_per_rank": rngs, "manifest_hash": saving.prov["manifest_hash"],
                     "control": control.state_dict()}
            save_checkpoint(resume_path(req.out), model, stage=label, provenance=saving.prov,
                            parts=model.part_names, train_state=state)
            return
        summary, planned = control.summary(), control.plan.iterations  # under --time: the fitted length
        extra = {"iterations": done, "planned_iterations": planned, **({"validation": summary} if summary else {})}
        if isinstance(control, BudgetControl):
            extra.update(plan=control.plan.to_dict(), budget=control.report())
        saving.write(req.out, label, {"iteration": done, "total": planned, "finished": True,
                                      "stopped_early": done < planned}, extra)
        with contextlib.suppress(FileNotFoundError):
            resume_path(req.out).unlink()

    return save


def _best_saver(req: StageRequest, saving: _Saving, summary: Callable[[], dict | None]):
    """``on_best``: the best checkpoint, with the provenance of a finished one (``validation`` as of this
    validation, from ``summary``) and its ``best`` record."""
    def on_best(done: int, row: dict) -> None:
        figure = {k: v for k, v in row.items() if k.startswith("val_") and k != "val_seconds"}
        val = str(req.val_path) if req.val_path else "carved from the training data"
        record = {"iteration": done, "epoch": row["epoch"], **figure, "val": val,
                  "val_hash": manifest_hash(req.val_manifest)}
        saving.write(req.best_out or best_path(req.out), req.spec.label,
                     {"iteration": done, "total": saving.total, "best": True},
                     {"iterations": done, "planned_iterations": saving.total, "validation": summary(),
                      "best": record})

    return on_best


def _check_request(req: StageRequest) -> None:
    if req.spec.needs_proposal_file and req.proposals_path is None:
        raise ConfigError("train-detector needs --proposals P.h5 (made by frcnn dump-proposals)")
    if req.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be 0 (off) or positive, got {req.checkpoint_every}")
    if not req.manifest.images:
        raise ConfigError(f"{req.manifest_path} holds no images; there is nothing to train on")
    check_has_objects(req.manifest, req.manifest_path)
    best = (req.best_out or best_path(req.out)) if req.val_manifest is not None else None
    for path in (req.out, resume_path(req.out), req.metrics_path, best):
        if path is not None:  # before any training: a checkpoint that cannot be written is better known now
            check_writable(path, option="--out")


def _announce(req: StageRequest, warnings: list[str | None], notes: list[str], plan: StepPlan, start: int) -> None:
    """The warnings, the notes, the plan and the start, on rank 0, once the init, the proposals and the resume
    state are checked."""
    if not distributed.is_main():
        return
    for warning in warnings:
        if warning is not None and req.on_warning is not None:
            req.on_warning(warning)
    for note in notes:
        if req.on_note is not None:
            req.on_note(note)
    if req.on_plan is not None:
        req.on_plan(plan)
    if req.on_start is not None:
        req.on_start(start, plan.iterations)


def _decide(req: StageRequest) -> tuple[Config, list[str], list[str], dict]:
    """The config after the anchors were measured (and fitted): notes and warnings for the user, and a
    provenance record."""
    if req.anchors is not None:  # the run's decision, said at its start; recorded by the stages that train an RPN
        trains_rpn = req.spec.run_rpn and "rpn" in req.spec.trainable
        return req.anchors.config, [], [], {"anchors": req.anchors.to_dict()} if trains_rpn else {}
    decision = decide_run_anchors(req.cfg, req.manifest, req.init, spec=req.spec)
    if decision is None:
        return req.cfg, [], [], {}
    said = ([], [decision.message]) if decision.warn else ([decision.message], [])
    return decision.config, *said, {"anchors": decision.to_dict()}


def _budget_plans(req: StageRequest, cfg: Config, images: int) -> tuple[StepPlan, Callable[[int], StepPlan]]:
    """Under ``--time``: the plan a step starts on (the budget's estimate, at least past the first fit) and
    the plan of any length (source "--time")."""
    def plan_of(iterations: int) -> StepPlan:
        plan = plan_step(cfg.solver, req.spec.kind, images=images, flip=cfg.input.flip,
                         world_size=distributed.world_size(), iters=iterations)
        return dataclasses.replace(plan, source="--time")

    per_epoch = plan_of(1).iters_per_epoch
    return plan_of(max(CALIBRATION + 1, round(req.budget.epochs * per_epoch))), plan_of


def _budgeted(req: StageRequest, control: StepControl, cfg: Config, saving: _Saving,
              plan_of: Callable[[int], StepPlan]) -> BudgetControl:
    """The step's control under ``--time``; its checkpoints record each fitted plan."""
    def on_change(plan: StepPlan) -> None:
        saving.total = plan.iterations
        saving.prov["plan"] = plan.to_dict()

    return BudgetControl(control, req.budget, cfg.solver, images_per_iteration=control.plan.batch,
                         plan_of=plan_of, on_change=on_change)


def _control(req: StageRequest, plan: StepPlan, validator, model, saving: _Saving,
             metrics: _MetricsLog) -> StepControl:
    every = 0
    if req.val_manifest is not None:
        epochs = req.val_every or default_val_every(len(req.val_manifest.images), plan.entries, req.spec)
        every = max(1, round(epochs * plan.iters_per_epoch))

    def on_row(row: dict) -> None:
        metrics.write_row(row)
        if req.on_validation is not None:
            req.on_validation(row)

    control = StepControl(plan, saving.model.cfg.solver, validator=validator,
                          validating=req.val_manifest is not None, model=model, every=every, patience=req.patience,
                          on_best=_best_saver(req, saving, lambda: control.summary()), on_row=on_row)
    return control


def run_stage(req: StageRequest) -> Path:
    """Train one stage and write its checkpoint to ``req.out``; returns ``req.out``."""
    _check_request(req)
    spec = req.spec
    torch.manual_seed(req.cfg.seed)
    req.device = distributed.setup(req.device)
    store = None
    if spec.needs_proposal_file:
        dense = is_dense(req.proposals_path)
        store = (DenseProposalSource(str(req.proposals_path), req.manifest, req.cfg) if dense
                 else ProposalStore(req.proposals_path))
        store.check_manifest(req.manifest, req.manifest_path)
    cfg, notes, warnings, decided = _decide(req)
    images = training_images(req.manifest, spec, cfg, req.manifest_path)
    plan = plan_step(cfg.solver, spec.kind, images=len(images.images), flip=cfg.input.flip,
                     world_size=distributed.world_size(), iters=req.iters, epochs=req.epochs,
                     until_plateau=req.until_plateau)
    if req.budget is not None:
        plan, plan_of = _budget_plans(req, cfg, len(images.images))
    model, init_info, loaded = build_stage_model(cfg, req.manifest.classes, spec, req.init)
    freeze_for_stage(model, spec)
    # on the CPU 3x3 convs >= 128 channels: Winograd forward (and gradients when trained)
    place_model(model, req.device, req.runtime, training=True)
    channels_last = req.device.type == "cuda" and req.runtime.channels_last
    total = plan.iterations if req.budget is None else BUDGET_CAP  # under --time the control ends the step
    optimizer = build_optimizer(model, cfg.solver)
    stats = stage_target_stats(cfg, spec, store, req.manifest)
    prov = {**_provenance(req, init_info, total, cfg.seed), **decided, "plan": plan.to_dict(),
            **({"box_target_stats": stats.to_dict()} if stats is not None else {})}
    parts = tuple(p for p in model.part_names if p in spec.trainable or p in loaded)
    saving = _Saving(model, parts, prov, total, stats)
    metrics = _MetricsLog(req.metrics_path if distributed.is_main() else None, spec.label)
    validator = make_validator(val=req.val_manifest, spec=spec, model=model, store=store, stats=stats,
                               device=req.device, runtime=req.runtime) if distributed.is_main() else None
    control = _control(req, plan, validator, model, saving, metrics)
    if req.budget is not None:
        control = _budgeted(req, control, cfg, saving, plan_of)
    start = _load_resume(req, model, optimizer, total, control)
    if start >= total:
        raise TrainingError(f"{resume_path(req.out)} is already at iteration {start} of {total}; "
                            "delete it or ask for more --iters/--epochs")
    _announce(req, [*warnings, shared_convs_warning(spec, init_info)], notes, control.plan, start)
    wrapped = distributed.wrap(model, req.device)
    dataset = DetectionDataset(images, cfg, train=True)
    loader = make_loader(dataset, batch_size=spec.images_per_batch(cfg.solver), shuffle=True, seed=cfg.seed,
                         num_workers=req.runtime.num_workers, start_iteration=start,
                         pin_memory=req.device.type == "cuda", **distributed.shard_kwargs())

    def on_log(state: LoopState) -> None:
        state.total = control.plan.iterations  # under --time the fitted length, not the loop's bound
        metrics.write(state)
        if req.on_log is not None and distributed.is_main():
            req.on_log(state)

    validating = req.val_manifest is not None
    hooks = LoopHooks(on_log=on_log, save=_saver(req, optimizer, saving, control),
                      after_iteration=control.after_iteration if validating or req.budget else None,
                      prepare_losses=TargetNormaliser(stats, model.box_coder, req.device) if stats else None,
                      checkpoint_every=req.checkpoint_every, log_every=req.runtime.log_every)
    note = (f"the last good state is in {resume_path(req.out)}." if req.checkpoint_every else
            "no checkpoint was written (use --checkpoint-every N to keep one).")
    if req.budget is not None:
        control.begin(start)
    run_loop(model=wrapped, core=model, spec=spec, optimizer=optimizer, schedule=control,
             batches=device_batches(loader, req.device, channels_last=channels_last,
                                    proposals_for=proposal_source(store, req.device) if store is not None else None),
             start=start, total=total, amp=req.runtime.amp, hooks=hooks, last_good_note=note)
    if req.budget is not None:
        req.budget.report = control.report()
    distributed.barrier()
    return req.out
