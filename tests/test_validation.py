"""Validation during training (``--val``): figures in metrics.jsonl, the best checkpoint, early stopping
(``--patience``), and all of it resumed exactly after a kill. The train set is 12 images, flipped: 6 iterations
of 4 images an epoch."""

from __future__ import annotations

import json

import pytest
import torch

from frcnn_cli.data.manifest import read_manifest, write_manifest
from frcnn_cli.model.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCH = 6  # iterations


def rows(metrics, key: str) -> list[dict]:
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if key in r]


def weights(path) -> dict:
    return {f"{p}.{k}": v for p, sd in read_checkpoint(path)["parts"].items() for k, v in sd.items()}


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_detector_step_validates_voc_map_each_epoch_and_keeps_the_best(four_steps, frcnn, train_options,
                                                                        train_set, tmp_path):
    out = tmp_path / "det.pt"
    result = frcnn("train-detector", "--data", four_steps["data"], "--proposals", four_steps["props1"], "--init",
                   "none", "--epochs", 2, "--val", train_set[1], "--val-every", 1, "--out", out, *train_options())
    found = rows(tmp_path / "metrics.jsonl", "val_map")
    assert [(r["stage"], r["iteration"], r["epoch"]) for r in found] == [("detector", 6, 1.0), ("detector", 12, 2.0)]
    assert all(0.0 <= r["val_map"] <= 1.0 and r["val_seconds"] >= 0 for r in found)
    best = read_checkpoint(tmp_path / "det.best.pt")
    best_row = max(found, key=lambda r: (r["val_map"], r["iteration"]))  # a tie keeps the later one
    assert best["provenance"]["best"]["iteration"] == best_row["iteration"]
    assert best["provenance"]["best"]["val_map"] == best_row["val_map"]
    assert read_checkpoint(out)["provenance"]["validation"]["best_iteration"] == best_row["iteration"]
    said = " ".join(result.stderr.split())
    assert "val_map=" in said and "det.best.pt is the best checkpoint" in said


def test_an_rpn_step_validates_proposal_recall_at_0_5_and_0_7(train_set, frcnn, train_options, tmp_path):
    frcnn("train-rpn", "--data", train_set[0], "--init", "none", "--epochs", 1, "--val", train_set[1],
          "--out", tmp_path / "rpn.pt", *train_options())
    (row,) = rows(tmp_path / "metrics.jsonl", "val_recall")
    assert (row["iteration"], row["epoch"], sorted(row["val_recall"])) == (EPOCH, 1.0, ["0.5", "0.7"])
    assert 0.0 <= row["val_recall"]["0.7"] <= row["val_recall"]["0.5"] <= 1.0
    assert read_checkpoint(tmp_path / "rpn.best.pt")["stage"] == "rpn"


def test_the_best_checkpoint_is_not_the_last_when_the_last_validation_is_worse(train_set, frcnn, train_options,
                                                                                figures, tmp_path):
    figures([0.2, 0.6, 0.1])
    frcnn("train-rpn", "--data", train_set[0], "--init", "none", "--epochs", 3, "--val", train_set[1],
          "--val-every", 1, "--out", tmp_path / "rpn.pt", *train_options())
    assert [r["best"] for r in rows(tmp_path / "metrics.jsonl", "val_recall")] == [True, True, False]
    best = read_checkpoint(tmp_path / "rpn.best.pt")
    assert best["provenance"]["best"]["iteration"] == 2 * EPOCH and best["train_state"]["iteration"] == 2 * EPOCH
    assert not same_weights(tmp_path / "rpn.best.pt", tmp_path / "rpn.pt")
    # the best is a state of the run, which a rerun reproduces exactly
    figures([0.2, 0.6, 0.1])
    frcnn("train-rpn", "--data", train_set[0], "--init", "none", "--epochs", 3, "--val", train_set[1],
          "--val-every", 1, "--out", tmp_path / "again" / "rpn.pt", *train_options())
    assert same_weights(tmp_path / "rpn.best.pt", tmp_path / "again" / "rpn.best.pt")


def test_patience_brings_the_lr_drop_forward_then_stops_the_step(train_set, frcnn, train_options, figures, tmp_path):
    figures([0.5, 0.5, 0.4, 0.6])  # epochs 1-4 of 6: the plan drops the lr at 0.75 (iteration 27 of 36)
    out = tmp_path / "rpn.pt"
    result = frcnn("train-rpn", "--data", train_set[0], "--init", "none", "--epochs", 6, "--val", train_set[1],
                   "--val-every", 1, "--patience", 1, "--out", out, *train_options())
    metrics = tmp_path / "metrics.jsonl"
    events = [(r["event"], r["iteration"]) for r in rows(metrics, "event")]
    assert events == [("lr_drop", 2 * EPOCH), ("early_stop", 3 * EPOCH)]
    lrs = {r["iteration"]: r["lr"] for r in rows(metrics, "loss")}
    assert lrs[2 * EPOCH] == pytest.approx(0.01) and lrs[2 * EPOCH + 1] == pytest.approx(0.001)
    assert max(lrs) == 3 * EPOCH  # nothing trained after the stop
    final = read_checkpoint(out)
    assert final["train_state"] == {"iteration": 18, "total": 36, "finished": True, "stopped_early": True}
    assert final["provenance"]["validation"]["stopped_early_at"] == 18
    said = " ".join(result.stderr.split())
    assert "lr dropped early" in said and "early stop at epoch 3" in said


def test_a_killed_run_resumes_with_its_best_so_far_and_patience(train_set, frcnn, train_options, kill_after_saving,
                                                                tmp_path):
    args = ["train-rpn", "--data", train_set[0], "--init", "none", "--epochs", 5, "--val", train_set[1],
            "--val-every", 1, "--patience", 1, "--checkpoint-every", 9, "--seed", 5, *train_options()]
    frcnn(*args, "--out", tmp_path / "whole" / "rpn.pt")
    cut = tmp_path / "cut" / "rpn.pt"
    kill_after_saving(18)
    with pytest.raises(BaseException, match="killed after writing"):
        frcnn(*args, "--out", cut)
    state = read_checkpoint(cut.with_name("rpn.pt.resume.pt"))["train_state"]["control"]
    assert state["best_iteration"] is not None
    frcnn(*args, "--out", cut, "--resume")
    assert same_weights(tmp_path / "whole" / "rpn.pt", cut)
    assert same_weights(tmp_path / "whole" / "rpn.best.pt", tmp_path / "cut" / "rpn.best.pt")
    whole = [{k: v for k, v in r.items() if k != "val_seconds"}
             for r in rows(tmp_path / "whole" / "metrics.jsonl", "epoch")]
    resumed = [{k: v for k, v in r.items() if k != "val_seconds"}
               for r in rows(tmp_path / "cut" / "metrics.jsonl", "epoch")]
    assert resumed[-len(whole):] == whole  # the validations, drops and stop of the uninterrupted run
    assert read_checkpoint(cut)["provenance"]["validation"] == read_checkpoint(
        tmp_path / "whole" / "rpn.pt")["provenance"]["validation"]


def test_a_val_manifest_of_other_classes_is_refused_naming_both_files(train_set, frcnn, train_options, tmp_path,
                                                                      assert_clean_error):
    other = read_manifest(train_set[1])
    other.classes = list(reversed(other.classes))
    val = tmp_path / "val.json"
    write_manifest(val, other)
    out = tmp_path / "out"
    result = frcnn("train-rpn", "--data", train_set[0], "--init", "none", "--val", val, "--out", out / "rpn.pt",
                   *train_options(), ok=False)
    assert_clean_error(result, str(val), str(train_set[0]), "same classes", out_dir=out)
    result = frcnn("train", "--data", train_set[0], "--workdir", out, "--val", val, *train_options(), ok=False)
    assert_clean_error(result, str(val), str(train_set[0]), out_dir=out)


def test_frcnn_train_with_val_makes_final_pt_the_best_unified_detector(train_set, frcnn, train_options, figures,
                                                                       tmp_path):
    figures([0.3, 0.2] * 2 + [0.3, 0.5] + [0.7, 0.4])  # per step, epochs 1 and 2: rpn1, det1, rpn2, final
    result = frcnn("train", "--data", train_set[0], "--workdir", tmp_path, "--epochs", 2, "--val", train_set[1],
                   "--val-every", 1, *train_options())
    for step, best_iteration in (("rpn1", EPOCH), ("det1", EPOCH), ("rpn2", 2 * EPOCH), ("final", EPOCH)):
        assert read_checkpoint(tmp_path / f"{step}.pt")["provenance"]["best"]["iteration"] == best_iteration
        assert read_checkpoint(tmp_path / f"{step}.last.pt")["train_state"]["iteration"] == 2 * EPOCH
    assert read_checkpoint(tmp_path / "det1.pt")["provenance"]["init"] == "none"
    assert read_checkpoint(tmp_path / "rpn2.pt")["provenance"]["init"] == str(tmp_path / "det1.pt")  # the best
    assert "final.pt is the best checkpoint: val_map=0.7 at epoch 1, iteration 6" in " ".join(result.stderr.split())


def test_a_gain_under_half_a_point_makes_a_new_best_but_not_progress_for_the_patience():
    from frcnn_cli.config import get_preset
    from frcnn_cli.train.schedule import plan_step
    from frcnn_cli.train.step_control import StepControl

    class Fake:
        key = "val_map"

        def __init__(self, values):
            self.values = list(values)

        def measure(self, model):
            return self.values.pop(0), {"val_map": 0.0, "val_seconds": 0.0}

    plan = plan_step(get_preset("tiny").solver, "detector", images=12, flip=True, epochs=8)  # 6 an epoch
    best, rows = [], []
    control = StepControl(plan, get_preset("tiny").solver, validator=Fake([0.5, 0.503, 0.504, 0.6]), every=EPOCH,
                          patience=2, on_best=lambda done, row: best.append(done), on_row=rows.append)
    stops = [control.after_iteration(done) for done in range(1, 4 * EPOCH + 1)]
    assert best == [6, 12, 18, 24] and not any(stops)
    assert [r.get("event") for r in rows] == [None, None, None, "lr_drop", None]  # 2 small gains: the drop
    assert control.state.drops == [18] and control.lr_at(18) == pytest.approx(0.001)


def test_joint_mode_validates_map_and_keeps_its_best_as_final_pt(train_set, frcnn, train_options, figures, tmp_path):
    figures([0.4, 0.2])
    frcnn("train", "--data", train_set[0], "--workdir", tmp_path, "--mode", "joint", "--epochs", 2, "--val",
          train_set[1], "--val-every", 1, *train_options())
    assert [r["iteration"] for r in rows(tmp_path / "metrics.jsonl", "val_map")] == [EPOCH, 2 * EPOCH]
    assert read_checkpoint(tmp_path / "final.pt")["provenance"]["best"]["iteration"] == EPOCH
    assert read_checkpoint(tmp_path / "final.last.pt")["stage"] == "joint"
