"""A time budget (``--time 15m``): the whole run's schedule fitted to wall-clock seconds.

The steps share the budget in proportion to the work the preset's schedule gives them: step ``i`` gets
``f × E_i`` epochs, where ``E_i`` is its configured epochs (``solver.rpn_epochs`` …) and the factor ``f`` is
the same for every step, chosen so that the steps' training, their validations and the proposal dumps
between them fill the budget. What an epoch costs comes from ``Costs``: seconds per image of each kind of
work, measured as the run goes (the first iterations of every step, each validation, each dump) and, for work
not yet measured, estimated from what was measured by the relative costs of ``PRIOR_COSTS`` (the ``tiny``
preset's on a CPU, docs/demo.md: an RPN step's image is the unit).

At each step's start the remaining budget is shared again over the steps left (``fit_budget``), with every
cost measured so far; inside a step ``budget_control.BudgetControl`` turns the step's seconds into iterations
from its measured speed and fits them again as it goes. A resumed run keeps the remaining budget: the seconds
spent are kept in ``state.json`` (finished steps) and in a step's resumable state (the unfinished one).
Shapes: none (seconds and counts).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field

from ..errors import ConfigError

# seconds per image relative to an RPN step's (tiny on one core: 0.21 s per iteration of 4 images for the RPN
# with its backbone learning, 0.38 s for Fast R-CNN, 0.08 / 0.12 s with the shared convs frozen, a proposal
# dump 35 ms per image, a validation's test-time pass about 70 ms per image with detections)
PRIOR_COSTS = {"rpn": 1.0, "detector": 1.8, "rpn-shared-frozen": 0.4, "detector-shared-frozen": 0.6,
               "joint": 2.1, "dump": 0.7, "val-recall": 0.7, "val-map": 1.3}
PRIOR_RPN_SECONDS = 0.0525  # an RPN step's image, when nothing of the run is measured yet
MIN_STEP_EPOCHS = 0.25  # no step is fitted shorter (a budget too short for it is reported, not obeyed)

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|min|m|s)", re.IGNORECASE)
_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}


def now() -> float:
    """The budget's clock (seconds, monotonic): every budget reads it through here (tests replace it). With the
    environment variable ``FRCNN_BUDGET_CLOCK=cpu`` it is this process's CPU time instead: a benchmark on a
    shared machine then gets what a quiet one does in that wall time (``benchmarks/learning_vs_torchvision.py
    --clock cpu``); not for everyday use (the loader workers' time is not counted)."""
    if os.environ.get("FRCNN_BUDGET_CLOCK") == "cpu":
        return time.process_time()
    return time.monotonic()


def process_start() -> float:
    """The budget clock's reading when this process started (Linux: from /proc, so the interpreter's start-up
    and the imports are spent too), else now."""
    if os.environ.get("FRCNN_BUDGET_CLOCK") == "cpu":
        return 0.0
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        age = uptime - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        age = 0.0
    return now() - max(0.0, min(age, 3600.0))


def budget_seconds(budget: str | float | None, *, iters: int | None, epochs: float | None) -> float | None:
    """``--time`` in seconds: a duration (``"15m"``) or a number of seconds; None when not given. Refused with
    ``--iters`` or ``--epochs`` (each fixes the length the budget would fit)."""
    if budget is None:
        return None
    if iters is not None or epochs is not None:
        raise ConfigError("give one of --time, --epochs or --iters: --time fits every step's length to the budget, "
                          "--epochs and --iters fix it")
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if not math.isfinite(budget) or budget <= 0:
            raise ConfigError(f"--time {budget!r} is no time at all; give a positive number of seconds or 15m")
        return float(budget)
    return parse_duration(budget)


def parse_duration(text: str) -> float:
    """``"15m"``, ``"1h30m"``, ``"90s"``, ``"2.5h"``, ``"1h 5min"`` -> seconds (> 0)."""
    cleaned = str(text).strip()
    parts = list(_PART.finditer(cleaned))
    if not parts or "".join(p.group(0) for p in parts).replace(" ", "") != cleaned.replace(" ", ""):
        raise ConfigError(f"--time {text!r} is not a duration; give a number with a unit: 15m, 90s, 2h, 1h30m")
    seconds = sum(float(p.group(1)) * _UNITS[p.group(2).lower()] for p in parts)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"--time {text!r} is no time at all; give a positive duration such as 15m")
    return seconds


def format_duration(seconds: float) -> str:
    """``900`` -> ``"15 min"``; ``75`` -> ``"75 s"``; ``5400`` -> ``"1.5 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min".replace(".0 min", " min")
    return f"{seconds / 3600:.1f} h"


@dataclass
class Costs:
    """Seconds per image of each kind of work (``PRIOR_COSTS``' keys): measured, or estimated from those that
    are by the relative ``PRIOR_COSTS``."""

    measured: dict[str, float] = field(default_factory=dict)

    def seconds_per_image(self, kind: str) -> float:
        if kind in self.measured:
            return self.measured[kind]
        return PRIOR_COSTS[kind] * self.unit()

    def unit(self) -> float:
        """Seconds of the prior's unit (an RPN step's image) on this machine: the median over what is
        measured of measured / prior, else ``PRIOR_RPN_SECONDS``."""
        ratios = sorted(v / PRIOR_COSTS[k] for k, v in self.measured.items() if k in PRIOR_COSTS and v > 0)
        if not ratios:
            return PRIOR_RPN_SECONDS
        return ratios[len(ratios) // 2]

    def measure(self, kind: str, seconds: float, images: int) -> None:
        if images > 0 and seconds > 0:
            self.measured[kind] = seconds / images

    def to_dict(self) -> dict:
        return {k: round(v, 6) for k, v in self.measured.items()}


@dataclass(frozen=True)
class StepDemand:
    """One step still to run: a training step (``epochs`` > 0: its configured epochs, the share weight) or a
    proposal dump (``epochs`` 0, ``images`` dumped)."""

    name: str
    kind: str  # a Costs key: "rpn", "detector", "rpn-shared-frozen", "detector-shared-frozen", "joint", "dump"
    images: int  # a training step: entries per epoch (images, and their mirror images); a dump: images
    epochs: float = 0.0
    val_images: int = 0  # validation images, validated every val_every epochs
    val_kind: str = "val-map"
    val_every: float = 1.0

    def seconds_per_epoch(self, costs: Costs) -> float:
        train = self.images * costs.seconds_per_image(self.kind)
        val = self.val_images * costs.seconds_per_image(self.val_kind) / self.val_every if self.val_images else 0.0
        return train + val

    def fixed_seconds(self, costs: Costs) -> float:
        """A dump's seconds (a training step's: the one validation at its end)."""
        if self.epochs <= 0:
            return self.images * costs.seconds_per_image("dump")
        return self.val_images * costs.seconds_per_image(self.val_kind) if self.val_images else 0.0


@dataclass(frozen=True)
class Allotment:
    """What ``fit_budget`` gives a step: seconds, and for a training step the epochs they buy."""

    name: str
    seconds: float
    epochs: float


def fit_budget(steps: list[StepDemand], seconds: float, costs: Costs) -> tuple[list[Allotment], float]:
    """Share ``seconds`` over ``steps`` (see the module docstring); returns each step's allotment and the
    common factor ``f`` on the configured epochs (below ``MIN_STEP_EPOCHS`` / E a step keeps that minimum and
    the total exceeds ``seconds``: the caller says so)."""
    training = [s for s in steps if s.epochs > 0]
    fixed = sum(s.fixed_seconds(costs) for s in steps)
    weight = sum(s.epochs * s.seconds_per_epoch(costs) for s in training)
    factor = max(seconds - fixed, 0.0) / weight if weight > 0 else 0.0
    out = []
    for step in steps:
        if step.epochs <= 0:
            out.append(Allotment(step.name, step.fixed_seconds(costs), 0.0))
            continue
        epochs = max(factor * step.epochs, MIN_STEP_EPOCHS)
        out.append(Allotment(step.name, epochs * step.seconds_per_epoch(costs) + step.fixed_seconds(costs), epochs))
    return out, factor
