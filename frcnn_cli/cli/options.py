"""Options shared by several commands (``--config``, ``--set``), and how a command turns them into settings:
a ``Config`` and a ``RuntimeConfig`` for training, a prepared ``Predictor`` for a checkpoint."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import click

from ..config import PRESETS, TEST_TIME_KEYS, Config, RuntimeConfig, runtime_defaults
from ..config_io import (
    apply_overrides,
    apply_runtime_overrides,
    check_test_time_overrides,
    resolve_settings,
    split_overrides,
)

positive_int = click.IntRange(min=1)


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that refuses NaN and infinity (a NaN passes every comparison of a range)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def hold_output(path: Path | None, option: str, *, folder: bool = False, discard_on_failure: bool = False,
                inputs: dict | None = None) -> None:
    """Before any work: check that the output ``path`` (a file, or with ``folder`` a folder) can be written and
    is none of the command's ``inputs`` (option -> path(s)), and lock it until the command ends
    (``locks.output_lock``), so a second command writing it is refused naming this one. With ``discard_on_failure``
    a folder the command made is removed with its files when the command fails before ``output_complete``. Under
    ``torchrun`` only rank 0 writes, and only rank 0 locks. None: no such output."""
    if path is None or os.environ.get("RANK", "0") not in ("", "0"):
        return
    from ..locks import output_lock
    from ..output_paths import input_clash

    clash = input_clash(path, inputs or {}, option)
    if clash is not None:
        raise clash

    click.get_current_context().with_resource(output_lock(path, option=option, folder=folder,
                                                          discard_on_failure=discard_on_failure))


def output_complete(path: Path | None, *, folder: bool = False) -> None:
    """The output ``path`` of ``hold_output`` is written whole: a later failure of the command keeps it."""
    if path is not None:
        from ..locks import mark_complete

        mark_complete(path, folder=folder)


PRESET_HELP = f"{', '.join(PRESETS)} (vgg16 is the default), or a .toml file."


def checkpoint_set_option(f):
    """Repeatable ``--set key=value`` for a command that runs a trained checkpoint."""
    return click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                        help="Change a test-time setting of the checkpoint's config or a runtime setting, e.g. "
                             "--set input.test_scale=800, roi_head.fc_svd_rank=1024, runtime.cpu_winograd=false, "
                             "runtime.num_workers=0 (repeatable; the test-time keys: "
                             f"{', '.join(TEST_TIME_KEYS)}).")(f)


def check_checkpoint_overrides(set_: tuple[str, ...], checkpoint, advice: str = "drop it") -> None:
    """A ``ConfigError`` for a ``--set`` key that a checkpoint fixes (before reading it): only
    ``config.TEST_TIME_KEYS`` and the runtime keys may change on a trained model."""
    check_test_time_overrides(set_, checkpoint, advice)


def config_options(f):
    """``--config PRESET|FILE`` and repeatable ``--set key=value``."""
    f = click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override one setting, e.g. --set rpn.nms_thresh=0.6 or runtime.num_workers=0 "
                          "(repeatable).")(f)
    f = click.option("--config", default=None, metavar="PRESET|FILE", help=PRESET_HELP)(f)
    return f


def load_cli_config(config: str | None, set_: tuple[str, ...], seed: int | None) -> tuple[Config, RuntimeConfig]:
    """The preset or file, then ``--set`` overrides (recipe and runtime keys apart), then ``--seed``."""
    cfg, runtime = resolve_settings(config)
    config_items, runtime_items = split_overrides(set_)
    cfg = apply_overrides(cfg, config_items)
    return (cfg if seed is None else replace(cfg, seed=seed)), apply_runtime_overrides(runtime, runtime_items)


def load_predictor(model_path: Path, set_: tuple[str, ...], device, *, require: tuple[str, ...], mode: str = "test",
                   **settings):
    """The checkpoint at ``model_path`` as a ``Predictor`` on ``device``: ``--set`` split into test-time keys
    (into ``InferenceSettings``) and runtime keys (over the preset's runtime defaults), ``settings`` the
    command's flags (``InferenceSettings.from_config``). The process settings are set here, once. An exported
    model file (``frcnn export``: ONNX, TorchScript) gives an ``ExportedPredictor`` with the same interface."""
    from ..devices import process_settings
    from ..export.runtime import exported_format
    from ..inference import InferenceSettings, Predictor
    from ..model.checkpoint import load_model

    if exported_format(model_path) is not None:  # frcnn export's file: the same interface (export/predictor.py)
        from ..export.predictor import load_exported

        predictor = load_exported(model_path, device, set_=set_, mode=mode, **settings)
        process_settings(predictor.device, predictor.runtime, autotune=True)
        return predictor
    model, _ = load_model(model_path, device=device, require=require)
    config_items, runtime_items = split_overrides(set_)
    runtime = apply_runtime_overrides(runtime_defaults(model.cfg.name), runtime_items)
    inference = InferenceSettings.from_config(model.cfg, mode=mode, overrides=config_items, **settings)
    process_settings(device, runtime, autotune=True)
    return Predictor(model, device, inference, runtime, owned=True)

