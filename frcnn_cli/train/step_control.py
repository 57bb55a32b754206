"""A step's control: the lr of every iteration, and with validation when to validate, the best so far and
early stopping.

Every ``every`` iterations and at the last one, the ``Validator`` measures the step's figure (rank 0 only;
the other ranks wait and receive the outcome, so every process stops and drops the lr at the same iteration).
A figure at least as good as any before is the best (on a tie the later, more trained checkpoint is kept:
a metric stuck at 0.0 must not leave the least-trained model as the best): ``on_best`` writes the best
checkpoint. Whether any validation beat the first one is kept too (``improved``), so that the summary can
say when validation never improved. With ``patience`` K,
K validations in a row that do not beat the reference figure by ``MIN_DELTA`` (half a point of mAP or
recall; the reference is the figure of the last validation that did) bring the next lr drop forward to
that iteration (as ReduceLROnPlateau does, once per drop of the plan); when no drop is left, the step
stops there. The best
figure, its iteration, the count of validations without improvement and the drops brought forward are the
resumable state (``state_dict``): the lr stays a pure function of the iteration and that state, so a run
killed and resumed validates, drops and stops at the same iterations as one that was not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..config import SolverConfig
from . import distributed
from .schedule import Schedule, StepPlan
from .validation import Validator

MIN_DELTA = 0.005  # what counts as progress for the patience (any gain makes a new best checkpoint)


@dataclass
class ValidationState:
    best: float | None = None
    best_iteration: int | None = None
    reference: float | None = None  # the figure of the last validation that made progress (by MIN_DELTA)
    bad: int = 0  # validations since then
    drops: list[int] = field(default_factory=list)  # iterations where a drop was brought forward
    stopped: int | None = None  # the iteration early stopping ended the step at
    first: float | None = None  # the first validation's figure
    improved: bool = False  # a later validation beat the first one


class StepControl:
    """``lr_at(iteration)`` and the loop's ``after_iteration(done)`` (True: stop the step now)."""

    def __init__(self, plan: StepPlan, solver: SolverConfig, *, validator: Validator | None = None,
                 validating: bool | None = None, model=None, every: int = 0, patience: int | None = None,
                 on_best: Callable[[int, dict], None] | None = None,
                 on_row: Callable[[dict], None] | None = None) -> None:
        self.plan = plan
        self.base = plan.schedule(solver)
        self.schedule: Schedule = self.base
        self.validator, self.model = validator, model
        # under DDP only rank 0 holds the validator; the other ranks validate (wait) at the same iterations
        self.validating = validator is not None if validating is None else validating
        self.every, self.patience = max(1, every), patience
        self.on_best, self.on_row = on_best, on_row
        self.state = ValidationState()

    def lr_at(self, iteration: int) -> float:
        return self.schedule.lr_at(iteration)

    def due(self, done: int) -> bool:
        return self.validating and (done % self.every == 0 or done == self.plan.iterations)

    def after_iteration(self, done: int) -> bool:
        if not self.due(done):
            return False
        if distributed.is_main():
            self._validate(done)
        self.load_state_dict(distributed.all_gather_objects(self.state_dict())[0])
        return self.state.stopped is not None

    def _row(self, done: int, **values) -> dict:
        return {"iteration": done, "epoch": round(self.plan.epoch_of(done), 3), **values}

    def _validate(self, done: int) -> None:
        figure, values = self.validator.measure(self.model)
        s = self.state
        if s.first is None:
            s.first = figure
        s.improved = s.improved or figure > s.first
        best = s.best is None or figure >= s.best  # a tie keeps the later checkpoint
        row = self._row(done, **values, best=best)
        if best:
            s.best, s.best_iteration = figure, done
            if self.on_best is not None:
                self.on_best(done, row)
        if s.reference is None or figure > s.reference + MIN_DELTA:
            s.reference, s.bad = figure, 0
        else:
            s.bad += 1
        self._emit(row)
        if self.patience is None or s.bad < self.patience or done >= self.plan.iterations:
            return
        if self.schedule.drops_left(done) > 0:
            s.drops.append(done)
            s.bad = 0
            self.schedule = self.schedule.with_drop_at(done)
            self._emit(self._row(done, event="lr_drop", patience=self.patience, lr=self.schedule.lr_at(done)))
        else:
            s.stopped = done
            self._emit(self._row(done, event="early_stop", patience=self.patience, best_iteration=s.best_iteration,
                                 best_epoch=round(self.plan.epoch_of(s.best_iteration), 3)))

    def _emit(self, row: dict) -> None:
        if self.on_row is not None:
            self.on_row(row)

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict | None) -> None:
        self.state = ValidationState(**(state or {}))
        self.state.drops = list(self.state.drops)
        self.schedule = self.base
        for it in self.state.drops:
            self.schedule = self.schedule.with_drop_at(it)

    def summary(self) -> dict | None:
        """The best figure and where it was reached, whether any validation beat the first (``improved``), and
        where the step stopped early (None without val)."""
        if self.validator is None or self.state.best is None:
            return None
        s = self.state
        return {"metric": self.validator.key, "best": s.best, "best_iteration": s.best_iteration,
                "best_epoch": round(self.plan.epoch_of(s.best_iteration), 3), "first": s.first,
                "improved": s.improved, "stopped_early_at": s.stopped, "lr_drops_brought_forward": list(s.drops)}
