"""``--time`` from the command line: the run fitted to the budget, the plan it prints, and a killed run resumed
with the budget it had left. Time is a fake clock that advances half a second per training iteration (the
model's loss) and two seconds per validation: every figure below is a hand computation. The train set is 8
images of 64 x 48 px, flipped: 4 iterations of 4 images an epoch."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CLI
from fake_clock import FakeClock

from frcnn_cli.model.checkpoint import read_checkpoint
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.train import budget, validation

pytestmark = pytest.mark.usefixtures("one_thread")
ITERATION, VALIDATION = 0.5, 2.0  # fake seconds


def same_weights(a, b) -> bool:
    wa, wb = (read_checkpoint(p)["parts"] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[p][k], wb[p][k]) for p in wa for k in wa[p])


@pytest.fixture()
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(budget, "now", fake)
    monkeypatch.setattr(budget, "process_start", fake)  # the command starts now: pytest's own age is not spent
    losses = FasterRCNN.losses

    def timed_losses(self, *args, **kwargs):
        fake.advance(ITERATION)
        return losses(self, *args, **kwargs)

    def measure(self, model):
        fake.advance(VALIDATION)
        return 0.5, {"val_map" if self.kind == "map" else "val_recall": 0.5 if self.kind == "map" else
                     {"0.5": 0.5, "0.7": 0.5}, "val_seconds": VALIDATION}

    monkeypatch.setattr(FasterRCNN, "losses", timed_losses)
    monkeypatch.setattr(validation.Validator, "measure", measure)
    return fake


def test_joint_training_is_fitted_to_the_budget_and_ends_on_time(synth_set, frcnn, clock, tmp_path):
    result = frcnn("train", "--data", synth_set[0], "--workdir", tmp_path, "--mode", "joint", "--time", "10s",
                   *TINY_CLI)
    # after 10 iterations (5 s), the 5 s left buy 10 more: 20 iterations, 5 epochs, the lr drop at 3/4
    final = read_checkpoint(tmp_path / "final.pt")
    assert final["train_state"]["iteration"] == 20
    assert final["provenance"]["plan"]["iterations"] == 20 and final["provenance"]["plan"]["drops"] == [15]
    assert final["provenance"]["plan"]["source"] == "--time"
    assert final["provenance"]["budget"]["elapsed"] == pytest.approx(10.0)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["time"] == 10.0 and state["budget"]["spent"] == pytest.approx(10.0)
    said = " ".join(result.stderr.split())
    assert "--time 10 s: every step's length is fitted to the budget" in said
    assert "training plan" in said and "5.00" in said and "--time" in said  # the fitted plan, once timed


def test_a_killed_budgeted_run_resumes_with_the_seconds_it_had_left(synth_set, frcnn, clock, kill_after_saving,
                                                                     tmp_path):
    args = ["--data", synth_set[0], "--mode", "joint", "--time", "10s", "--checkpoint-every", 4, *TINY_CLI]
    frcnn("train", "--workdir", tmp_path / "whole", *args)
    kill_after_saving(12)
    with pytest.raises(BaseException, match="killed after writing"):
        frcnn("train", "--workdir", tmp_path / "cut", *args)
    kept = read_checkpoint(tmp_path / "cut" / "final.pt.resume.pt")["train_state"]["control"]["budget"]
    assert kept["elapsed"] == pytest.approx(6.0) and kept["seconds"] == pytest.approx(10.0)
    clock.advance(3600.0)  # the rerun an hour later: the hour is not spent on the budget
    frcnn("train", "--workdir", tmp_path / "cut", *args)
    resumed = read_checkpoint(tmp_path / "cut" / "final.pt")
    assert resumed["train_state"]["iteration"] == 20
    assert resumed["provenance"]["budget"]["elapsed"] == pytest.approx(10.0)
    assert same_weights(tmp_path / "whole" / "final.pt", tmp_path / "cut" / "final.pt")


def test_the_four_steps_share_the_budget_and_the_plan_says_each_ones_epochs(synth_set, frcnn, clock, tmp_path):
    result = frcnn("train", "--data", synth_set[0], "--workdir", tmp_path, "--mode", "alternating", "--time",
                   "30s", *TINY_CLI)
    said = result.stderr
    table = said[said.index("training plan"):]
    assert all(f"│ {name}" in table for name in ("rpn1", "det1", "rpn2", "final"))
    used = {name: read_checkpoint(tmp_path / f"{name}.pt")["provenance"] for name in ("rpn1", "det1", "rpn2", "final")}
    assert all(p["plan"]["source"] == "--time" for p in used.values())
    spent = sum(p["budget"]["elapsed"] for p in used.values())  # the dumps take no fake time
    assert spent == pytest.approx(30.0, abs=4 * ITERATION)
    assert json.loads((tmp_path / "state.json").read_text())["budget"]["spent"] == pytest.approx(spent)
    # the step-1 figures told the budget what an RPN image costs: 0.5 s for 4 images
    assert json.loads((tmp_path / "state.json").read_text())["budget"]["costs"]["rpn"] == pytest.approx(0.125)


def test_time_with_epochs_or_iters_and_a_duration_without_a_unit_are_refused(synth_set, frcnn, tmp_path,
                                                                            assert_clean_error):
    base = ["train", "--data", synth_set[0], "--workdir", tmp_path / "run", *TINY_CLI]
    assert_clean_error(frcnn(*base, "--time", "15m", "--epochs", 3, ok=False),
                       "give one of --time, --epochs or --iters")
    assert_clean_error(frcnn(*base, "--time", "15", ok=False), "--time '15' is not a duration", "15m")
    rpn = ["train-rpn", "--data", synth_set[0], "--out", tmp_path / "rpn.pt", "--init", "none", *TINY_CLI]
    assert_clean_error(frcnn(*rpn, "--time", "2m", "--iters", 3, ok=False), "give one of --time")
    assert not (tmp_path / "run").exists()
