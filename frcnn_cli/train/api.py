"""``frcnn train`` from Python: ``frcnn_cli.train(data, workdir, …)`` (the command calls it too) reads the
manifests, settles the config, the budget and the validation, locks the run folder and hands a
``PipelineRequest`` to ``pipeline.run_pipeline``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from ..callbacks import OnNote, StepCallback
from ..config import Config, RuntimeConfig, runtime_defaults
from ..config_io import Overrides, resolve_settings
from ..data.manifest import read_manifest, require_annotations
from ..devices import resolve_device
from ..locks import output_lock
from . import distributed
from .budget import budget_seconds
from .budget import now as budget_now
from .data_schedule import carves
from .loop import LoopState
from .pipeline import PipelineRequest, plans, run_pipeline
from .schedule import StepPlan
from .validation import read_val_manifest


def train(data: str | os.PathLike, workdir: str | os.PathLike, *, config: str | Config | None = None,
          overrides: Overrides | Sequence[str] = (), mode: str | None = None, iters: int | None = None,
          epochs: float | None = None, time_budget: str | float | None = None,
          val: str | os.PathLike | None = None, val_every: int | None = None,
          patience: int | None = None, seed: int | None = None, device: torch.device | str | None = None,
          checkpoint_every: int | None = None, resume: bool = False, budget_from: float | None = None,
          progress: Callable[[LoopState], None] | None = None, on_step: StepCallback | None = None,
          on_note: OnNote | None = None, on_warning: OnNote | None = None,
          on_plan: Callable[[list[tuple[str, StepPlan]]], None] | None = None,
          on_validation: Callable[[str, dict], None] | None = None,
          on_runtime: Callable[[torch.device, RuntimeConfig], None] | None = None) -> Path:
    """``frcnn train`` from Python: the paper's four steps (or ``mode="joint"``) on the manifest ``data`` in the
    run folder ``workdir``, resumable (rerun to continue); returns the path of the final detector.

    ``config``: a preset name, a TOML file or a ``Config`` (default vgg16), then ``overrides`` (``--set``
    items) and ``seed``; ``mode``: ``"alternating"`` or ``"joint"`` (default the preset's ``solver.mode``);
    ``iters``/``epochs``: each step's length; ``time_budget`` (``"15m"`` or seconds): the whole run fitted to
    it, counted from ``budget_from`` (a ``budget.now()`` reading; default the call); with none of the three the
    length is chosen from the data where the preset validates (``tiny``: on a split carved from ``data`` unless
    ``val`` is given), else the preset's epochs. ``val``: a validation manifest (the best checkpoint of each
    step is kept, with ``val_every`` and ``patience``);
    ``checkpoint_every``: iterations between resumable states (default a tenth of the first detector step).
    ``progress(state)`` gets a ``train.loop.LoopState`` every ``runtime.log_every`` iterations (step,
    iteration of total, losses, lr, images/s); ``on_step(name, "start"|"done"|"skip")``, ``on_note`` and
    ``on_warning`` (sentences), ``on_plan`` (each step's plan) and ``on_validation(step, row)`` tell the rest;
    ``on_runtime(device, runtime)`` comes before the work (the command line sets its threads there). The
    folder is locked while it runs (``locks.output_lock``).

    >>> final = frcnn_cli.train("synth/trainval.json", "run", config="tiny", epochs=1, device="cpu",
    ...                         progress=lambda s: print(s.iteration, s.total, s.losses))  # doctest: +SKIP
    """
    called = budget_now()
    workdir = Path(workdir)
    lock = output_lock(workdir, option="--workdir", folder=True) if distributed.is_main() else nullcontext()
    with lock:
        manifest = read_manifest(data)
        require_annotations(manifest, data, "there is nothing to train on: give an annotated manifest (frcnn "
                                            "prepare of a trainval split)")
        seconds = budget_seconds(time_budget, iters=iters, epochs=epochs)
        cfg, runtime = _train_settings(config, Overrides.parse(overrides), seed)
        val_manifest = read_val_manifest(val, manifest, data, iters=iters, epochs=epochs, val_every=val_every,
                                         patience=patience, carving=carves(cfg, iters=iters, epochs=epochs))
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        if on_runtime is not None:
            on_runtime(dev, runtime)
        req = PipelineRequest(cfg=cfg, manifest=manifest, manifest_path=Path(data), workdir=workdir, device=dev,
                              runtime=runtime, mode=mode, iters=iters, resume=resume, on_log=progress,
                              on_step=on_step, on_warning=on_warning, epochs=epochs, val_manifest=val_manifest,
                              val_path=Path(val) if val is not None else None, val_every=val_every,
                              patience=patience, on_plan=on_plan, on_note=on_note, on_validation=on_validation,
                              seconds=seconds, started=budget_from if budget_from is not None else called)
        req.checkpoint_every = checkpoint_every if checkpoint_every is not None else _default_checkpoint_every(req)
        return run_pipeline(req)


def _train_settings(config: str | Config | None, overrides: Overrides,
                    seed: int | None) -> tuple[Config, RuntimeConfig]:
    """The preset, file or ``Config``, then the ``--set`` overrides (recipe and runtime keys apart), then the seed."""
    cfg, runtime = (config, runtime_defaults(config.name)) if isinstance(config, Config) else resolve_settings(config)
    cfg = overrides.apply(cfg)
    return (cfg if seed is None else replace(cfg, seed=seed)), overrides.apply_runtime(runtime)


def _default_checkpoint_every(req: PipelineRequest) -> int:
    """A tenth of the first detector step's iterations (100 without one): a resumable state that often."""
    first_detector = next((p for _, p in plans(req, req.cfg) if p.kind != "rpn"), None)
    return max(1, (first_detector.iterations if first_detector else 100) // 10)
