"""What every benchmark script shares: the machine line, interleaved timing, the ratio-against-target line.

Run by hand, not in CI. Scripts import this module from their own folder (``python benchmarks/x.py``).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's frcnn_cli


def cpu_name() -> str:
    """``lscpu``'s model name (from /proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> str:
    """One line: device, CPU, threads, torch/torchvision versions, load average."""
    import torchvision

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    try:
        load = "load average " + " ".join(f"{v:.1f}" for v in __import__("os").getloadavg())
    except OSError:
        load = ""
    return (f"device {dev}; CPU {cpu_name()} ({__import__('os').cpu_count()} logical CPUs, "
            f"torch threads {torch.get_num_threads()}); torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}; {load}")


def machine(device: torch.device) -> dict:
    """The machine and software of a run, as a JSON object (``environment`` is the one-line form)."""
    import os

    import torchvision

    out = {"device": str(device), "cpu": cpu_name(), "logical_cpus": os.cpu_count(),
           "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_mib=props.total_memory // 2**20, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), multiprocessors=props.multi_processor_count)
    return out


def peak_memory_mb(run: Callable[[], object], device: torch.device) -> dict[str, float | None]:
    """Memory of one call of ``run``: on CUDA ``peak_mb`` (``max_memory_allocated`` during it, everything
    resident included) and ``above_resident_mb`` (that peak less what was allocated before: the call's own
    need); on the CPU the process's peak resident set size so far, and None."""
    if device.type != "cuda":
        import resource

        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"peak_mb": peak / 2**20 if sys.platform == "darwin" else peak / 2**10, "above_resident_mb": None}
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_mb": peak / 2**20, "above_resident_mb": (peak - before) / 2**20}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runs: dict[str, Callable[[], dict[str, float]]], *, repeats: int, warmup: int,
                device: torch.device) -> dict[str, list[dict[str, float]]]:
    """Run every entry of ``runs`` ``warmup`` times untimed, then ``repeats`` times, the entries taking
    turns (order reversed every other round) so that a change in the machine's load hits all alike.

    Each callable returns its own figures (seconds of its parts); the result holds them per entry."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            out[name].append(runs[name]())
    return out


def median_of(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


class Stopwatch:
    """``lap(name)`` records seconds since the previous lap (synchronising CUDA first).

    ``Stopwatch.clock`` is wall-clock time; ``use_cpu_clock()`` switches every stopwatch to the process's
    CPU time, which a busy shared machine disturbs far less — meaningful with one torch thread only
    (with several, CPU time adds the threads up and counts their spinning)."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, device: torch.device) -> None:
        self.device = device
        synchronize(device)
        self.last = self.clock()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        synchronize(self.device)
        now = self.clock()
        self.laps[name] = now - self.last
        self.last = now


def use_cpu_clock() -> None:
    """Time with the process's CPU time (``time.process_time``) instead of the wall clock."""
    if torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu needs --threads 1: CPU time adds up the threads")
    Stopwatch.clock = staticmethod(time.process_time)


def setup_run(args) -> torch.device:
    """Apply ``--threads`` and ``--clock``, resolve ``--device``, and give the process the allocator settings
    of the ``frcnn`` CLI (``keep_freed_memory``: both detectors of a run profit alike; the environment
    variable ``FRCNN_SYSTEM_MALLOC=1`` keeps glibc's defaults); prints the environment line."""
    from frcnn_cli.devices import keep_freed_memory, resolve_device

    kept = keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        use_cpu_clock()
    device = resolve_device(args.device)
    print(environment(device) + f"; allocator keeps freed memory: {'yes' if kept else 'no (system default)'}")
    return device


def ratio_line(what: str, ours: float, peer: float, unit: str, *, target: float | None = None,
               higher_is_better: bool = False, peer_name: str = "torchvision", name: str = "frcnn") -> str:
    """``what: NAME X unit | peer Y unit | ratio R`` plus whether the target ratio is met and by how much."""
    ratio = ours / peer if peer else float("inf")
    line = f"{what}: {name} {ours:.4g} {unit} | {peer_name} {peer:.4g} {unit} | ratio {ratio:.3f}"
    if target is None:
        return line
    if higher_is_better:
        met = ratio >= target
        gap = (target / ratio - 1.0) * 100 if ratio > 0 else float("inf")
        goal = f"target >= {target:g}x"
        how = f"{name} needs {gap:.1f}% more" if not met else ""
    else:
        met = ratio <= target
        gap = (1.0 - target / ratio) * 100
        goal = f"target <= {target:g}x"
        how = f"{name} needs {gap:.1f}% less time ({ours - target * peer:.2f} {unit})" if not met else ""
    return f"{line} ({goal}: {'met' if met else 'MISSED, ' + how})"


def target_line(what: str, value: float, target: float, unit: str) -> str:
    """``what: X unit (target >= T: met | MISSED by ...)`` for absolute higher-is-better targets."""
    met = value >= target
    miss = "" if met else f", short by {target - value:.2f} {unit} ({(1 - value / target) * 100:.1f}%)"
    return f"{what}: {value:.2f} {unit} (target >= {target:g}: {'met' if met else 'MISSED'}{miss})"
