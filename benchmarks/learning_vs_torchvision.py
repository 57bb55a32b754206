"""How well training fits the data: ``frcnn train`` with its defaults, and with a time budget, against torchvision's
Faster R-CNN given the same wall time, on the same split; a table row and learning curves per set.

1. ``frcnn train --config tiny --device cpu`` with every default (the length chosen from the data); its wall
   time T is the command's (start to the written ``final.pt``, evaluation not counted), then ``frcnn eval
   --voc2007`` on the test split.
2. ``frcnn train --config tiny --device cpu --time 15m`` (``--budget``): the whole run fitted to the budget.
3. torchvision's ``FasterRCNN`` in a light configuration of the same capacity, from scratch (``learning_peer.py``),
   trained for T seconds of wall time, and for the budget (15 minutes), evaluated with frcnn's VOC07 code.

Learning curves (test mAP07 against minutes, ``WORKDIR/curves.png``): for frcnn, each version of its best
checkpoint (``final.pt``, rewritten at each better validation) copied as the run writes it and evaluated
afterwards (``learning_curve.py``); for the peer, its model evaluated every ``--tick`` seconds of its budget
run (evaluation time not counted). Each point also has the CPU minutes of the run so far (frcnn's own process,
not its loader worker, which a quiet 2-core machine runs beside it; the peer's process), which a loaded machine
does not inflate: ``--clock cpu`` makes every budget count those (frcnn's ``--time`` under
``FRCNN_BUDGET_CLOCK=cpu``), so that a shared machine measures what a quiet one does in that wall time.

Every part gets the same threads (``--threads``, default: frcnn's tiny default, half the cores). Prints the
mAP07 (VOC2007 11-point AP at IoU 0.5), the ratios frcnn / torchvision, the load average before and after, and
the markdown row of docs/benchmarks.md; everything also goes to ``WORKDIR/results.json``. ``--parts`` runs some
parts only (``defaults,time,peer-same,peer-budget``), the others' figures read from an earlier results.json.

DATASET: ``learning_sets.py`` (``synth``, a VOCdevkit folder, a folder of images and annotations, two manifests).

    python benchmarks/learning_vs_torchvision.py synth --workdir /tmp/lvt-synth
    python benchmarks/learning_vs_torchvision.py ../shared/data/kangaroo --workdir /tmp/lvt-kangaroo
    python benchmarks/learning_vs_torchvision.py ../shared/data/bccd/BCCD --workdir /tmp/lvt-bccd
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from harness import environment
from learning_curve import evaluate_copies, plot_curves, watch
from learning_peer import evaluate_peer, train_peer
from learning_sets import dataset, frcnn

from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.train.budget import parse_duration

PARTS = ("defaults", "time", "peer-same", "peer-budget")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/learning-benchmark"))
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--budget", default="15m", help="frcnn --time and the peer's longer run [15m]")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which runs: {','.join(PARTS)}")
    p.add_argument("--tick", type=float, default=60.0, help="seconds between the peer's curve points [60]")
    p.add_argument("--frcnn-args", default="", help="extra options of both frcnn runs (default: none)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the budgets and the curves count: wall clock (a quiet machine) or each run's own "
                        "CPU time (a shared one: frcnn's --time under FRCNN_BUDGET_CLOCK=cpu, the peer by its "
                        "process time) [wall]")
    return p.parse_args()


def _evaluator(test: Path, threads: int):
    def evaluate(path: Path) -> float:
        out = frcnn("eval", "--model", path, "--data", test, "--voc2007", "--json", "--set",
                    f"runtime.threads={threads}", capture=True)
        return float(json.loads(out)["map"])

    return evaluate


def run_frcnn(train: Path, test: Path, work: Path, threads: int, extra: list[str], clock: str) -> dict:
    """One ``frcnn train`` (tiny, CPU): its wall and CPU seconds, test mAP07 and curve."""
    run = work / "run"
    command = [sys.executable, "-m", "frcnn_cli", "train", "--data", train, "--workdir", run, "--config", "tiny",
               "--device", "cpu", "--set", f"runtime.threads={threads}", *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    if clock == "cpu":
        env["FRCNN_BUDGET_CLOCK"] = "cpu"
    seconds, found, cpu = watch(command, run / "final.pt", work / "curve", env=env)
    curve = evaluate_copies(found, _evaluator(test, threads))
    value = _evaluator(test, threads)(run / "final.pt")
    curve.append((seconds / 60, cpu / 60, value))  # the model handed over, at the end of the run
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "map": value, "curve": curve,
            "command": " ".join(map(str, command[3:]))}


def run_peer(train_m, test_m, seconds: float, tick: float | None, clock: str) -> dict:
    curve = []

    def on_tick(wall: float, cpu: float, model) -> None:
        curve.append((wall / 60, cpu / 60, evaluate_peer(model, test_m)))
        print(f"  peer at {wall / 60:.1f} min ({cpu / 60:.1f} CPU min): mAP07 {curve[-1][2]:.3f}", flush=True)

    model, info = train_peer(train_m, seconds, log=lambda m: print(m, flush=True),
                             on_tick=on_tick if tick else None, tick_every=tick or seconds, clock=clock)
    value = curve[-1][2] if curve else evaluate_peer(model, test_m)
    return {**info, "budget": seconds, "map": value, "curve": curve}


def _row(name: str, n_train: int, n_test: int, r: dict, budget: float, clock: str) -> str:
    d, t, same, long = r.get("defaults", {}), r.get("time", {}), r.get("peer-same", {}), r.get("peer-budget", {})

    def ratio(a: dict, b: dict) -> str:
        return f"**{a['map'] / max(b['map'], 1e-9):.2f}**" if a.get("map") is not None and b.get("map") else "—"

    def fig(x: dict, key: str = "map") -> str:
        return f"{x[key]:.3f}" if x.get(key) is not None else "—"

    key, unit = ("seconds", "min") if clock == "wall" else ("cpu_seconds", "CPU min")
    minutes = f"{d[key] / 60:.1f} {unit}" if d.get(key) else "—"
    return (f"| {name} | {n_train} / {n_test} | {minutes}, **{fig(d)}** | {fig(same)} | {ratio(d, same)} | "
            f"**{fig(t)}** ({t.get(key, 0) / 60:.1f} {unit}) | {fig(long)} | {ratio(t, long)} |"
            f" budget {budget / 60:g} {unit}")


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    budget, parts = parse_duration(args.budget), args.parts.split(",")
    train, test = dataset(args.dataset, args.workdir)
    train_m, test_m = read_manifest(train), read_manifest(test)
    print(f"{args.dataset}: {len(train_m.images)} training, {len(test_m.images)} test images, "
          f"classes {', '.join(train_m.classes)}")
    print("before:", environment(torch.device("cpu")), flush=True)
    results_path = args.workdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(dataset=args.dataset, train_images=len(train_m.images), test_images=len(test_m.images))
    extra = args.frcnn_args.split()
    for part in parts:
        if part == "defaults":
            results[part] = run_frcnn(train, test, args.workdir / "frcnn-defaults", args.threads, extra, args.clock)
        elif part == "time":
            results[part] = run_frcnn(train, test, args.workdir / "frcnn-time", args.threads,
                                      [*extra, "--time", args.budget], args.clock)
        elif part == "peer-same":
            same = results["defaults"]["seconds" if args.clock == "wall" else "cpu_seconds"]
            results[part] = run_peer(train_m, test_m, same, None, args.clock)
        elif part == "peer-budget":
            results[part] = run_peer(train_m, test_m, budget, args.tick, args.clock)
        results[part]["clock"] = args.clock
        print(f"{part}: mAP07 {results[part]['map']:.3f} in {results[part]['seconds'] / 60:.1f} min", flush=True)
        results_path.write_text(json.dumps(results, indent=1))
    print("after:", environment(torch.device("cpu")))
    curves = {f"frcnn defaults ({results['defaults']['seconds'] / 60:.1f} min)": results["defaults"]["curve"]
              for _ in [0] if "defaults" in results}
    if "time" in results:
        curves[f"frcnn --time {args.budget}"] = results["time"]["curve"]
    if "peer-budget" in results:
        curves[f"torchvision peer, {budget / 60:g} min"] = results["peer-budget"]["curve"]
    name = Path(args.dataset.rstrip("/")).name or args.dataset
    axis = 0 if args.clock == "wall" else 1
    plot_curves({k: [(p[axis], p[2]) for p in v] for k, v in curves.items()}, args.workdir / "curves.png",
                f"{name[:40]}: test mAP07 against training time ({args.threads} thread(s))",
                xlabel=f"minutes of training ({'wall clock' if axis == 0 else 'CPU time'})")
    print("\n" + _row(name, len(train_m.images), len(test_m.images), results, budget, args.clock))


if __name__ == "__main__":
    main()
