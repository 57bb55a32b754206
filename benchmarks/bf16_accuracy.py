"""The accuracy cost of bf16 autocast on the CPU: the VOC07 mAP of the same checkpoints evaluated in float32 and in
bf16 (``--set runtime.amp=false`` / ``=true``), on the demo set, the learning benchmark's synthetic glyphs,
kangaroo and BCCD; with ``--train-bf16`` also a checkpoint trained in bf16 (``runtime.amp=true``) per set.

Each set's checkpoint is trained once with ``frcnn train --config tiny`` and its defaults (the demo's with
``frcnn demo``) under ``--workdir`` and reused by later runs. The peer of each bf16 figure is the float32 figure
of the same checkpoint in the same run; the time of each evaluation is given too (process CPU time of the
``frcnn eval`` child): where the CPU emulates bf16 (``devices.cpu_bf16_kind`` None) that time is the emulation's,
not what a native CPU would take, while the mAP is the native one (the same arithmetic: tests/test_cpu_bf16.py).

    python benchmarks/bf16_accuracy.py --workdir /tmp/bf16-acc --sets demo,glyphs,kangaroo,bccd
    python benchmarks/bf16_accuracy.py --workdir /tmp/bf16-acc --sets demo --train-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from harness import environment
from learning_vs_torchvision import folder_set, synth_set

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SETS = ("demo", "glyphs", "kangaroo", "bccd")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True, help="sets, checkpoints and results (reused)")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated of {', '.join(SETS)}")
    p.add_argument("--data", type=Path, default=SHARED, help="the folder holding kangaroo/ and bccd/")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every child command")
    p.add_argument("--train-bf16", action="store_true", help="also train each set's checkpoint in bf16")
    args = p.parse_args()
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        p.error(f"unknown set(s) {unknown}; choose from {SETS}")
    return args


def frcnn(*args, native_bf16: bool | None = None) -> tuple[str, float]:
    """``frcnn ARGS`` in a child process: (stdout, the child's CPU seconds); ``native_bf16`` sets
    ``FRCNN_CPU_BF16`` (``frcnn demo`` has no ``--set``: its bf16 training is the policy's, so forced by that)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    if native_bf16 is not None:
        env["FRCNN_CPU_BF16"] = "1" if native_bf16 else "0"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "frcnn_cli", *map(str, args)], env=env, check=True,
                         stdout=subprocess.PIPE).stdout.decode()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def bccd_set(root: Path, out: Path) -> tuple[Path, Path]:
    """BCCD's own trainval / test split (shared/data/README.md)."""
    paths = []
    for split in ("trainval", "test"):
        manifest = out / f"bccd-{split}.json"
        if not manifest.exists():
            out.mkdir(parents=True, exist_ok=True)
            frcnn("prepare", "folder", "--images", root / "BCCD/JPEGImages", "--annotations", root / "BCCD/Annotations",
                  "--split-file", root / f"BCCD/ImageSets/Main/{split}.txt", "--out", manifest)
        paths.append(manifest)
    return paths[0], paths[1]


def trained(name: str, args, amp: str) -> tuple[Path, Path, float | None]:
    """(checkpoint, test manifest, training CPU seconds or None when reused) of set ``name`` trained with
    ``runtime.amp=amp``."""
    work = args.workdir / name / f"train-amp-{amp}"
    threads = ("--set", f"runtime.threads={args.threads}", "--set", f"runtime.amp={amp}")
    if name == "demo":
        final, test = work / "run" / "final.pt", work / "data" / "test.json"
        seconds = None if final.exists() else frcnn("demo", "--workdir", work, "--device", "cpu", "--threads",
                                                    args.threads, native_bf16=amp == "true")[1]
        return final, test, seconds
    data = args.workdir / name / "data"
    if name == "glyphs":
        train, test = synth_set("synth", data)
    elif name == "kangaroo":
        train, test = folder_set(args.data / "kangaroo", data)
    else:
        train, test = bccd_set(args.data / "bccd", data)
    final = work / "final.pt"
    seconds = None
    if not final.exists():
        seconds = frcnn("train", "--data", train, "--workdir", work, "--config", "tiny", "--device", "cpu",
                        *threads)[1]
    return final, test, seconds


def evaluate(checkpoint: Path, test: Path, amp: str, threads: int) -> tuple[float, float]:
    """(VOC07 mAP, CPU seconds) of ``checkpoint`` on ``test`` with ``runtime.amp=amp``."""
    out, seconds = frcnn("eval", "--model", checkpoint, "--data", test, "--voc2007", "--json", "--device", "cpu",
                         "--set", f"runtime.amp={amp}", "--set", f"runtime.threads={threads}",
                         "--set", "runtime.num_workers=0")
    return float(json.loads(out)["map"]), seconds


def main() -> None:
    args = parse_args()
    print(environment(__import__("torch").device("cpu")))
    from frcnn_cli.devices import cpu_bf16_kind

    print(f"native bf16 on this CPU: {cpu_bf16_kind() or 'none (emulated: bf16 times are the emulation)'}")
    rows = []
    for name in args.sets:
        for train_amp in ("false", "true") if args.train_bf16 else ("false",):
            tick = time.perf_counter()
            checkpoint, test, train_cpu = trained(name, args, train_amp)
            wall = time.perf_counter() - tick
            (fp32, t32), (bf16, t16) = (evaluate(checkpoint, test, amp, args.threads) for amp in ("false", "true"))
            row = {"set": name, "trained": "bfloat16" if train_amp == "true" else "float32",
                   "train_cpu_s": train_cpu, "train_wall_s": wall if train_cpu is not None else None,
                   "map_float32": fp32, "map_bfloat16": bf16, "difference_points": 100 * (bf16 - fp32),
                   "eval_cpu_s_float32": t32, "eval_cpu_s_bfloat16": t16}
            rows.append(row)
            print(json.dumps(row))
    print("| set | trained in | mAP07 float32 | mAP07 bf16 | bf16 - float32 (points) | eval CPU s float32 / bf16 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['trained']} | {r['map_float32']:.4f} | {r['map_bfloat16']:.4f} | "
              f"{r['difference_points']:+.2f} | {r['eval_cpu_s_float32']:.0f} / {r['eval_cpu_s_bfloat16']:.0f} |")
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
