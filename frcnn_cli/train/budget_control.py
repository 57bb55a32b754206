"""One step under a time budget: its length fitted to the seconds it was given, from its measured speed.

The step starts on an estimate; after ``CALIBRATION`` iterations (its speed measured, the first iteration of
the process left out: it starts the loader) its iterations are fitted to the seconds left, so that training,
the validations still due (``StepControl``'s, every ``every`` iterations and one at the end, at the seconds
each has taken, or an estimate before the first) and the iterations end together; then again every
``REFIT_SHARE`` of the step, with the speed measured so far. Each fit moves the lr drops still ahead with the
length (``StepPlan`` fractions), keeps those passed and the warm-up, and keeps any drop that the patience
brought forward. At the first fit the caller may share its budget again with the measured speed
(``StepBudget.refit``: the pipeline then knows what this step's images cost) and hears the plan
(``on_fitted``). A step never gets less than ``budget.MIN_STEP_EPOCHS``.

Only rank 0's clock decides: every fit is gathered from it, so under DDP all ranks stop at the same iteration.
The seconds spent, measured and allotted are the resumable state (``state_dict``, beside the validation
state): a resumed step has what its budget had left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from ..config import SolverConfig
from . import budget, distributed
from .budget import MIN_STEP_EPOCHS
from .schedule import StepPlan
from .step_control import StepControl

CALIBRATION = 10  # iterations timed before the first fit
REFIT_SHARE = 0.05  # then a fit every 5 % of the step (at least every CALIBRATION iterations)


@dataclass
class StepBudget:
    """What a stage is given: ``seconds`` for the step (training and validation); ``refit(seconds per training
    image)``, when given, returns the step's seconds again once its speed is known; ``on_fitted(plan)`` hears
    each fitted plan. Filled in by the stage: ``report`` (seconds spent, images trained, validation seconds)."""

    seconds: float
    clock: Callable[[], float] = field(default=lambda: budget.now())
    refit: Callable[[float], float] | None = None
    on_fitted: Callable[[StepPlan], None] | None = None
    epochs: float = 1.0  # the estimate the step starts on, until its first fit
    started: float | None = None  # the clock when the step (or the command) began: its setup is spent too
    val_estimate: float = 0.0  # seconds of one validation before one is measured
    report: dict = field(default_factory=dict)


@dataclass
class BudgetState:
    seconds: float  # allotted to the step
    elapsed: float = 0.0  # spent so far (training, validation, checkpoints)
    train_seconds: float = 0.0  # timed training iterations
    train_iters: int = 0
    window_seconds: float = 0.0  # timed iterations since the last fit: the speed now
    window_iters: int = 0
    val_seconds: float = 0.0
    validations: int = 0
    fits: int = 0
    plan: dict | None = None  # the fitted plan: iterations, drops, warm-up


class BudgetControl:
    """``lr_at``, ``after_iteration`` (True: the step is over), ``state_dict`` and ``summary`` of a
    ``StepControl`` whose length is fitted to a ``StepBudget``."""

    def __init__(self, control: StepControl, budget: StepBudget, solver: SolverConfig, *, images_per_iteration: int,
                 plan_of: Callable[[int], StepPlan], on_change: Callable[[StepPlan], None] | None = None) -> None:
        self.control, self.budget, self.solver = control, budget, solver
        self.images_per_iteration = images_per_iteration
        self.plan_of, self.on_change = plan_of, on_change
        self.state = BudgetState(seconds=budget.seconds)
        self.origin = self.mark = budget.clock()
        self.timing_from = None  # the first iteration this process times
        self.next_fit = CALIBRATION

    @property
    def plan(self) -> StepPlan:
        return self.control.plan

    def lr_at(self, iteration: int) -> float:
        return self.control.lr_at(iteration)

    def begin(self, start: int) -> None:
        """The step (re)starts at iteration ``start``: the clock goes on from the elapsed seconds restored."""
        clock = self.budget.clock()
        fresh = self.state.elapsed == 0 and self.budget.started is not None
        self.origin, self.mark = self.budget.started if fresh else clock - self.state.elapsed, clock
        self.timing_from = start + 1
        self.next_fit = start + CALIBRATION if self.state.fits == 0 else start + 1 + CALIBRATION

    def after_iteration(self, done: int) -> bool:
        clock = self.budget.clock()
        if self.timing_from is not None and done > self.timing_from:
            s, took = self.state, clock - self.mark
            s.train_seconds, s.window_seconds = s.train_seconds + took, s.window_seconds + took
            s.train_iters, s.window_iters = s.train_iters + 1, s.window_iters + 1
        self.state.elapsed = clock - self.origin
        if done >= self.next_fit and done < self.plan.iterations:
            self._fit(done)  # before validating: a step fitted to end here validates here
        validating = self.control.due(done)
        stop = self.control.after_iteration(done)
        self.mark = self.budget.clock()
        if validating:
            self.state.val_seconds += self.mark - clock
            self.state.validations += 1
        self.state.elapsed = self.mark - self.origin
        return stop or done >= self.plan.iterations

    def _rate(self) -> float:
        """Seconds per training iteration: since the last fit when that has enough iterations (the speed of
        the machine now), else over the step so far."""
        s = self.state
        if s.window_iters >= CALIBRATION // 2:
            return s.window_seconds / s.window_iters
        return s.train_seconds / s.train_iters if s.train_iters else s.elapsed / max(1, self.next_fit)

    def _fit(self, done: int) -> None:
        decided = None
        if distributed.is_main():
            first = self.state.fits == 0
            if first and self.budget.refit is not None:
                self.state.seconds = self.budget.refit(self._rate() / self.images_per_iteration)
            decided = {"iterations": self._iterations(done), "seconds": self.state.seconds}
        decided = distributed.all_gather_objects(decided)[0]
        self.state.seconds = decided["seconds"]
        self.state.window_seconds, self.state.window_iters = 0.0, 0
        self._apply(done, decided["iterations"])
        self.state.fits += 1
        self.next_fit = done + max(CALIBRATION, round(REFIT_SHARE * self.plan.iterations))
        if self.budget.on_fitted is not None and self.state.fits == 1 and distributed.is_main():
            self.budget.on_fitted(self.plan)

    def _iterations(self, done: int) -> int:
        """The step's total iterations that fill the seconds left at the measured speed."""
        s, control = self.state, self.control
        val = s.val_seconds / s.validations if s.validations else self.budget.val_estimate
        per_iteration = self._rate() + (val / control.every if control.validating else 0.0)
        left = s.seconds - s.elapsed - (val if control.validating else 0.0)
        more = math.floor(left / per_iteration) if per_iteration > 0 else 0
        floor = max(1, math.ceil(MIN_STEP_EPOCHS * self.plan.iters_per_epoch))
        return max(done + max(more, 0), floor, done)

    def _apply(self, done: int, iterations: int) -> None:
        """The plan of ``iterations``: drops ahead moved, drops passed and the warm-up kept."""
        old, new = self.plan, self.plan_of(max(iterations, 1))
        drops = tuple(o if o <= done else min(max(n, done + 1), iterations) for o, n in zip(old.drops, new.drops))
        plan = replace(new, iterations=iterations, drops=drops, warmup=old.warmup, source="--time")
        self._set_plan(plan)

    def _set_plan(self, plan: StepPlan) -> None:
        validation = self.control.state_dict()
        self.control.plan = plan
        self.control.base = plan.schedule(self.solver)
        self.control.load_state_dict(validation)  # the drops brought forward, again on the new base
        self.state.plan = {"iterations": plan.iterations, "drops": list(plan.drops), "warmup": plan.warmup}
        if self.on_change is not None:
            self.on_change(plan)

    def state_dict(self) -> dict:
        return {**self.control.state_dict(), "budget": asdict(self.state)}

    def load_state_dict(self, state: dict | None) -> None:
        state = dict(state or {})
        saved = state.pop("budget", None)
        if saved is not None:
            self.state = BudgetState(**saved)
            if self.state.plan is not None:
                p = self.state.plan
                self._set_plan(replace(self.plan, iterations=p["iterations"], drops=tuple(p["drops"]),
                                       warmup=p["warmup"]))
        self.control.load_state_dict(state)

    def report(self) -> dict:
        """What the step spent and measured (the pipeline's costs; the checkpoint's provenance)."""
        s = self.state
        return {"seconds": round(s.seconds, 3), "elapsed": round(s.elapsed, 3), "iterations": self.plan.iterations,
                "train_seconds": round(s.train_seconds, 3), "train_images": s.train_iters * self.images_per_iteration,
                "val_seconds": round(s.val_seconds, 3), "validations": s.validations}

    def summary(self) -> dict | None:
        return self.control.summary()
