"""The one SGD loop every training stage runs: lr schedule, AMP, non-finite guard, logging, checkpoints.

It knows nothing of files or the command line: the caller hands it batches, a proposal source, and
callbacks that log and save. It is exact to resume: the learning rate is a pure function of the
iteration, and the caller restores model, optimiser, RNG and data position before calling it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..config import SolverConfig
from ..devices import autocast
from ..errors import TrainingError
from ..model.detector import ForwardOutput
from ..model.rpn import ProposalSettings, Proposer, RPNProposer
from . import distributed
from .schedule import Schedule
from .steps import StageSpec

__all__ = ["LoopHooks", "LoopState", "Schedule", "build_optimizer", "run_loop"]


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every trainable parameter; biases at ``bias_lr_factor`` × lr.

    Biases are decayed too, as Caffe's default ``decay_mult: 1``.
    """
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".bias")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")]
    groups = [{"params": weights, "lr_factor": 1.0}, {"params": biases, "lr_factor": solver.bias_lr_factor}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise TrainingError("nothing to train: every parameter of the model is frozen")
    return torch.optim.SGD(groups, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)


@dataclass
class LoopState:
    """What the loop reports at a logging step."""

    iteration: int
    total: int
    losses: dict[str, float]
    lr: float
    images_per_s: float
    extra: dict = field(default_factory=dict)


class LearningRate(Protocol):
    def lr_at(self, iteration: int) -> float: ...


@dataclass
class LoopHooks:
    """Callbacks: ``on_log(state)`` at logging steps; ``after_iteration(done)`` after every iteration (True:
    stop the step now, e.g. early stopping), before ``save(done, final)`` at checkpoint steps and at the end;
    ``prepare_losses(out)`` between the forward and the losses (the detector's per-class target
    normalisation)."""

    on_log: Callable[[LoopState], None] | None = None
    save: Callable[[int, bool], None] | None = None
    after_iteration: Callable[[int], bool] | None = None
    prepare_losses: Callable[[ForwardOutput], None] | None = None
    checkpoint_every: int = 0
    log_every: int = 20


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)


def _forward_losses(model: nn.Module, core: nn.Module, spec: StageSpec, batch, targets, proposals,
                    proposer: Proposer | None, amp: bool | None, hooks: LoopHooks) -> dict[str, torch.Tensor]:
    with autocast(batch.tensor.device, amp):
        out = model(batch.tensor, batch.image_sizes, batch.scales, targets=targets, proposals=proposals,
                    run_rpn=spec.run_rpn, run_roi_head=spec.run_roi_head, proposer=proposer, sample_rois=True)
        if hooks.prepare_losses is not None:
            hooks.prepare_losses(out)
        losses = core.losses(out, targets, batch.image_sizes)
    return {k: v.float() for k, v in losses.items()}


def _check_finite(first_bad: torch.Tensor, spec: StageSpec, hooks_note: str) -> None:
    bad = distributed.earliest_flag(first_bad)  # every rank stops when one saw a non-finite loss
    if bad >= 0:
        raise TrainingError(
            f"training stage {spec.name}: the loss became non-finite (NaN or inf) at iteration {bad + 1}; "
            f"{hooks_note} Lower the learning rate (--set solver.lr=...) or check the data, then resume."
        )


def run_loop(*, model: nn.Module, core: nn.Module, spec: StageSpec, optimizer: torch.optim.Optimizer,
             schedule: LearningRate, batches: Iterator, start: int, total: int,
             amp: bool | None, hooks: LoopHooks, last_good_note: str = "") -> int:
    """Train ``model`` (possibly DDP-wrapped ``core``) from iteration ``start`` to ``total``, or until
    ``hooks.after_iteration`` stops it; returns the iterations done. ``schedule.lr_at(it)`` is read every
    iteration (a ``Schedule``, or early stopping's control, whose drops may come forward).

    ``batches`` yields ``(ImageBatch, Targets, proposals)`` already on the model's device (``proposals``:
    a detector stage's external proposals, else None). The non-finite check reads one device flag only at
    logging and checkpoint steps, so a GPU run has no per-iteration host sync.
    """
    model.train()
    device = next(core.parameters()).device
    # joint training: proposals from the RPN being trained, with the training top-N (constants for autograd)
    proposer = RPNProposer(ProposalSettings.from_config(core.cfg.rpn, "train")) if spec.kind == "joint" else None
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    tick, images = time.perf_counter(), 0
    for it in range(start, total):
        batch, targets, proposals = next(batches)
        _set_lr(optimizer, schedule.lr_at(it))
        losses = _forward_losses(model, core, spec, batch, targets, proposals, proposer, amp, hooks)
        loss = sum(losses.values())
        finite = torch.isfinite(loss)
        first_bad = torch.where((first_bad < 0) & ~finite, torch.full_like(first_bad, it), first_bad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += batch.tensor.shape[0]
        done = it + 1
        logging = hooks.log_every > 0 and (done % hooks.log_every == 0 or done == total)
        saving = hooks.save is not None and (
            (hooks.checkpoint_every > 0 and done % hooks.checkpoint_every == 0) or done == total)
        if logging or saving:
            _check_finite(first_bad, spec, last_good_note)
        if logging and hooks.on_log is not None:
            elapsed = max(time.perf_counter() - tick, 1e-9)
            values = {k: float(v.detach()) for k, v in losses.items()}
            values["loss"] = float(sum(values.values())) if values else math.nan
            hooks.on_log(LoopState(done, total, values, schedule.lr_at(it), images / elapsed))
            tick, images = time.perf_counter(), 0
        stop = hooks.after_iteration is not None and hooks.after_iteration(done)
        if stop and not (logging or saving):
            _check_finite(first_bad, spec, last_good_note)
        if saving or stop:
            hooks.save(done, stop or done == total)
        if stop:
            return done
    return total
