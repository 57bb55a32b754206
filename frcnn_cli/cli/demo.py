"""``frcnn demo``: parse, run the library's demo, render its progress and a short report with rich."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..data.synthetic_sizes import DEFAULT_SEED, DEFAULT_TEST, DEFAULT_TRAIN
from ..devices import resolve_device

if TYPE_CHECKING:
    from ..train.loop import LoopState
from . import console
from .options import hold_output, positive_int

_STEPS = {"data": "synthetic set", "rpn1": "step 1: RPN", "props1": "step 1: proposals",
          "det1": "step 2: Fast R-CNN", "rpn2": "step 3: RPN, shared convs frozen", "props2": "step 3: proposals",
          "final": "step 4: Fast R-CNN, shared convs frozen", "eval": "VOC2007 evaluation of the test split",
          "pictures": "pictures: detections and recall vs IoU"}


class _Reporter:
    """Step lines, and one progress bar (or plain line every 50 iterations) per training step."""

    def __init__(self) -> None:
        self.bar: console.ProgressReporter | None = None
        self.started = time.perf_counter()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def on_step(self, name: str, what: str) -> None:
        label = _STEPS.get(name, name)
        if what == "start":
            self.started = time.perf_counter()
            console.info(f"[bold]{label}[/bold] …")
        elif what == "done":
            self._close()
            console.info(f"  done in {time.perf_counter() - self.started:.0f} s")
        else:
            console.info(f"[dim]{label}: already done[/dim]")

    def on_log(self, state: LoopState) -> None:
        if self.bar is None:
            self.bar = console.ProgressReporter("  training", state.total, every=50).__enter__()
        text = "  ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in state.losses.items() if k != "loss")
        self.bar.update(state.iteration, text)


def _report(summary: dict, workdir: Path) -> None:
    rows = [[name, "n/a" if ap is None else f"{ap:.3f}", str(summary["npos"].get(name, 0))]
            for name, ap in summary["ap"].items()]
    value = summary["map"]
    rows.append(["[bold]mean[/bold]", "n/a" if value is None else f"[bold]{value:.3f}[/bold]", ""])
    console.table(f"VOC2007 AP on {summary['test_images']} test images", ["class", "AP", "objects"], rows)
    minutes, seconds = divmod(summary["seconds"], 60)
    console.info(f"mAP [bold]{'n/a' if value is None else f'{value:.3f}'}[/bold] in {int(minutes)} min "
                 f"{seconds:.0f} s on {summary['device']} ({summary['config']} preset)")
    pictures = summary["pictures"]
    if pictures["detections"]:
        console.info(f"detections drawn: {Path(pictures['detections'][0]).parent}/ "
                     f"({len(pictures['detections'])} images)")
    if pictures["recall_vs_iou"]:
        console.info(f"recall vs IoU:    {pictures['recall_vs_iou']}")
    console.info(f"final model:      {summary['model']}")
    for note in summary["notes"]:
        console.warn(note)


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("frcnn-demo"),
              show_default=True, help="Folder for the data, the run, the pictures and summary.json; rerun to resume.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--train", "n_train", type=positive_int, default=DEFAULT_TRAIN, show_default=True,
              help="Synthetic training images.")
@click.option("--test", "n_test", type=positive_int, default=DEFAULT_TEST, show_default=True,
              help="Synthetic test images.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed of the synthetic set.")
@click.option("--threads", type=positive_int, default=None,
              help="PyTorch threads on the CPU [the cores idle at the start, at least half of them].")
@click.option("--iters", type=positive_int, default=None, hidden=True,
              help="Iterations of every training step (quick runs; the preset's otherwise).")
def demo(workdir, device, n_train, n_test, seed, threads, iters) -> None:
    """Synthetic shapes, the paper's 4-step training (tiny preset), VOC2007 evaluation, pictures.

    Ends with WORKDIR/summary.json ({"map", "seconds", "ap", "pictures", …}), whose path is printed.
    About 3½ minutes on an idle 2-core CPU (3 min 28 s measured: docs/demo.md); rerunning the same command
    continues an interrupted demo.
    """
    from dataclasses import replace

    from ..config import runtime_defaults
    from ..demo import PRESET, default_threads, run_demo
    from ..devices import process_settings

    hold_output(workdir, "--workdir", folder=True)
    dev = resolve_device(device)
    runtime = replace(runtime_defaults(PRESET), threads=threads or default_threads())
    process_settings(dev, runtime)
    console.info(f"frcnn demo in {workdir} on {dev}: {n_train} training and {n_test} test images")
    reporter = _Reporter()
    summary = run_demo(workdir, device=dev, n_train=n_train, n_test=n_test, iters=iters, seed=seed,
                       runtime=runtime, on_log=reporter.on_log, on_step=reporter.on_step)
    _report(summary, workdir)
    click.echo(str((workdir / "summary.json").resolve()))
