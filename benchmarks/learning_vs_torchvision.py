"""How well training fits the data: ``frcnn train`` with its defaults against torchvision's Faster R-CNN given
the same wall time, on the same split.

1. ``frcnn train --config tiny --device cpu`` (and ``--val`` / extra options only when asked): every default,
   no ``--iters``; its wall time T is the command's (start to the written ``final.pt``, evaluation not
   counted), then ``frcnn eval --voc2007`` on the test split.
2. torchvision's ``FasterRCNN`` in a light configuration of the same capacity, from scratch
   (``learning_peer.py``), trained for T seconds of wall time, evaluated with frcnn's VOC07 code; with
   ``--peer-minutes M`` also a second peer run of M minutes (the peer's figure at a longer budget).

Both get the same threads (``--threads``, default: frcnn's tiny default, half the cores). Prints both mAP07
(VOC2007 11-point AP at IoU 0.5) and the ratio frcnn / torchvision, the load average before and after.

DATASET is one of

- ``synth``: the benchmark's synthetic set, one the tests and the demo never use: ``kind=glyphs`` (star,
  cross, frame, arrow; 30-140 px), 320×240 images, seed 11, 300 training + 100 test images;
  ``synth:kind=shapes,seed=5,train=300,test=100,size=256x192`` to change any of these;
- a folder with ``images/`` and ``annotations/`` (VOC XML), e.g. ``../shared/data/kangaroo``: split 80/20 by
  file name (the first 80 % of the sorted names train), images that cannot be decoded left out;
- ``TRAIN.json,TEST.json``: two manifests.

    python benchmarks/learning_vs_torchvision.py synth --workdir /tmp/lvt-synth
    python benchmarks/learning_vs_torchvision.py ../shared/data/kangaroo --workdir /tmp/lvt-kangaroo --peer-minutes 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from harness import environment
from learning_peer import evaluate_peer, train_peer
from PIL import Image

from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.data.synthetic import make_synthetic_set

SYNTH = {"kind": "glyphs", "seed": "11", "train": "300", "test": "100", "size": "320x240"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/learning-benchmark"))
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--peer-minutes", type=float, default=None, help="also train the peer this long")
    p.add_argument("--frcnn-args", default="", help="extra options of frcnn train (default: none)")
    p.add_argument("--frcnn-seconds", type=float, default=None,
                   help="skip frcnn (its run already in --workdir) and give the peer this budget")
    return p.parse_args()


def synth_set(spec: str, out: Path) -> tuple[Path, Path]:
    values = dict(SYNTH)
    values.update(dict(kv.split("=", 1) for kv in spec.split(":", 1)[1].split(",")) if ":" in spec else {})
    width, height = (int(v) for v in values["size"].split("x"))
    folder = out / "synth-{kind}-{seed}-{train}-{test}-{size}".format(**values)
    if (folder / "test.json").exists():
        return folder / "trainval.json", folder / "test.json"
    return make_synthetic_set(folder, n_train=int(values["train"]), n_test=int(values["test"]),
                              seed=int(values["seed"]), image_size=(width, height), kind=values["kind"])


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding problem leaves the image out
        return False


def folder_set(root: Path, out: Path) -> tuple[Path, Path]:
    """An 80/20 split by file name of a folder of images and VOC XML (unreadable images left out)."""
    data = out / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "annotations").mkdir(exist_ok=True)
    stems = []
    for image in sorted((root / "images").iterdir()):
        xml = root / "annotations" / (image.stem + ".xml")
        if xml.exists() and _readable(image):
            stems.append(image.stem)
            for link, target in ((data / "images" / image.name, image), (data / "annotations" / xml.name, xml)):
                if not link.exists():
                    link.symlink_to(target.resolve())
        elif xml.exists():
            print(f"left out {image} (cannot be decoded)")
    cut = len(stems) * 8 // 10
    paths = []
    for name, part in (("train", stems[:cut]), ("test", stems[cut:])):
        (data / f"{name}.txt").write_text("".join(s + "\n" for s in part))
        manifest = data / f"{name}.json"
        frcnn("prepare", "folder", "--images", data / "images", "--annotations", data / "annotations",
              "--split-file", data / f"{name}.txt", "--out", manifest)
        paths.append(manifest)
    return paths[0], paths[1]


def frcnn(*args, capture: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "frcnn_cli", *map(str, args)], env=env, check=True,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout.decode() if capture else ""


def run_frcnn(train: Path, test: Path, work: Path, threads: int, extra: str) -> tuple[float, float]:
    """``frcnn train`` with the defaults: (wall seconds, VOC07 mAP on ``test``)."""
    tick = time.perf_counter()
    frcnn("train", "--data", train, "--workdir", work, "--config", "tiny", "--device", "cpu",
          "--set", f"runtime.threads={threads}", *extra.split())
    seconds = time.perf_counter() - tick
    (work / "benchmark_seconds.txt").write_text(f"{seconds:.1f}\n")
    result = json.loads(frcnn("eval", "--model", work / "final.pt", "--data", test, "--voc2007", "--json",
                              "--set", f"runtime.threads={threads}", capture=True))
    return seconds, float(result["map"])


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.dataset.startswith("synth"):
        train, test = synth_set(args.dataset, args.workdir)
    elif "," in args.dataset:
        train, test = (Path(p) for p in args.dataset.split(",", 1))
    else:
        train, test = folder_set(Path(args.dataset), args.workdir)
    train_m, test_m = read_manifest(train), read_manifest(test)
    print(f"{args.dataset}: {len(train_m.images)} training, {len(test_m.images)} test images, "
          f"classes {', '.join(train_m.classes)}")
    print("before:", environment(torch.device("cpu")), flush=True)
    work = args.workdir / "frcnn"
    if args.frcnn_seconds is None:
        seconds, frcnn_map = run_frcnn(train, test, work, args.threads, args.frcnn_args)
    else:
        seconds = args.frcnn_seconds
        frcnn_map = json.loads(frcnn("eval", "--model", work / "final.pt", "--data", test, "--voc2007", "--json",
                                     capture=True))["map"]
    print(f"frcnn train (tiny defaults {args.frcnn_args}): {seconds / 60:.1f} min, mAP07 {frcnn_map:.3f}",
          flush=True)
    budgets = [seconds] + ([args.peer_minutes * 60] if args.peer_minutes else [])
    peer = {}
    for budget in budgets:
        model, info = train_peer(train_m, budget, log=lambda m: print(m, flush=True))
        peer[budget] = evaluate_peer(model, test_m)
        print(f"torchvision peer, {budget / 60:.1f} min ({info['iterations']} iterations): mAP07 "
              f"{peer[budget]:.3f}", flush=True)
    print("after:", environment(torch.device("cpu")))
    print(f"\nmAP07 at the same wall time ({seconds / 60:.1f} min): frcnn {frcnn_map:.3f}, torchvision "
          f"{peer[seconds]:.3f}, ratio {frcnn_map / max(peer[seconds], 1e-9):.2f}")
    if args.peer_minutes:
        longer = peer[args.peer_minutes * 60]
        print(f"torchvision at {args.peer_minutes:g} min: {longer:.3f}; frcnn / that: "
              f"{frcnn_map / max(longer, 1e-9):.2f}")


if __name__ == "__main__":
    main()
