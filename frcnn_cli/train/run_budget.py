"""A whole run under ``--time`` (``frcnn train``): the budget shared over the steps left, step by step.

``RunBudget`` keeps the seconds spent (by finished steps and dumps; written to ``state.json`` after each, so
a resumed run goes on with what is left) and the costs measured (``budget.Costs``). Before each training step
it shares what is left over the steps still to run (``budget.fit_budget``) and hands the step a
``StepBudget``; once the step's first iterations are timed, the step asks again (``refit``) with its own
measured speed, and the first time that happens the plan of every step is told (``on_plan``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from . import budget
from .budget import Allotment, Costs, StepDemand, fit_budget, format_duration
from .budget_control import StepBudget
from .schedule import StepPlan
from .steps import stage_spec
from .validation import default_val_every


@dataclass
class BudgetedStep:
    """One step of the run as the budget sees it: its name, kind ("dump" or a training kind), whether its
    shared convs are frozen, and for a training step its plan at the preset's epochs."""

    name: str
    kind: str
    freeze_shared: bool = False
    plan: StepPlan | None = None


@dataclass
class RunBudget:
    seconds: float
    spent: float = 0.0
    costs: Costs = field(default_factory=Costs)
    val_images: int = 0
    val_every: float | None = None  # --val-every (None: default_val_every)
    clock: Callable[[], float] = field(default=lambda: budget.now())
    on_plan: Callable[[list[tuple[str, StepPlan]]], None] | None = None
    on_note: Callable[[str], None] | None = None
    dump_images: int = 0
    told: bool = False  # the plan of every step was told once

    # ----------------------------------------------------------------------------------------------
    # state.json

    def to_state(self) -> dict:
        return {"seconds": self.seconds, "spent": round(self.spent, 3), "costs": self.costs.to_dict()}

    def restore(self, state: dict | None) -> None:
        if state:
            self.spent = float(state.get("spent", 0.0))
            self.costs = Costs(dict(state.get("costs") or {}))

    # ----------------------------------------------------------------------------------------------
    # sharing

    def demand(self, step: BudgetedStep) -> StepDemand:
        if step.kind == "dump":
            return StepDemand(step.name, "dump", self.dump_images)
        spec = stage_spec(step.kind, freeze_shared=step.freeze_shared)
        every = self.val_every or default_val_every(self.val_images, step.plan.entries, spec)
        return StepDemand(step.name, spec.label, step.plan.entries, step.plan.epochs, val_images=self.val_images,
                          val_kind="val-recall" if spec.kind == "rpn" else "val-map", val_every=every)

    def share(self, left: Sequence[BudgetedStep]) -> list[Allotment]:
        shares, _ = fit_budget([self.demand(s) for s in left], self.seconds - self.spent, self.costs)
        return shares

    def step_budget(self, left: Sequence[BudgetedStep]) -> StepBudget:
        """The ``StepBudget`` of ``left[0]``, the training step about to run (or to resume)."""
        demand = self.demand(left[0])
        first = self.share(left)[0]

        def refit(seconds_per_image: float) -> float:
            self.costs.measured[demand.kind] = seconds_per_image
            return self.share(left)[0].seconds

        def on_fitted(plan: StepPlan) -> None:
            self._tell(left, plan)

        val = demand.val_images * self.costs.seconds_per_image(demand.val_kind) if demand.val_images else 0.0
        return StepBudget(seconds=first.seconds, clock=self.clock, refit=refit, on_fitted=on_fitted,
                          epochs=first.epochs, val_estimate=val, started=self.clock())

    def _tell(self, left: Sequence[BudgetedStep], fitted: StepPlan) -> None:
        """The plan of every step left (the first told in full; after that one line per step)."""
        shares = {a.name: a for a in self.share(left)}
        rows = [(left[0].name, fitted)]
        for step in left[1:]:
            if step.kind != "dump":
                iterations = max(1, round(shares[step.name].epochs * step.plan.iters_per_epoch))
                rows.append((step.name, _scaled(step.plan, iterations)))
        if not self.told and self.on_plan is not None:
            self.on_plan(rows)
        elif self.on_note is not None:
            left_s = self.seconds - self.spent
            self.on_note(f"{left[0].name}: fitted to the {format_duration(left_s)} left: {fitted.epochs:.2f} epochs, "
                         f"{fitted.iterations:,} iterations")
        self.told = True

    # ----------------------------------------------------------------------------------------------
    # bookkeeping

    def trained(self, step: BudgetedStep, report: dict) -> None:
        """A training step ended: its seconds spent and its measured costs."""
        demand = self.demand(step)
        self.spent += report.get("elapsed", 0.0)
        self.costs.measure(demand.kind, report.get("train_seconds", 0.0), report.get("train_images", 0))
        validations = report.get("validations", 0)
        self.costs.measure(demand.val_kind, report.get("val_seconds", 0.0), validations * demand.val_images)

    def dumped(self, seconds: float, images: int) -> None:
        self.spent += seconds
        self.costs.measure("dump", seconds, images)


def _scaled(plan: StepPlan, iterations: int) -> StepPlan:
    """``plan`` at another length: its drops at the same fractions, source "--time"."""
    drops = tuple(max(1, round(d * iterations / plan.iterations)) for d in plan.drops)
    return replace(plan, iterations=iterations, drops=drops, warmup=min(plan.warmup, max(1, iterations // 2)),
                   source="--time")
