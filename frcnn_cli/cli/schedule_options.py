"""The schedule and validation options of the training commands (``--epochs``, ``--time``, ``--val``,
``--val-every``, ``--patience``) and how their outcome is shown: the plan at the start, the validation figures
on the progress line, the best checkpoint at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.markup import escape

from ..data.manifest import Manifest
from . import console
from .options import FiniteFloatRange

_EPOCHS_HELP = ("Passes over the training images (and their mirror images) of EACH step, instead of the "
                "preset's (lr drops and warm-up scale with it); not with --iters.")


_TIME_HELP = ("A time budget for the whole run (15m, 90s, 2h, 1h30m): every step's length, lr drops and "
              "validations fitted to it from the measured speed, the best checkpoint kept; not with --epochs or "
              "--iters.")


def schedule_options(f):
    """``--epochs``, ``--time``, ``--val``, ``--val-every``, ``--patience`` (applied under the existing options)."""
    f = click.option("--patience", type=click.IntRange(min=1), default=None,
                     help="With validation: after K validations without a better figure the lr drops early, and "
                          "after K more with no drop left the step stops (default: the preset's solver.patience "
                          "when no length is given, else never stop early).")(f)
    f = click.option("--val-every", type=click.IntRange(min=1), default=None,
                     help="Epochs between validations [about a tenth of the training time].")(f)
    f = click.option("--val", "val", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Validation manifest (e.g. NAME.val.json of frcnn prepare folder --val-fraction): "
                          "RPN steps measure proposal recall, detector steps VOC07 mAP; the best checkpoint "
                          "is kept.")(f)
    f = click.option("--time", "time_budget", default=None, metavar="DURATION", help=_TIME_HELP)(f)
    f = click.option("--epochs", type=FiniteFloatRange(min=0, min_open=True), default=None, help=_EPOCHS_HELP)(f)
    return f


def read_val(val: Path | None, train: Manifest, data: Path, *, iters: int | None, epochs: float | None,
             val_every: int | None, patience: int | None, carving: bool = False) -> Manifest | None:
    """The validation manifest, checked against the training one; the option combinations checked first
    (``train.validation.read_val_manifest``); ``carving``: without ``--val`` the run validates on a split it
    carves (``frcnn train``)."""
    from ..train.validation import read_val_manifest

    return read_val_manifest(val, train, data, iters=iters, epochs=epochs, val_every=val_every, patience=patience,
                             carving=carving)


def show_plan(rows: list[tuple[str, object]], epochs: float | None = None) -> None:
    """The plan of each training step: images, epochs, iterations, lr drops, warm-up; and what ``--epochs``
    (``epochs``) became where rounding to whole iterations changed it."""
    from ..train.schedule import rounding_note

    table = [[name, f"{p.images}" + (" ×2 flipped" if p.entries > p.images else ""), f"{p.batch}",
              f"{p.epochs:.2f}", f"{p.iterations:,}", ", ".join(f"{d:,}" for d in p.drops) or "-",
              f"{p.warmup:,}", p.source] for name, p in rows]
    console.table("training plan", ["step", "images", "per iteration", "epochs", "iterations", "lr drops at",
                                    "warm-up", "length from"], table)
    for name, plan in rows:
        note = rounding_note(plan, epochs, name)
        if note is not None:
            console.info(escape(note))


@dataclass
class ValidationView:
    """Keeps the latest validation for the progress line, tells lr drops, early stops and the time estimate."""

    step: str = ""
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    estimated: set = field(default_factory=set)

    def __call__(self, row: dict) -> None:
        epoch = row.get("epoch")
        if row.get("event") == "lr_drop":
            console.info(f"{self.step}: no better validation in {row['patience']} tries: lr dropped early, "
                         f"to {row['lr']:.1e}, at epoch {epoch:g} (iteration {row['iteration']})")
            return
        if row.get("event") == "early_stop":
            console.info(f"{self.step}: early stop at epoch {epoch:g} (iteration {row['iteration']}); the best "
                         f"was at epoch {row['best_epoch']:g}")
            return
        if "val_map" in row:
            figure = f"val_map={row['val_map']:.3f}"
        else:
            recall = row["val_recall"]
            figure = "val_recall@0.5/0.7=" + "/".join(f"{v:.3f}" for v in recall.values())
        self.text = f"{figure}{' *' if row.get('best') else ''} (ep {epoch:g})"
        console.info(f"{self.step + ': ' if self.step else ''}epoch {epoch:g}, iteration {row['iteration']}: "
                     f"{figure}{' (best so far)' if row.get('best') else ''} in {row['val_seconds']:.1f} s")


class Estimates:
    """After a step's first timed iterations (its second progress line), how long it and the rest of the run
    will take at that speed (an upper bound for the steps whose shared convs are frozen: they are faster)."""

    def __init__(self) -> None:
        self.plans: dict[str, object] = {}
        self.current = ""
        self.seen: dict[str, int] = {}

    def set_plans(self, rows: list[tuple[str, object]]) -> None:
        self.plans = dict(rows)
        self.current = self.current or (rows[0][0] if rows else "")

    def start(self, step: str) -> None:
        self.current = step

    def __call__(self, state) -> None:
        from ..train import distributed

        plan = self.plans.get(self.current)
        count = self.seen[self.current] = self.seen.get(self.current, 0) + 1
        if plan is None or count != 2 or state.images_per_s <= 0:
            return
        per_image = 1.0 / (state.images_per_s * distributed.world_size())
        names = list(self.plans)
        later = names[names.index(self.current) + 1:]
        this = (state.total - state.iteration) * plan.batch * per_image
        rest = sum(self.plans[n].iterations * self.plans[n].batch for n in later) * per_image
        tail = f"; the steps after it at most about {_duration(rest)} more" if later else ""
        console.info(f"{escape(self.current)}: about {_duration(this)} left at {state.images_per_s:.1f} img/s{tail}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def best_summary(path: Path, last: Path | None = None) -> str | None:
    """Which validation a best checkpoint holds, as one line (None when it holds none); it says so when no
    validation beat the first one (ties keep the later checkpoint, so a flat figure keeps the last)."""
    from ..model.checkpoint import read_checkpoint

    provenance = read_checkpoint(path).get("provenance") or {}
    best = provenance.get("best")
    if not best:
        return None
    figure = next((f"{k}={v if not isinstance(v, dict) else v.get('0.7')}" for k, v in best.items()
                   if k in ("val_map", "val_recall")), "")
    where = f" (the last one is {last})" if last is not None else ""
    line = (f"{path} is the best checkpoint: {figure} at epoch {best['epoch']:g}, iteration "
            f"{best['iteration']}{where}")
    validation = provenance.get("validation") or {}
    if validation.get("improved") is False:
        line += (f"; validation never improved on its first figure ({validation['first']:.4g}): check the data, the "
                 "lr and the length of the step (metrics.jsonl lists every validation)")
    return line
