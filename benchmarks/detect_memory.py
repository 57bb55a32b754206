"""Resident memory of ``frcnn detect`` on a folder of many small images, after 200 and after 5,000 images:
the streaming command (images found lazily, entries appended to ``DIR/detections.json.partial``, drawings
written as they are made) against the library's all-in-memory path, which is what the command did before
(``find_images`` lists every file, ``detect_images`` keeps every entry, ``save_detections`` draws at the end).

Each side runs in its own fresh process (``--child``), one thread, no loader workers, the CLI's allocator
settings (``devices.keep_freed_memory``: freed memory is kept, so the resident size never falls back), and
reads its own ``VmRSS`` from ``/proc/self/status`` whenever the detected count reaches a mark. The images:
``--images`` JPEGs of 64x48 (copies of 50 synthetic scenes) in one folder; the model: the tiny preset at 64
px with random weights; ``--score-thresh 0.15`` keeps about 100 detections an image (a random model's scores
are near 1/6), the heaviest entries detect writes.

    python benchmarks/detect_memory.py                 # 5,000 images: a few minutes a side on a 2-core CPU
    python benchmarks/detect_memory.py --images 1000 --marks 200,1000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import environment

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_inputs(work: Path, count: int) -> tuple[Path, Path]:
    """``count`` 64x48 JPEGs in ``work/images`` and a random tiny checkpoint ``work/model.pt``."""
    import torch

    from frcnn_cli.config import get_preset
    from frcnn_cli.config_io import apply_overrides
    from frcnn_cli.data.synthetic import make_synthetic_set
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    make_synthetic_set(work / "set", n_train=50, n_test=0, seed=0, image_size=(64, 48))
    scenes = sorted((work / "set" / "JPEGImages").glob("*.jpg"))
    folder = work / "images"
    folder.mkdir()
    for i in range(count):
        shutil.copyfile(scenes[i % len(scenes)], folder / f"{i:07d}.jpg")
    cfg = apply_overrides(get_preset("tiny"), ["input.test_scale=64", "input.max_size=96", "anchors.auto=false"])
    torch.manual_seed(0)
    save_checkpoint(work / "model.pt", FasterRCNN(cfg, ["circle", "bottle", "car", "triangle", "donut"]),
                    stage="final", provenance={})
    return folder, work / "model.pt"


class Marks:
    """A progress callback that records the resident size when the count first reaches each mark."""

    def __init__(self, marks: list[int]) -> None:
        self.marks, self.rss = sorted(marks), {}

    def __call__(self, done: int, total: int) -> None:
        for mark in self.marks:
            if done >= mark and mark not in self.rss:
                self.rss[mark] = rss_mb()


def child(side: str, folder: Path, model: Path, out: Path, marks: list[int], score: float) -> dict:
    import torch

    from frcnn_cli.devices import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    record = Marks(marks)
    if side == "stream":
        from frcnn_cli.cli import console
        from frcnn_cli.cli.main import cli

        real = console.ProgressReporter.__call__
        console.ProgressReporter.__call__ = lambda self, done, total: (record(done, total), real(self, done, total))
        cli.main(["detect", str(folder), "--model", str(model), "--out", str(out), "--score-thresh", str(score),
                  "--set", "runtime.num_workers=0", "--set", "runtime.threads=1", "--device", "cpu"],
                 standalone_mode=False)
    else:
        from frcnn_cli.data.images import find_images
        from frcnn_cli.detect import detect_images, save_detections
        from frcnn_cli.inference import InferenceSettings, Predictor
        from frcnn_cli.model.checkpoint import load_model

        loaded, _ = load_model(model, device=torch.device("cpu"), require=("rpn", "roi_head"))
        from frcnn_cli.config import RuntimeConfig

        predictor = Predictor(loaded, "cpu", InferenceSettings.from_config(loaded.cfg), RuntimeConfig(num_workers=0),
                              owned=True)
        results = detect_images(predictor, find_images([folder]), score_thresh=score, progress=record)
        save_detections(results, out, classes=predictor.classes)
    end = rss_mb()  # before reading the results back here
    detections = json.loads((out / "detections.json").read_text())
    return {"rss_mb": record.rss, "end_rss_mb": end, "images": len(detections),
            "detections_per_image": sum(len(e["detections"]) for e in detections) / max(1, len(detections))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--marks", default="200,5000", help="counts at which the resident size is read")
    p.add_argument("--score-thresh", type=float, default=0.15)
    p.add_argument("--child", choices=("stream", "in-memory"), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    marks = [int(m) for m in args.marks.split(",")]
    if args.child:
        result = child(args.child, args.work / "images", args.work / "model.pt", args.work / f"out-{args.child}",
                       marks, args.score_thresh)
        print(json.dumps(result))
        return
    import torch

    print(environment(torch.device("cpu")))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_inputs(work, args.images)
        results = {}
        for side in ("stream", "in-memory"):
            cmd = [sys.executable, str(HERE / "detect_memory.py"), "--child", side, "--work", str(work), "--images",
                   str(args.images), "--marks", args.marks, "--score-thresh", str(args.score_thresh)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.images} images of 64x48, {results['stream']['detections_per_image']:.0f} detections an image")
    print("| images detected | " + " | ".join(f"{m}" for m in marks) + " | at the end |")
    for side, label in (("stream", "frcnn detect (streaming)"), ("in-memory", "all in memory (before)")):
        r = results[side]
        cells = " | ".join(f"{r['rss_mb'].get(str(m), r['rss_mb'].get(m, float('nan'))):.0f} MB" for m in marks)
        print(f"| {label} | {cells} | {r['end_rss_mb']:.0f} MB |")
    grow = {s: results[s]["rss_mb"][str(marks[-1])] - results[s]["rss_mb"][str(marks[0])] for s in results}
    print(f"growth from {marks[0]} to {marks[-1]} images: streaming {grow['stream']:+.0f} MB, all in memory "
          f"{grow['in-memory']:+.0f} MB")


if __name__ == "__main__":
    main()
