"""A step's schedule: epochs to iterations, the lr drops and the warm-up, and the lr at each iteration.

An epoch is one pass over a step's training entries: its images, and their mirror images when
``input.flip`` (py-faster-rcnn appends the flipped roidb). With ``B`` images per iteration in all processes,
an epoch is ``ceil(entries / B)`` iterations (the sampler's last batch of an epoch may be short), and a step
of ``E`` epochs is ``round(E * ceil(entries / B))`` iterations: on VOC07 trainval (5,011 images, 10,022
entries) the paper presets' 80,000 / 10,022 epochs are exactly the paper's 80k RPN iterations of one image
and 40k detector iterations of two. The lr drops by ``gamma`` at the fractions ``solver.lr_drops`` of the
step (the paper's 60k of 80k: 0.75) and warms up linearly over ``warmup_iters + warmup_epochs`` epochs'
iterations (at most half the run before the first drop), so both scale with the step's length.

Where the length comes from, first match: ``--iters N``; ``--epochs E``; when validation with patience
decides it (``train/data_schedule.py``), up to ``solver.max_epochs`` ("validation"); a fixed ``solver.<kind>_iters``
(configs from before epochs; its drops are ``<kind>_steps``, kept at their fraction when ``--iters`` or
``--epochs`` changes the length); else ``solver.<kind>_epochs``, raised to ``solver.min_iters`` (a floor for
small sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..config import SolverConfig
from ..errors import ConfigError

KIND_KEYS = {"rpn": "rpn", "detector": "det", "joint": "joint"}


@dataclass(frozen=True)
class Schedule:
    """Step decay with optional linear warm-up: ``lr * gamma^(#drops passed)``."""

    base_lr: float
    steps: tuple[int, ...]
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001

    def lr_at(self, iteration: int) -> float:
        lr = self.base_lr * self.gamma ** sum(iteration >= s for s in self.steps)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr

    def with_drop_at(self, iteration: int) -> Schedule:
        """The schedule with its next drop (the first one at or after ``iteration``) brought forward to
        ``iteration`` (early stopping's patience ran out); unchanged when no drop is left."""
        later = [s for s in self.steps if s >= iteration]
        if not later:
            return self
        steps = sorted([s for s in self.steps if s != later[0]] + [iteration])
        return replace(self, steps=tuple(steps))

    def drops_left(self, iteration: int) -> int:
        """Drops that have not happened after ``iteration`` iterations: a drop at ``iteration`` applies from
        that iteration on, so no iteration has run at its lr yet (early stopping there drops first)."""
        return sum(s >= iteration for s in self.steps)


@dataclass(frozen=True)
class StepPlan:
    """How long one training step runs and how its lr moves; ``epochs`` is ``iterations / iters_per_epoch``."""

    kind: str  # "rpn", "detector" or "joint"
    images: int  # training images of the step (after ``solver.rpn_drop_empty``)
    entries: int  # images, and their mirror images when flipping
    batch: int  # images per iteration, all processes together
    iters_per_epoch: int
    iterations: int
    drops: tuple[int, ...]
    warmup: int
    # "--iters", "--epochs", "--time" (fitted to a budget), "validation" (up to solver.max_epochs, ended by the
    # patience), "iters" (a fixed count of the config), "epochs", "min_iters"
    source: str

    @property
    def epochs(self) -> float:
        return self.iterations / self.iters_per_epoch

    def epoch_of(self, iteration: int) -> float:
        """The (fractional) epoch reached after ``iteration`` iterations."""
        return iteration / self.iters_per_epoch

    def schedule(self, solver: SolverConfig) -> Schedule:
        return Schedule(solver.lr, self.drops, solver.gamma, self.warmup, solver.warmup_factor)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "images": self.images, "entries": self.entries, "batch": self.batch,
                "iters_per_epoch": self.iters_per_epoch, "epochs": round(self.epochs, 3),
                "iterations": self.iterations, "drops": list(self.drops), "warmup": self.warmup,
                "source": self.source}


def _length(solver: SolverConfig, key: str, per_epoch: int, iters: int | None,
            epochs: float | None, until_plateau: bool) -> tuple[int, str]:
    if iters is not None:
        return iters, "--iters"
    if epochs is not None:
        return max(1, round(epochs * per_epoch)), "--epochs"
    if until_plateau and solver.max_epochs > 0:
        return max(1, round(solver.max_epochs * per_epoch)), "validation"
    fixed = getattr(solver, f"{key}_iters")
    if fixed > 0:
        return fixed, "iters"
    planned = getattr(solver, f"{key}_epochs")
    if planned <= 0:
        raise ConfigError(f"config keys 'solver.{key}_epochs' and 'solver.{key}_iters' are both 0; give the "
                          f"step a length with --set solver.{key}_epochs=E (or --epochs / --iters)")
    count = max(1, round(planned * per_epoch))
    return (solver.min_iters, "min_iters") if solver.min_iters > count else (count, "epochs")


def _drops(solver: SolverConfig, key: str, total: int) -> tuple[int, ...]:
    fixed, steps = getattr(solver, f"{key}_iters"), getattr(solver, f"{key}_steps")
    if fixed > 0:  # a fixed schedule's drops keep their fraction of the run
        return steps if total == fixed else tuple(max(1, round(s * total / fixed)) for s in steps)
    return tuple(max(1, round(f * total)) for f in solver.lr_drops)


def rounding_note(plan: StepPlan, epochs: float | None, step: str) -> str | None:
    """What ``--epochs`` became once rounded to whole iterations (at least one), when that is over 1 % off what
    was asked (``--epochs 0.01`` of 20 iterations an epoch runs 1 iteration: 0.05 epochs); None otherwise."""
    if epochs is None or plan.source != "--epochs" or abs(plan.epochs - epochs) <= 0.01 * epochs:
        return None
    exact = epochs * plan.iters_per_epoch
    return (f"{step}: --epochs {epochs:g} is {exact:.3g} iterations ({plan.iters_per_epoch} an epoch of "
            f"{plan.entries} images of {plan.batch} per iteration); a step runs whole iterations, at least one: "
            f"{plan.iterations}, which is {plan.epochs:.3g} epochs")


def plan_step(solver: SolverConfig, kind: str, *, images: int, flip: bool, world_size: int = 1,
              iters: int | None = None, epochs: float | None = None, until_plateau: bool = False) -> StepPlan:
    """The plan of a ``kind`` step ("rpn", "detector", "joint") over ``images`` training images (``flip``:
    each also mirrored), with ``world_size`` processes; ``iters`` / ``epochs``: the command line's
    ``--iters`` / ``--epochs`` (at most one); ``until_plateau``: validation with patience decides the length,
    so the step may run up to ``solver.max_epochs`` (when set; source "validation")."""
    if iters is not None and epochs is not None:
        raise ConfigError("give --epochs or --iters, not both: --epochs sets each step's length in passes over "
                          "the data, --iters in iterations")
    if iters is not None and iters <= 0:
        raise ConfigError(f"--iters must be a positive number of iterations, got {iters}")
    if epochs is not None and not (epochs > 0 and math.isfinite(epochs)):
        raise ConfigError(f"--epochs must be a positive number of passes over the data, got {epochs}")
    key = KIND_KEYS[kind]
    per_process = solver.rpn_images_per_batch if kind == "rpn" else solver.det_images_per_batch
    batch = per_process * max(1, world_size)
    entries = images * (2 if flip else 1)
    per_epoch = max(1, math.ceil(entries / batch))
    total, source = _length(solver, key, per_epoch, iters, epochs, until_plateau)
    drops = _drops(solver, key, total)
    warmup = solver.warmup_iters + round(solver.warmup_epochs * per_epoch)
    warmup = min(warmup, max(drops[0] if drops else total, 1) // 2)  # short runs warm up less
    return StepPlan(kind=kind, images=images, entries=entries, batch=batch, iters_per_epoch=per_epoch,
                    iterations=total, drops=drops, warmup=warmup, source=source)
