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
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def watch(command: Sequence[str], target: Path, copies: Path, *, env: dict | None = None,
          poll: float = 1.0) -> tuple[float, list[tuple[float, Path]]]:
    """Run ``command``; each new version of ``target`` is copied into ``copies`` with its time (seconds since
    the start). Returns the command's wall seconds and the ``(seconds, copy)`` list."""
    copies.mkdir(parents=True, exist_ok=True)
    seen, found = None, []
    tick = time.perf_counter()
    proc = subprocess.Popen(list(map(str, command)), env=env)
    while True:
        done = proc.poll() is not None
        try:
            stat = target.stat()
            key = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key is not None and key != seen:
            seconds = time.perf_counter() - tick
            copy = copies / f"{len(found):03d}-{seconds:07.1f}s.pt"
            try:
                shutil.copyfile(target, copy)
                seen = key
                found.append((seconds, copy))
            except FileNotFoundError:  # replaced between stat and copy: taken at the next poll
                pass
        if done:
            break
        time.sleep(poll)
    seconds = time.perf_counter() - tick
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return seconds, found


def evaluate_copies(found: list[tuple[float, Path]], evaluate: Callable[[Path], float]) -> list[tuple[float, float]]:
    """``(minutes, test mAP)`` of each copy."""
    return [(seconds / 60, evaluate(path)) for seconds, path in found]


def plot_curves(curves: dict[str, list[tuple[float, float]]], out: Path, title: str) -> Path | None:
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
    ax.set_xlabel("minutes of training (wall clock)")
    ax.set_ylabel("test mAP07 (VOC 11-point, IoU 0.5)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
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
    seconds, found = watch(command, run / "final.pt", workdir / "curve")

    def evaluate(path: Path) -> float:
        out = subprocess.run([sys.executable, "-m", "frcnn_cli", "eval", "--model", str(path), "--data", str(test),
                              "--voc2007", "--json", "--set", "runtime.threads=1"],
                             check=True, stdout=subprocess.PIPE).stdout
        return float(json.loads(out)["map"])

    points = evaluate_copies(found, evaluate)
    (workdir / "curve.json").write_text(json.dumps({"seconds": seconds, "points": points}, indent=1))
    for minutes, value in points:
        print(f"{minutes:6.2f} min  mAP07 {value:.3f}")
    print(f"command: {seconds / 60:.2f} min")


if __name__ == "__main__":
    main()
