"""The learning benchmark's table and curves from the ``results.json`` of several runs of
``learning_vs_torchvision.py`` (the parts of one set may run as separate processes, each with ``--parts`` and
its own ``--workdir``, so that the four runs of a set share the cores instead of queueing).

For each set: frcnn with every default (time T, mAP07), the torchvision peer given T (a ``--parts peer-same``
run; without one, marked ≈, the figure read off the peer's 15-minute curve at T: the last point at or before T,
part-way through a 15-minute schedule whose lr drop comes at three quarters of 15 minutes, not of T), frcnn
``--time 15m``, the peer after 15 minutes; and one PNG of the curves per set.

    python benchmarks/learning_table.py /tmp/lb/synth /tmp/lb/kangaroo /tmp/lb/bccd+/tmp/lb/bccd-b --png-dir docs

A ``+`` joins the workdirs of one set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from learning_curve import plot_curves


def merged(workdirs: list[Path]) -> dict:
    """One set's results: the parts of every workdir (a later one fills what an earlier lacks)."""
    out: dict = {}
    for work in workdirs:
        for key, value in json.loads((work / "results.json").read_text()).items():
            out.setdefault(key, value)
    return out


def at_minute(curve: list, minutes: float, axis: int) -> float | None:
    """The curve's figure at ``minutes`` (the last point at or before it), None before its first point."""
    before = [p[2] for p in curve if p[axis] <= minutes + 1e-9]
    return before[-1] if before else None


def row(name: str, r: dict, axis: int, unit: str) -> str:
    d, t, peer = r.get("defaults", {}), r.get("time", {}), r.get("peer-budget", {})
    key = "seconds" if axis == 0 else "cpu_seconds"
    fig = lambda x: f"{x:.3f}" if x is not None else "—"  # noqa: E731
    ratio = lambda a, b: f"**{a / b:.2f}**" if a is not None and b else "—"  # noqa: E731
    minutes = d[key] / 60 if d.get(key) else None
    peer_at_t = at_minute(peer.get("curve", []), minutes, axis) if minutes is not None else None
    if minutes is not None and peer.get("budget") and minutes * 60 > peer["budget"]:
        peer_at_t = None  # past the peer's budget: its curve says nothing there
    same = r.get("peer-same", {}).get("map")  # a peer given T itself (its lr drop at 3/4 of T)
    shown_same = fig(same) if same is not None else (f"≈ {fig(peer_at_t)}" if peer_at_t is not None else "—")
    peer_at_t = same if same is not None else peer_at_t
    time_minutes = f" ({t[key] / 60:.1f} {unit})" if t.get(key) else ""
    return (f"| {name} | {r.get('train_images')} / {r.get('test_images')} | "
            f"{minutes:.1f} {unit}, **{fig(d.get('map'))}** | {shown_same} | {ratio(d.get('map'), peer_at_t)} | "
            f"**{fig(t.get('map'))}**{time_minutes} | {fig(peer.get('map'))} | "
            f"{ratio(t.get('map'), peer.get('map'))} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sets", nargs="+", help="a workdir per set; '+' joins the workdirs of one set")
    p.add_argument("--png-dir", type=Path, default=None, help="write learning-<set>.png here")
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    args = p.parse_args()
    axis, unit = (0, "min") if args.clock == "wall" else (1, "CPU min")
    print("| set | training / test images | frcnn defaults: time, mAP07 | peer given that time (≈: its 15-min curve) | "
          "ratio | frcnn `--time 15m` | peer at 15 min | ratio |\n|---|---|---|---|---|---|---|---|")
    for spec in args.sets:
        workdirs = [Path(w) for w in spec.split("+")]
        r = merged(workdirs)
        name = Path(str(r.get("dataset", workdirs[0])).rstrip("/")).name
        print(row(name, r, axis, unit))
        if args.png_dir is not None:
            curves = {f"frcnn defaults ({r['defaults']['cpu_seconds'] / 60:.1f} {unit})": r["defaults"]["curve"]}
            if "time" in r:
                curves["frcnn --time 15m"] = r["time"]["curve"]
            if "peer-budget" in r:
                curves["torchvision peer, 15 min"] = r["peer-budget"]["curve"]
            plot_curves({k: [(q[axis], q[2]) for q in v] for k, v in curves.items()},
                        args.png_dir / f"learning-{workdirs[0].name}.png",
                        f"{name}: test mAP07 against training time (1 thread)",
                        xlabel=f"minutes of training ({'wall clock' if axis == 0 else 'CPU time'})")


if __name__ == "__main__":
    main()
