"""Learning curves for the learning benchmark: a command's best checkpoint copied each time it changes, with the
time since the command started, and each copy evaluated on the test split afterwards (test mAP against minutes).

``frcnn train`` with validation rewrites ``final.pt`` (atomically: a rename) at every new best validation
figure; ``watch`` runs the command and polls that file, so the curve is "the model the run would hand over if
stopped now" against wall time. The copies are evaluated after the command ends, so evaluating costs the run
nothing.

    python benchmarks/learning_curve.py WORKDIR TEST.json -- frcnn train --data … --workdir WORKDIR/run …
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from the state on (the name may hold spaces)


def cpu_seconds(root: int) -> tuple[float, float]:
    """CPU seconds (user + system) of process ``root`` alone (on a quiet 2-core machine about its wall time: its
    loader worker runs beside it), and with its reaped children and live descendants (the loader workers):
    Linux /proc; zeros elsewhere."""
    if not os.path.isdir("/proc"):
        return 0.0, 0.0
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
            times[int(entry)] = [int(v) for v in fields[11:15]]  # utime stime cutime cstime
    if root not in times:
        return 0.0, 0.0
    total, todo = sum(times[root]), [root]
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid:
                total += sum(times[child][:2])
                todo.append(child)
    return sum(times[root][:2]) / _TICK, total / _TICK


def watch(command: Sequence[str], target: Path, copies: Path, *, env: dict | None = None, poll: float = 1.0,
          also: Path | None = None) -> tuple[float, list[tuple[float, float, Path]], float]:
    """Run ``command``; each new version of ``target`` is copied into ``copies`` with its time: wall seconds since
    the start and CPU seconds of the command's own process (what the run would take alone on a quiet machine).
    Returns the command's wall seconds, the ``(wall, cpu, copy)`` list and its CPU seconds (the last reading
    before it ended). ``also``: another file copied the
    same way into ``copies/also`` (e.g. the resumable state, the last model so far)."""
    copies.mkdir(parents=True, exist_ok=True)
    watched = {target: (copies, [None], [])}
    if also is not None:
        (copies / "also").mkdir(exist_ok=True)
        watched[also] = (copies / "also", [None], [])
    tick = time.perf_counter()
    proc = subprocess.Popen(list(map(str, command)), env=env)
    cpu = 0.0
    while True:
        done = proc.poll() is not None
        cpu = max(cpu, cpu_seconds(proc.pid)[0]) if not done else cpu
        for path, (folder, seen, found) in watched.items():
            _copy_if_new(path, folder, seen, found, time.perf_counter() - tick, cpu)
        if done:
            break
        time.sleep(poll)
    seconds = time.perf_counter() - tick
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return seconds, watched[target][2], cpu


def _copy_if_new(path: Path, folder: Path, seen: list, found: list, seconds: float, cpu: float) -> None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return
    key = (stat.st_ino, stat.st_mtime_ns)
    if key == seen[0]:
        return
    copy = folder / f"{len(found):03d}-{seconds:07.1f}s-{cpu:07.1f}cpu.pt"
    try:
        shutil.copyfile(path, copy)
    except FileNotFoundError:  # replaced between stat and copy: taken at the next poll
        return
    seen[0] = key
    found.append((seconds, cpu, copy))


def evaluate_copies(found: list[tuple[float, float, Path]],
                    evaluate: Callable[[Path], float]) -> list[tuple[float, float, float]]:
    """``(wall minutes, CPU minutes, test mAP)`` of each copy."""
    return [(wall / 60, cpu / 60, evaluate(path)) for wall, cpu, path in found]


def plot_curves(curves: dict[str, list[tuple[float, float]]], out: Path, title: str,
                xlabel: str = "minutes of training (wall clock)") -> Path | None:
    """One PNG with each curve (minutes, mAP07) as a line; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curve PNG (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=label, drawstyle="steps-post")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test mAP07 (VOC 11-point, IoU 0.5)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    if "--" not in sys.argv:
        raise SystemExit(__doc__)
    cut = sys.argv.index("--")
    workdir, test = Path(sys.argv[1]), Path(sys.argv[2])
    command = sys.argv[cut + 1:]
    run = Path(command[command.index("--workdir") + 1])
    seconds, found, _ = watch(command, run / "final.pt", workdir / "curve")

    def evaluate(path: Path) -> float:
        out = subprocess.run([sys.executable, "-m", "frcnn_cli", "eval", "--model", str(path), "--data", str(test),
                              "--voc2007", "--json", "--set", "runtime.threads=1"],
                             check=True, stdout=subprocess.PIPE).stdout
        return float(json.loads(out)["map"])

    points = evaluate_copies(found, evaluate)
    (workdir / "curve.json").write_text(json.dumps({"seconds": seconds, "points": points}, indent=1))
    for wall, cpu, value in points:
        print(f"{wall:6.2f} min wall {cpu:6.2f} min CPU  mAP07 {value:.3f}")
    print(f"command: {seconds / 60:.2f} min")


if __name__ == "__main__":
    main()
