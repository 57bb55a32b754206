"""A time budget (``--time``): durations, the budget shared over the steps, a step's length fitted to its seconds
from the measured speed, and a resumed step keeping what its budget had left. Every clock here is a fake one
that advances by given amounts, so each figure is a hand computation, not a timing."""

from __future__ import annotations

import pytest
from fake_clock import FakeClock

from frcnn_cli.config import get_preset
from frcnn_cli.errors import ConfigError
from frcnn_cli.train.budget import Costs, StepDemand, fit_budget, parse_duration
from frcnn_cli.train.budget_control import BudgetControl, StepBudget
from frcnn_cli.train.run_budget import BudgetedStep, RunBudget
from frcnn_cli.train.schedule import plan_step
from frcnn_cli.train.step_control import StepControl

SOLVER = get_preset("tiny").solver  # 4 images per iteration, lr drop at 3/4, half an epoch of warm-up


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("90s", 90), ("2.5h", 9000), ("1h30m", 5400),
                                               ("1h 5min", 3900), (" 45S ", 45)])
def test_a_duration_is_a_number_with_a_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "fifteen minutes", "0m", "15m30", "m", "-5m"])
def test_a_duration_without_a_unit_or_of_no_time_is_refused_naming_the_form(text):
    with pytest.raises(ConfigError, match="15m"):
        parse_duration(text)


def test_the_steps_share_the_budget_in_proportion_to_their_configured_epochs_after_the_dumps():
    costs = Costs({"rpn": 0.05, "detector": 0.09, "dump": 0.035})
    steps = [StepDemand("rpn1", "rpn", 100, 4.0), StepDemand("props1", "dump", 50),
             StepDemand("det1", "detector", 100, 5.0)]
    shares, factor = fit_budget(steps, 300.0, costs)
    # the dump takes 50 x 0.035 = 1.75 s; an epoch costs 5 s (RPN) and 9 s (detector): 4 x 5 + 5 x 9 = 65 s
    assert factor == pytest.approx((300 - 1.75) / 65)
    assert [a.epochs for a in shares] == pytest.approx([4 * factor, 0.0, 5 * factor])
    assert [a.seconds for a in shares] == pytest.approx([20 * factor, 1.75, 45 * factor])
    assert sum(a.seconds for a in shares) == pytest.approx(300.0)


def test_a_cost_not_yet_measured_is_the_prior_ratio_times_what_was_measured():
    costs = Costs({"rpn": 0.1})
    assert costs.seconds_per_image("detector") == pytest.approx(0.18)  # the prior: 1.8 RPN images
    assert costs.seconds_per_image("rpn") == 0.1
    steps = [StepDemand("final", "joint", 200, 6.0, val_images=20, val_kind="val-map", val_every=2.0)]
    shares, _ = fit_budget(steps, 100.0, costs)
    # an epoch: 200 x 0.21 s of training + 20 x 0.13 s of validation every 2 epochs; one validation at the end
    per_epoch, last = 200 * 0.21 + 20 * 0.13 / 2, 20 * 0.13
    assert shares[0].epochs == pytest.approx((100 - last) / per_epoch)


def test_a_budget_too_short_keeps_a_quarter_epoch_per_step():
    shares, factor = fit_budget([StepDemand("rpn1", "rpn", 100, 4.0)], 0.5, Costs({"rpn": 0.05}))
    assert factor == pytest.approx(0.5 / 20) and shares[0].epochs == 0.25


def _control(clock: FakeClock, seconds: float, *, iterations: int = 40, validator=None, every: int = 0,
             budget: StepBudget | None = None) -> BudgetControl:
    """An RPN step of 100 images (50 iterations an epoch, flipped) on a budget of ``seconds``."""

    def plan_of(n: int):
        return plan_step(SOLVER, "rpn", images=100, flip=True, iters=n)

    control = StepControl(plan_of(iterations), SOLVER, validator=validator, every=every)
    budget = budget or StepBudget(seconds, clock=clock)
    return BudgetControl(control, budget, SOLVER, images_per_iteration=4, plan_of=plan_of)


def _run(control: BudgetControl, clock: FakeClock, step_seconds, start: int = 0, until: int | None = None) -> int:
    """The loop's calls: each iteration takes ``step_seconds(iteration)``; returns the iteration it stopped at."""
    control.begin(start)
    done = start
    while until is None or done < until:
        clock.advance(step_seconds(done))
        done += 1
        if control.after_iteration(done):
            return done
    return done


def test_a_step_is_fitted_to_its_seconds_after_ten_timed_iterations():
    clock = FakeClock()
    control = _control(clock, 60.0)
    assert control.plan.iterations == 40  # the estimate it starts on
    stopped = _run(control, clock, lambda it: 0.5)
    # after 10 iterations (5 s) at 0.5 s each, the 55 s left buy 110 more: 120 iterations, the drop at 90
    assert stopped == 120 and control.plan.iterations == 120 and control.plan.drops == (90,)
    assert clock.t - 1000.0 == pytest.approx(60.0)
    assert control.plan.source == "--time" and control.plan.epochs == pytest.approx(2.4)
    report = control.report()
    assert report["elapsed"] == pytest.approx(60.0) and report["train_images"] == 119 * 4  # the first one not timed


def test_a_step_that_slows_down_is_fitted_again_and_still_ends_on_time():
    clock = FakeClock()
    control = _control(clock, 60.0)
    stopped = _run(control, clock, lambda it: 0.5 if it < 40 else 1.0)  # the machine gets busy at iteration 40
    # 40 iterations take 20 s; the 40 s left at 1 s each are 40 more: the refits every 10 iterations find them
    assert stopped == 80 and clock.t - 1000.0 == pytest.approx(60.0)
    assert control.plan.drops[0] <= 80


def test_the_validations_due_are_paid_for_out_of_the_step_seconds():
    clock = FakeClock()

    class Validator:
        key = "val_map"

        def measure(self, model):
            clock.advance(3.0)  # each validation takes 3 s
            return 0.5, {"val_map": 0.5, "val_seconds": 3.0}

    control = _control(clock, 60.0, validator=Validator(), every=20,
                       budget=StepBudget(60.0, clock=clock, val_estimate=3.0))
    stopped = _run(control, clock, lambda it: 0.5)
    # at iteration 10 (5 s): an iteration costs 0.5 s + 3 s / 20 = 0.65 s, and the last validation 3 s:
    # (55 - 3) / 0.65 = 80 more; 90 iterations, validated at 20, 40, 60, 80 and 90
    assert stopped == 90 and control.report()["validations"] == 5
    assert clock.t - 1000.0 == pytest.approx(90 * 0.5 + 5 * 3.0)


def test_a_resumed_step_keeps_the_seconds_its_budget_had_left():
    clock = FakeClock()
    whole = _control(clock, 60.0)
    assert _run(whole, clock, lambda it: 0.5) == 120

    clock = FakeClock()
    first = _control(clock, 60.0)
    assert _run(first, clock, lambda it: 0.5, until=50) == 50
    state = first.state_dict()  # what the resumable checkpoint holds
    later = FakeClock(start=50_000.0)  # another process, hours later
    resumed = _control(later, 60.0, budget=StepBudget(999.0, clock=later))  # a fresh share is not what counts
    resumed.load_state_dict(state)
    assert resumed.state.seconds == 60.0 and resumed.state.elapsed == pytest.approx(25.0)
    assert resumed.plan.iterations == 120 and resumed.plan.drops == (90,)
    assert _run(resumed, later, lambda it: 0.5, start=50) == 120
    assert later.t - 50_000.0 == pytest.approx(35.0)  # 60 s in all: 25 before the kill, 35 after


def test_the_run_budget_shares_what_is_left_over_the_steps_left_and_keeps_it_across_a_resume():
    steps = []
    for name, kind, frozen in (("rpn1", "rpn", False), ("props1", "dump", False), ("det1", "detector", False),
                               ("rpn2", "rpn", True), ("props2", "dump", False), ("final", "detector", True)):
        plan = None if kind == "dump" else plan_step(SOLVER, kind, images=100, flip=True)
        steps.append(BudgetedStep(name, kind, frozen, plan))
    budget = RunBudget(600.0, costs=Costs({"rpn": 0.05}), dump_images=100)
    shares = budget.share(steps)
    assert sum(a.seconds for a in shares) == pytest.approx(600.0)
    # the preset's epochs: 4 per RPN step, 5 per detector step, scaled by one factor
    epochs = {a.name: a.epochs for a in shares}
    assert epochs["det1"] / epochs["rpn1"] == pytest.approx(5 / 4)
    assert epochs["final"] / epochs["rpn2"] == pytest.approx(5 / 4)
    assert epochs["rpn1"] == pytest.approx(epochs["rpn2"])
    budget.trained(steps[0], {"elapsed": 100.0, "train_seconds": 80.0, "train_images": 1000})
    assert budget.costs.measured["rpn"] == pytest.approx(0.08)
    again = RunBudget(600.0)
    again.restore(budget.to_state())  # state.json after step 1
    assert again.spent == 100.0 and again.costs.measured == {"rpn": 0.08}
    assert sum(a.seconds for a in again.share(steps[1:])) == pytest.approx(500.0)
