"""benchmarks/gpu_check.py, the one prepared GPU check: its steps, its results, and what it does when a step
fails, hangs or finds no time left. The whole ``--quick`` run (every step on the CPU) is the slow test; the
others check the orchestration and the report on steps that take a second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
import gpu_check_report  # noqa: E402
import gpu_check_run  # noqa: E402


def _args(tmp_path: Path, *extra: str):
    return gpu_check.parse_args([str(tmp_path / "out"), "--quick", *extra])


def _script(tmp_path: Path, body: str) -> str:
    """A stand-in step: a Python file that gets the step's arguments (``--out FILE`` among them)."""
    path = tmp_path / "step.py"
    path.write_text("import sys, json, time\nout = sys.argv[sys.argv.index('--out') + 1]\n" + body)
    return str(path)


def test_a_step_writes_its_json_and_gets_a_status_and_its_time(tmp_path):
    args = _args(tmp_path)
    args.outdir.mkdir()
    step = gpu_check.one_step(("x", _script(tmp_path, "json.dump({'rows': [1, 2]}, open(out, 'w'))"), ["x"], 30),
                              args, tmp_path, left=100.0)
    assert step["status"] == "ok" and step["rows"] == [1, 2] and step["returncode"] == 0 and step["seconds"] > 0


def test_a_crashing_step_is_recorded_failed_with_the_end_of_its_output(tmp_path):
    args = _args(tmp_path)
    args.outdir.mkdir()
    step = gpu_check.one_step(("x", _script(tmp_path, "print('loading'); raise SystemExit('CUDA error: boom')"),
                               ["x"], 30), args, tmp_path, left=100.0)
    assert step["status"] == "failed" and step["returncode"] == 1
    assert "CUDA error: boom" in step["reason"] and "loading" in step["log_tail"]
    assert "CUDA error: boom" in (args.outdir / "gpu_check.log").read_text()


def test_a_hanging_step_is_stopped_at_its_limit_and_the_budget_skips_what_does_not_fit(tmp_path):
    args = _args(tmp_path)
    args.outdir.mkdir()
    script = _script(tmp_path, "time.sleep(60)")
    step = gpu_check.one_step(("x", script, ["x"], 1), args, tmp_path, left=100.0)  # --quick: twice the 1 s
    assert step["status"] == "timeout" and step["seconds"] < 10 and "stopped after 2 s" in step["reason"]
    skipped = gpu_check.one_step(("y", script, ["y"], 30), args, tmp_path, left=gpu_check.MIN_SECONDS - 1.0)
    assert skipped["status"] == "skipped" and "budget" in skipped["reason"]


def test_a_step_may_report_itself_skipped_or_failed(tmp_path):
    args = _args(tmp_path)
    args.outdir.mkdir()
    body = "json.dump({'status': 'skipped', 'reason': 'no export yet'}, open(out, 'w'))"
    step = gpu_check.one_step(("x", _script(tmp_path, body), ["x"], 30), args, tmp_path, left=100.0)
    assert (step["status"], step["reason"]) == ("skipped", "no export yet")


def test_unknown_steps_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args([str(tmp_path), "--steps", "inference,warp-drive"])
    assert "warp-drive" in capsys.readouterr().err


def _results(best_images_per_s: float, ratio: float, batch1: float, *, gpu: str | None = "NVIDIA H100") -> dict:
    row = {"precision": "bf16", "frcnn_peak_mb": 9000.0, "torchvision_peak_mb": 9500.0, "torchvision_images_per_s": 1.0,
           "frcnn_ms_per_image": 1.0, "torchvision_ms_per_image": 1.0}
    rows = [{**row, "batch": 1, "frcnn_images_per_s": batch1, "ratio": 3.0},
            {**row, "batch": 32, "frcnn_images_per_s": best_images_per_s, "ratio": ratio},
            {"precision": "bf16", "batch": 64, "error": "out of GPU memory"}]
    import gpu_check_measure

    inference = {"status": "ok", "seconds": 80.0, "rows": rows, "summary": gpu_check_measure.inference_summary(rows),
                 "image_size": [600, 1000], "model": "vgg16", "cudnn_benchmark": True,
                 "host_syncs": {"1": {"count": 9, "where": {"boxes.py:100": 6, "inference.py:250": 3}}}}
    return {"quick": False, "machine": {"gpu": gpu, "cpu": "x"}, "started": "today", "seconds": 300.0,
            "steps": {"inference": inference, "onnx": {"status": "skipped", "reason": "no export", "seconds": 1.0,
                                                       "onnxruntime": "1.30", "providers": ["CPUExecutionProvider"]}}}


def test_targets_are_judged_on_the_bf16_figures_of_a_gpu_run():
    goals = gpu_check_report.targets(_results(612.0, 1.8, 75.0))
    assert [(g["value"], g["target"], g["met"]) for g in goals] == [(75.0, 60.0, True), (612.0, 500.0, True),
                                                                     (1.8, 2.0, False)]
    assert all(g["met"] is None for g in gpu_check_report.targets(_results(612.0, 1.8, 75.0, gpu=None)))


def test_the_markdown_names_the_gpu_the_targets_and_every_row():
    text = gpu_check_report.render(_results(612.0, 1.8, 75.0))
    assert text.startswith("# GPU check: NVIDIA H100\n")
    assert "| best batch (32), bf16, × torchvision | 1.80 | ≥ 2 | **no** |" in text
    assert "| bf16 | 32 | 612.0 | 1.0 | 1.80 | 9,000 | 9,500 |" in text
    assert "| bf16 | 64 | out of GPU memory |" in text
    assert "Host syncs of one `Predictor.run`, batch 1: 9 (boxes.py:100 ×6, inference.py:250 ×3)." in text
    assert "skipped: no export" in text and "providers: CPUExecutionProvider" in text


def test_junit_counts_pass_fail_skip_and_the_failure_messages(tmp_path):
    xml = tmp_path / "p.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_cuda" name="test_a"/>'
                   '<testcase classname="tests.test_cuda" name="test_b"><failure message="assert 0.3 &lt; 0.2">'
                   'long</failure></testcase><testcase classname="tests.test_cuda" name="test_c"><skipped/>'
                   '</testcase><testcase classname="tests.test_cuda" name="test_d"/></testsuite></testsuites>')
    counts = gpu_check_run.junit_counts(xml)
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (2, 1, 1)
    assert counts["failures"] == [{"test": "tests.test_cuda::test_b", "message": "assert 0.3 < 0.2"}]


def test_the_gpu_run_collects_only_the_files_that_hold_cuda_tests():
    files = gpu_check_run.cuda_test_files()
    assert "tests/test_cuda.py" in files and "tests/test_sync_free.py" in files
    assert "tests/test_coco_eval.py" not in files  # imports pycocotools, which the GPU machine lacks


def test_one_failure_on_the_gpu_costs_one_row_of_the_results():
    import gpu_check_measure

    assert gpu_check_measure.attempt(lambda: 7, "x") == (7, None)
    value, error = gpu_check_measure.attempt(lambda: 1 / 0, "bf16 batch 8")
    assert value is None and error.startswith("bf16 batch 8: ZeroDivisionError")
    step = {"rows": [{"kind": "joint", "what": "joint", "error": error},
                     {"kind": "rpn", "what": "step 1 (RPN)", "images_per_s": 40.0, "ms_per_image": 25.0,
                      "vs_torchvision": 2.0, "peak_mb": 9000.0, "above_resident_mb": 3000.0}],
            "model": "vgg16", "train_scale": 600, "schedule_hours": None, "steps": 15, "warmup": 3}
    text = "\n".join(gpu_check_report._training(step))
    assert "| joint | bf16 batch 8: ZeroDivisionError" in text and "| step 1 (RPN) | 40.00 | 25.0 | 2.00 |" in text
    assert "schedule at these rates: n/a (a step has no rate)." in text


def _completed(code: int, out: str = "", err: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, out, err)


def test_torchrun_outcomes_tell_a_clean_refusal_from_a_failure(tmp_path):
    ckpt = tmp_path / "rpn.pt"
    assert gpu_check_run._outcome(None, ckpt)[0] == "timeout"
    refused = _completed(1, err="Error: torchrun started 2 processes on this machine but it has 1 GPU(s)\n")
    assert gpu_check_run._outcome(refused, ckpt) == ("refused", refused.stderr.strip())
    nccl = _completed(1, err="Traceback ...\ntorch.distributed.DistBackendError: NCCL error: invalid usage\n")
    assert gpu_check_run._outcome(nccl, ckpt)[0] == "failed" and "NCCL error" in gpu_check_run._outcome(nccl, ckpt)[1]
    ckpt.write_bytes(b"x")
    probe = 'PROBE {"rank": 0, "world_size": 1, "backend": "nccl", "wrapper": "DistributedDataParallel", "device": "0"}'
    outcome, detail = gpu_check_run._outcome(_completed(0, out=probe + "\n"), ckpt)
    assert outcome == "ok" and "backend nccl, process group of 1, DistributedDataParallel" in detail


def test_the_onnx_step_waits_for_frcnn_export_then_runs_its_hook(monkeypatch, tmp_path):
    opts = gpu_check_run.argparse.Namespace(device="cpu", quick=True)
    if not gpu_check_run.export_available():
        skipped = gpu_check_run.onnx(opts)
        assert skipped["status"] == "skipped" and "issue #19" in skipped["reason"]
    monkeypatch.setattr(gpu_check_run, "export_available", lambda: True)
    monkeypatch.setattr(gpu_check_run, "onnx_export_and_bench", lambda o: {"ratio": 1.5})
    assert gpu_check_run.onnx(opts)["ratio"] == 1.5


@pytest.mark.slow
def test_the_quick_run_does_every_step_on_the_cpu(tmp_path):
    """Every step but ``autotune_off`` (``autotune_on``'s code with the other setting), one CUDA test's CPU twin."""
    out, steps = tmp_path / "out", [name for name, *_ in gpu_check.STEPS if name != "autotune_off"]
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), str(out), "--quick", "--device", "cpu",
                             "--pytest-k", "forward and roialign", "--steps", ",".join(steps)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "pytest.xml", "results.json", "results.md"]
    statuses = {name: step["status"] for name, step in results["steps"].items()}
    assert statuses == {name: "ok" for name in steps} | {"onnx": statuses["onnx"]}
    steps = results["steps"]
    assert steps["cuda_tests"]["passed"] == 1 and steps["cuda_tests"]["failed"] == 0
    assert {(r["precision"], r["batch"]) for r in steps["inference"]["rows"]} == {
        (p, b) for p in ("fp32", "bf16") for b in (1, 2)}
    assert all(r["frcnn_images_per_s"] > 0 and r["torchvision_images_per_s"] > 0 for r in steps["inference"]["rows"])
    assert {r["kind"] for r in steps["training"]["rows"]} == {"rpn", "detector", "rpn-frozen", "detector-frozen",
                                                              "joint", "dump", "torchvision"}
    assert [r["outcome"] for r in steps["distributed"]["rows"]] == ["ok", "ok"]
    assert [(r["command"], r["launcher"], r["status"]) for r in steps["sharded"]["rows"]] == [
        ("dump-proposals", launcher, "ok") for launcher in ("plain", "torchrun")]
    text = (out / "results.md").read_text()
    for title in ("1. CUDA tests", "2. Inference", "3. Training", "4. Distributed", "5. ONNX", "6. Data pipeline",
                  "7. cuDNN autotuning", "8. Inference under torchrun"):
        assert f"## {title}" in text
    assert result.stdout.endswith(text + "\n")
