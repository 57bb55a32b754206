"""Every GPU check in one call: the CUDA tests, inference and training throughput against torchvision, torchrun
with NCCL, inference under torchrun, ONNX Runtime, the data pipeline and cuDNN autotuning; results as JSON and
markdown in OUTDIR.

    PYTHONPATH=. python benchmarks/gpu_check.py OUTDIR            # on a GPU machine: about 6 minutes on an H100
    PYTHONPATH=. python benchmarks/gpu_check.py OUTDIR --quick    # tiny preset, a few runs: any machine, the CPU too

OUTDIR receives ``results.json`` (every figure), ``results.md`` (the tables of docs/benchmarks.md),
``gpu_check.log`` (every step's output) and ``pytest.xml``: four files, within the device tool's limits. Each
step runs in its own process with a time limit (``gpu_check_measure.py``: inference, training, pipeline,
autotune; ``gpu_check_run.py``: cuda_tests, distributed, sharded, onnx), so that a crash, a hang or running
out of GPU memory costs that step only; the results are rewritten after every step, and a step that would start
with less than 15 s of ``--budget`` left is skipped. The markdown is printed at the end. Exit status 1 when a
step failed or timed out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check_report import render, targets

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# name, script, extra arguments, seconds allowed (full run; --quick doubles them)
STEPS = (("cuda_tests", "gpu_check_run.py", ["cuda_tests"], 150),
         ("inference", "gpu_check_measure.py", ["inference"], 150),
         ("training", "gpu_check_measure.py", ["training"], 100),
         ("distributed", "gpu_check_run.py", ["distributed", "--run-timeout", "60"], 150),
         ("onnx", "gpu_check_run.py", ["onnx"], 60),
         ("pipeline", "gpu_check_measure.py", ["pipeline"], 90),
         ("autotune_on", "gpu_check_measure.py", ["autotune", "--autotune", "on"], 60),
         ("autotune_off", "gpu_check_measure.py", ["autotune", "--autotune", "off"], 45),
         ("sharded", "gpu_check_run.py", ["sharded", "--run-timeout", "60"], 120))
MIN_SECONDS = 15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path, help="where results.json, results.md, gpu_check.log and pytest.xml go")
    p.add_argument("--quick", action="store_true", help="tiny preset at 96 px, a few runs (any device)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", default=",".join(s[0] for s in STEPS),
                   help="comma-separated steps to run (default: all)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all steps (default 420: a 7-minute call; --quick 1800)")
    p.add_argument("--pytest-k", default=None, help="cuda_tests: only the tests pytest -k selects")
    args = p.parse_args(argv)
    names = {s[0] for s in STEPS}
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := [s for s in args.steps if s not in names]:
        p.error(f"unknown step(s) {unknown}; choose from {sorted(names)}")
    args.budget = args.budget or (1800.0 if args.quick else 420.0)
    return args


def _env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1"}


def run_step(name: str, cmd: list[str], timeout: float, log: Path) -> tuple[str, int | None, str]:
    """Run one step's process (its own process group, killed whole on timeout); (status, exit code, output)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code, status = proc.wait(timeout=timeout), None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code, status = proc.wait(), "timeout"
        out.seek(0)
        text = out.read()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n===== {name}: {' '.join(cmd)}\n{text}")
    return status or ("ok" if code == 0 else "failed"), code, text


def step_command(script: str, extra: list[str], args, result: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / script), *extra, "--out", str(result)]
    if args.device:
        cmd += ["--device", args.device]
    if args.quick:
        cmd.append("--quick")
    if extra[0] == "cuda_tests":
        cmd += ["--junit", str(args.outdir / "pytest.xml")] + (["--pytest-k", args.pytest_k] if args.pytest_k else [])
    return cmd


def one_step(spec: tuple, args, work: Path, left: float) -> dict:
    """The result of one step: its JSON with ``status``, ``seconds``, ``returncode`` (and ``reason``)."""
    name, script, extra, seconds = spec
    allowed = min(seconds * (2 if args.quick else 1), left)
    if left < MIN_SECONDS:
        return {"status": "skipped", "reason": f"only {left:.0f} s of the budget left", "seconds": 0.0}
    result = work / f"{name}.json"
    started = time.perf_counter()
    status, code, output = run_step(name, step_command(script, extra, args, result), allowed,
                                    args.outdir / "gpu_check.log")
    step = json.loads(result.read_text(encoding="utf-8")) if result.exists() else {}
    step_status = step.pop("status", None)
    step.update(status=status if status != "ok" else (step_status or "ok"), returncode=code,
                seconds=time.perf_counter() - started)
    if status == "timeout":
        step["reason"] = f"stopped after {allowed:.0f} s"
    elif status == "failed" or step["status"] == "failed":
        step.setdefault("reason", "\n".join(output.strip().splitlines()[-3:]) or f"exit status {code}")
        step["log_tail"] = "\n".join(output.strip().splitlines()[-40:])
    return step


def _machine(device: str | None) -> dict:
    sys.path.insert(0, str(HERE))
    import torch
    from harness import machine

    from frcnn_cli.devices import resolve_device

    return machine(resolve_device(device if device else ("cuda" if torch.cuda.is_available() else "cpu")))


def write_results(args, results: dict) -> None:
    results["targets"] = targets(results)
    (args.outdir / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    (args.outdir / "results.md").write_text(render(results), encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "gpu_check.log").write_text("", encoding="utf-8")
    started = time.perf_counter()
    results = {"format": "frcnn-gpu-check", "version": 1, "quick": args.quick, "machine": _machine(args.device),
               "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "seconds": 0.0,
               "budget_s": args.budget, "steps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in (s for s in STEPS if s[0] in args.steps):
            left = args.budget - (time.perf_counter() - started)
            results["steps"][spec[0]] = one_step(spec, args, Path(tmp), left)
            results["seconds"] = time.perf_counter() - started
            write_results(args, results)
            print(f"{spec[0]}: {results['steps'][spec[0]]['status']} "
                  f"({results['steps'][spec[0]]['seconds']:.0f} s)", flush=True)
    write_results(args, results)
    print((args.outdir / "results.md").read_text(encoding="utf-8"), flush=True)
    return 1 if any(s["status"] in ("failed", "timeout") for s in results["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
