"""A training stage killed mid-way and resumed ends with the weights of the uninterrupted run, bit for bit on
a CPU (model, optimiser, lr schedule, RNG and position in the data order all restored); a non-finite loss
stops the run naming stage and iteration and keeps the last good resumable state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from frcnn_cli.model.checkpoint import read_checkpoint
from frcnn_cli.model.detector import FasterRCNN

pytestmark = pytest.mark.usefixtures("one_thread")
KILLED = "killed after writing"


def assert_same_weights(a, b) -> None:
    parts_a, parts_b = read_checkpoint(a)["parts"], read_checkpoint(b)["parts"]
    assert parts_a.keys() == parts_b.keys()
    for name in parts_a:
        assert parts_a[name].keys() == parts_b[name].keys()
        for key, value in parts_a[name].items():
            assert torch.equal(value, parts_b[name][key]), f"{name}.{key} differs"


def logged_iterations(metrics) -> list[int]:
    return [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]


def kill_and_resume(frcnn, kill_after_saving, args: list, out, at: int) -> None:
    """Run ``args --out out``, killed just after its resume file at ``at``; then ``--resume`` it."""
    resume = out.with_name(out.name + ".resume.pt")
    kill_after_saving(at)
    with pytest.raises(BaseException, match=KILLED):
        frcnn(*args, "--out", out)
    assert not out.exists()
    assert read_checkpoint(resume)["train_state"]["iteration"] == at
    frcnn(*args, "--out", out, "--resume")
    assert not resume.exists()  # a finished stage leaves only its checkpoint


@pytest.mark.parametrize("workers", [0, 1])
def test_a_killed_rpn_run_resumes_to_the_uninterrupted_weights_bit_for_bit(
        train_set, frcnn, train_options, kill_after_saving, tmp_path, workers):
    args = ["train-rpn", "--data", train_set[0], "--init", "none", "--iters", 10, "--checkpoint-every", 5,
            "--seed", 11, *train_options("rpn.batch_size_per_image=32",  # a random anchor minibatch
                                         f"solver.num_workers={workers}")]
    frcnn(*args, "--out", tmp_path / "whole" / "rpn.pt")
    kill_and_resume(frcnn, kill_after_saving, args, tmp_path / "cut" / "rpn.pt", at=5)
    assert_same_weights(tmp_path / "whole" / "rpn.pt", tmp_path / "cut" / "rpn.pt")
    # iterations 1-5 before the kill, 6-10 after it: the resumed run did not start again
    assert logged_iterations(tmp_path / "cut" / "metrics.jsonl") == list(range(1, 11))


def test_a_killed_detector_run_resumes_to_the_uninterrupted_weights_bit_for_bit(
        four_steps, frcnn, train_options, kill_after_saving, tmp_path):
    """Flipped images, stored proposals and the random RoI minibatches all continue where they stopped."""
    args = ["train-detector", "--data", four_steps["data"], "--proposals", four_steps["props1"], "--init",
            "none", "--iters", 6, "--checkpoint-every", 3, *train_options("solver.det_images_per_batch=3")]
    frcnn(*args, "--out", tmp_path / "whole" / "det.pt")
    kill_and_resume(frcnn, kill_after_saving, args, tmp_path / "cut" / "det.pt", at=3)
    assert_same_weights(tmp_path / "whole" / "det.pt", tmp_path / "cut" / "det.pt")
    assert logged_iterations(tmp_path / "cut" / "metrics.jsonl") == list(range(1, 7))


def test_a_resume_file_of_another_manifest_is_refused(train_set, frcnn, train_options, kill_after_saving,
                                                       tmp_path):
    out = tmp_path / "rpn.pt"
    args = ["--init", "none", "--iters", 4, "--checkpoint-every", 2, "--out", out, *train_options()]
    kill_after_saving(2)
    with pytest.raises(BaseException, match=KILLED):
        frcnn("train-rpn", "--data", train_set[0], *args)
    result = frcnn("train-rpn", "--data", train_set[1], *args, "--resume", ok=False)
    assert result.exit_code == 1
    assert f"Error: {out}.resume.pt was made from another dataset manifest than {train_set[1]}" in result.output


def test_a_resume_file_of_another_stage_is_refused(train_set, frcnn, train_options, kill_after_saving,
                                                    four_steps, tmp_path):
    out = tmp_path / "model.pt"
    args = ["--data", train_set[0], "--init", "none", "--iters", 4, "--checkpoint-every", 2, "--out", out,
            *train_options()]
    kill_after_saving(2)
    with pytest.raises(BaseException, match=KILLED):
        frcnn("train-rpn", *args)
    result = frcnn("train-detector", *args, "--proposals", four_steps["props1"], "--resume", ok=False)
    assert result.exit_code == 1
    assert f"Error: {out}.resume.pt holds an interrupted 'rpn' stage, not 'detector'" in result.output


def test_a_non_finite_loss_stops_the_run_naming_stage_and_iteration(train_set, frcnn, train_options,
                                                                     monkeypatch, tmp_path):
    real, calls = FasterRCNN.losses, []

    def losses(self, *args, **kwargs):
        calls.append(1)
        result = real(self, *args, **kwargs)
        return {k: v * float("nan") for k, v in result.items()} if len(calls) == 7 else result

    monkeypatch.setattr(FasterRCNN, "losses", losses)
    out = tmp_path / "rpn.pt"
    result = frcnn("train-rpn", "--data", train_set[0], "--out", out, "--init", "none", "--iters", 9,
                   "--checkpoint-every", 3, *train_options("solver.log_every=100"), ok=False)
    assert result.exit_code == 1
    error = result.output[result.output.index("Error:"):]
    assert "training stage rpn" in error and "non-finite" in error and "at iteration 7" in error
    assert f"{out}.resume.pt" in error
    assert not out.exists()
    last_good = read_checkpoint(f"{out}.resume.pt")
    assert last_good["train_state"]["iteration"] == 6
    assert all(torch.isfinite(v).all() for sd in last_good["parts"].values() for v in sd.values())


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(train_set, frcnn, train_options,
                                                                        tmp_path):
    """The real thing: ``kill -9`` of ``frcnn train-rpn`` in another process once its resume file exists."""
    args = ["train-rpn", "--data", train_set[0], "--init", "none", "--iters", 10, "--checkpoint-every", 5,
            *train_options()]
    frcnn(*args, "--out", tmp_path / "whole.pt")
    out = tmp_path / "cut" / "rpn.pt"
    resume = out.with_name("rpn.pt.resume.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "frcnn_cli", *map(str, args), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert resume.exists() and not out.exists(), "the run ended before it could be killed"
    frcnn(*args, "--out", out, "--resume")
    assert_same_weights(tmp_path / "whole.pt", out)
