"""The steps of ``gpu_check.py`` that run commands: the CUDA tests (pytest), the distributed path under torchrun,
and ONNX Runtime on an exported model once ``frcnn export`` exists. Each returns a JSON-able dict;
``gpu_check.py`` runs each in its own process (``python benchmarks/gpu_check_run.py STEP --out FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository's frcnn_cli
TINY = ["--config", "tiny", "--set", "input.train_scales=96", "--set", "input.test_scale=96",
        "--set", "input.max_size=128", "--set", "solver.rpn_images_per_batch=2", "--set", "runtime.num_workers=1"]


def _env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1",
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}


def _cuda(device: str | None) -> bool:
    import torch

    return device != "cpu" and torch.cuda.is_available()


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# the CUDA tests


def junit_counts(path: Path) -> dict:
    """Totals and failures of a pytest ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failures = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                             "message": message[0][:300] if message else ""})
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": passed, "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"],
            "failures": failures}


def cuda_test_files() -> list[str]:
    """The test files that hold ``cuda``-marked tests: collecting only these keeps a module that imports an
    optional package the GPU machine lacks (pycocotools) from stopping the whole run at collection."""
    files = sorted((REPO / "tests").glob("test_*.py"))
    return [str(p.relative_to(REPO)) for p in files if "pytest.mark.cuda" in p.read_text(encoding="utf-8")]


def cuda_tests(opts) -> dict:
    """``pytest -m cuda`` on a GPU; on the CPU the CPU twins of tests/test_cuda.py (``-m 'not cuda'``)."""
    selection = ["-m", "cuda", *cuda_test_files()] if _cuda(opts.device) else ["-m", "not cuda", "tests/test_cuda.py"]
    if opts.pytest_k:
        selection += ["-k", opts.pytest_k]
    junit = opts.junit or Path(tempfile.mkdtemp()) / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *selection]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    result = {"command": "pytest " + shlex.join(selection), "returncode": proc.returncode,
              "seconds": time.perf_counter() - started, "output_tail": _tail(proc.stdout + proc.stderr, 15)}
    if junit.exists():
        result.update(junit_counts(junit))
    if proc.returncode not in (0, 5):  # 5: nothing collected (reported as such)
        result["status"] = "failed"
    return result


# --------------------------------------------------------------------------------------------------
# the distributed path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
            "127.0.0.1", "--master-port", str(_free_port()), *args]


def _outcome(proc: subprocess.CompletedProcess | None, checkpoint: Path) -> tuple[str, str]:
    """``ok`` (exit 0 and a checkpoint), ``refused`` (a clean ``Error:`` line from frcnn), ``failed``, ``timeout``."""
    if proc is None:
        return "timeout", "no answer within the run's time limit"
    output = proc.stdout + proc.stderr
    probes = [json.loads(line[len("PROBE "):]) for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    if proc.returncode == 0 and checkpoint.exists():
        if probes:
            p = probes[0]
            return "ok", (f"{len(probes)} rank(s), backend {p['backend']}, process group of {p['world_size']}, "
                          f"{p['wrapper']}, device {p['device']}")
        return "ok", "rank 0 wrote the checkpoint"
    errors = re.findall(r"^Error: .*$", output, flags=re.MULTILINE)
    if errors:
        return "refused", errors[0]
    # the first causes (a rank's exception, NCCL's reason), not torchrun's summary of the failed ranks
    causes = [ln.strip() for ln in output.splitlines() if re.search(r"Error\b|NCCL|Duplicate GPU|error:", ln)
              and not re.search(r"error_file|elastic|errors\.html|ChildFailedError", ln)]
    return "failed", " / ".join(dict.fromkeys(causes[:3])) or _tail(output, 3)


def _run_torchrun(cmd: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    """``cmd``'s completed process, or None when it outlived ``timeout``: torchrun then gets SIGTERM, on which it
    stops its workers itself (a hung NCCL rank must not hold the GPU through the next steps), then SIGKILL."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def distributed(opts) -> dict:
    """``torchrun`` with 1 and 2 processes: frcnn's own ``train-rpn`` and ``ddp_probe.py`` (the DDP path with a
    one-rank process group; on a GPU also two processes on the one GPU, over NCCL and over gloo)."""
    from frcnn_cli.data.synthetic import make_synthetic_set

    gpu = _cuda(opts.device)
    device = "cuda" if gpu else "cpu"
    work = Path(tempfile.mkdtemp())
    data = make_synthetic_set(work / "set", n_train=8, n_test=2, image_size=(128, 96))[0]
    probe = [str(REPO / "benchmarks" / "ddp_probe.py"), "--data", str(data), "--device", device]
    cli = ["-m", "frcnn_cli", "train-rpn", "--data", str(data), "--init", "none", "--iters", "2", "--device", device,
           *TINY]
    runs = [("frcnn train-rpn, 1 process", 1, cli, ""),
            (f"DDP probe, 1 process ({'NCCL' if gpu else 'gloo'})", 1, probe, "")]
    if gpu or not opts.quick:  # on the CPU, tests/test_ddp.py runs train-rpn under torchrun with 2 processes
        runs.append(("frcnn train-rpn, 2 processes", 2, cli, "refused on a 1-GPU machine" if gpu else ""))
    if gpu:
        runs += [("DDP probe, 2 processes on one GPU (NCCL)", 2, [*probe, "--same-device"],
                  "NCCL may refuse two ranks on one GPU"),
                 ("DDP probe, 2 processes on one GPU (gloo)", 2, [*probe, "--same-device", "--backend", "gloo"], "")]
    rows = []
    for i, (name, nproc, args, expect) in enumerate(runs):
        out = work / f"run{i}" / "rpn.pt"
        started = time.perf_counter()
        outcome, detail = _outcome(_run_torchrun(_torchrun(nproc, *args, "--out", str(out)), opts.run_timeout), out)
        rows.append({"run": name, "processes": nproc, "outcome": outcome, "detail": detail, "expect": expect,
                     "seconds": time.perf_counter() - started})
    bad = [r for r in rows if r["outcome"] in ("failed", "timeout") and not r["expect"]]
    return {"rows": rows, "device": device, **({"status": "failed"} if bad else {})}


# --------------------------------------------------------------------------------------------------
# ONNX Runtime


def _onnxruntime() -> dict:
    try:
        import onnxruntime
    except ImportError:
        return {"onnxruntime": None, "providers": []}
    return {"onnxruntime": onnxruntime.__version__, "providers": list(onnxruntime.get_available_providers())}


def export_available() -> bool:
    """Whether this frcnn has the ``export`` command (issue #19) that step 5 needs."""
    from frcnn_cli.cli.main import cli

    return "export" in cli.commands


def onnx(opts) -> dict:
    """ONNX Runtime (CUDA provider on a GPU) on a model exported by ``frcnn export``, against the same model in
    torch; skipped, with the reason, while frcnn has no ``export`` command."""
    info = {**_onnxruntime(), "cuda_provider_needed": _cuda(opts.device)}
    if not export_available():
        return {"status": "skipped", **info,
                "reason": "frcnn has no `export` command yet (issue #19); once it has, this step exports a "
                          "checkpoint with `frcnn export --format onnx` and times it with "
                          "`frcnn bench --model FILE.onnx` (gpu_check_run.onnx_export_and_bench)"}
    return {**info, **onnx_export_and_bench(opts)}


def _frcnn(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "frcnn_cli", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"frcnn {' '.join(args)} failed:\n{_tail(proc.stderr, 10)}")
    return proc.stdout


def onnx_export_and_bench(opts) -> dict:
    """Export a random checkpoint (tiny with ``--quick``, else VGG16) with the command
    line of shared/DESIGN.md, then ``frcnn bench --json`` of the ONNX file and of the checkpoint."""
    import torch
    from gpu_check_measure import config

    from frcnn_cli.data.voc import VOC_CLASSES
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    checkpoint, exported = work / "model.pt", work / "model.onnx"
    save_checkpoint(checkpoint, FasterRCNN(config(opts.quick), list(VOC_CLASSES)), stage="final", provenance={})
    started = time.perf_counter()
    _frcnn("export", "--model", str(checkpoint), "--format", "onnx", "--out", str(exported))
    seconds = time.perf_counter() - started
    device = "cuda" if _cuda(opts.device) else "cpu"
    runs = ["--runs", "3", "--warmup", "1"] if opts.quick else ["--runs", "20", "--warmup", "5"]
    bench = {name: json.loads(_frcnn("bench", "--model", str(path), "--device", device, "--json", *runs))
             for name, path in (("onnxruntime", exported), ("torch", checkpoint))}
    return {"export_seconds": seconds, "bench": bench,
            "ratio": bench["onnxruntime"]["images_per_s"] / bench["torch"]["images_per_s"]}


# --------------------------------------------------------------------------------------------------
# inference shared among processes (issue 27)


def _timed(cmd: list[str], timeout: float) -> tuple[str, float, str]:
    """``(status, seconds, last error line)`` of one whole command (start-up included)."""
    started = time.perf_counter()
    proc = _run_torchrun(cmd, timeout)
    seconds = time.perf_counter() - started
    if proc is None:
        return "timeout", seconds, ""
    errors = re.findall(r"^Error: .*$", proc.stdout + proc.stderr, flags=re.MULTILINE)
    return ("ok" if proc.returncode == 0 else "failed"), seconds, (errors[0] if errors else _tail(proc.stderr, 3))


def sharded(opts) -> dict:
    """``dump-proposals`` and ``eval`` on the same images: the plain command, the same under ``torchrun
    --nproc-per-node 1`` (one process runs the single-process path: the difference is torchrun's own start-up),
    and on a machine with N GPUs under ``--nproc-per-node N``. Wall seconds of each whole command; the work
    alone, without start-up, is ``benchmarks/sharded_inference.py``'s measurement."""
    import torch
    from gpu_check_measure import config

    from frcnn_cli.data.synthetic import CLASSES, make_synthetic_set
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    gpu = _cuda(opts.device)
    work = Path(tempfile.mkdtemp())
    images = 8 if opts.quick else 256
    size = (128, 96) if opts.quick else (500, 375)
    data = make_synthetic_set(work / "set", n_train=images, n_test=1, image_size=size)[0]
    torch.manual_seed(0)
    save_checkpoint(work / "model.pt", FasterRCNN(config(opts.quick), list(CLASSES)), stage="final", provenance={})
    counts = [1] + ([torch.cuda.device_count()] if gpu and torch.cuda.device_count() > 1 else [])
    common = ["--model", str(work / "model.pt"), "--data", str(data), "--device", "cuda" if gpu else "cpu",
              "--batch-size", "1" if opts.quick else "8"]
    rows = []
    for command in ("dump-proposals",) if opts.quick else ("dump-proposals", "eval"):  # quick: start-ups cost
        for launcher, nproc in [("plain", 1)] + [("torchrun", n) for n in counts]:
            out = ["--out", str(work / f"{command}-{launcher}-{nproc}.h5")] if command == "dump-proposals" else []
            args = ["-m", "frcnn_cli", command, *common, *out]
            cmd = [sys.executable, *args] if launcher == "plain" else _torchrun(nproc, *args)
            status, seconds, detail = _timed(cmd, opts.run_timeout * 2)
            rows.append({"command": command, "launcher": launcher, "processes": nproc, "status": status,
                         "seconds": seconds, "images_per_s": images / seconds,
                         "detail": detail if status != "ok" else ""})
    bad = [r for r in rows if r["status"] != "ok"]
    return {"rows": rows, "images": images, **({"status": "failed"} if bad else {})}


# --------------------------------------------------------------------------------------------------


STEPS = {"cuda_tests": cuda_tests, "distributed": distributed, "onnx": onnx, "sharded": sharded}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out", type=Path, required=True, help="the step's JSON result")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny preset, a few runs")
    p.add_argument("--pytest-k", default=None, help="cuda_tests: only the tests pytest -k selects")
    p.add_argument("--junit", type=Path, default=None, help="cuda_tests: where pytest writes its JUnit XML")
    p.add_argument("--run-timeout", type=int, default=120, help="distributed: seconds per torchrun")
    args = p.parse_args(argv)
    args.out.write_text(json.dumps(STEPS[args.step](args), indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
