"""Options shared by several commands (``--config``, ``--set``), and how a command turns them into settings:
a ``Config`` and a ``RuntimeConfig`` for training, the ``Overrides`` of a checkpoint (checked before it is read)
and the process settings of a command that runs one (``inference_process``)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import click

from ..config import PRESETS, TEST_TIME_KEYS, Config, RuntimeConfig
from ..config_io import Overrides, resolve_settings

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


CHECKPOINT_SET_HELP = ("Change a test-time setting of the checkpoint's config or a runtime setting, e.g. --set "
                       "input.test_scale=800, roi_head.fc_svd_rank=1024, runtime.cpu_winograd=false, "
                       f"runtime.num_workers=0 (repeatable; the test-time keys: {', '.join(TEST_TIME_KEYS)}).")


def checkpoint_set_option(f, help: str = CHECKPOINT_SET_HELP):
    """Repeatable ``--set key=value`` for a command that runs a trained checkpoint."""
    return click.option("--set", "set_", multiple=True, metavar="KEY=VALUE", help=help)(f)


def model_run_options(set_help: str = CHECKPOINT_SET_HELP):
    """The options of every command that runs a model on images (``detect``, ``eval``, ``bench``):
    ``--batch-size``, ``--device`` and repeatable ``--set`` (``set_help``: what ``--set`` may change there)."""

    def decorate(f):
        f = checkpoint_set_option(f, set_help)
        f = click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")(f)
        return click.option("--batch-size", type=positive_int, default=1, show_default=True,
                            help="Images per forward pass.")(f)

    return decorate


def checkpoint_overrides(set_: tuple[str, ...], checkpoint, advice: str = "drop it") -> Overrides:
    """``--set`` of a command that runs a checkpoint, parsed once; a ``ConfigError`` for a key the checkpoint
    fixes (before anything is read): only ``config.TEST_TIME_KEYS`` and the runtime keys may change on a
    trained model."""
    overrides = Overrides.parse(set_)
    overrides.check_test_time(checkpoint, advice)
    return overrides


def inference_process(device, runtime: RuntimeConfig) -> None:
    """The process settings of an inference command (``load_predictor``'s ``on_runtime``): threads, and
    cuDNN's autotuner on CUDA."""
    from ..devices import process_settings

    process_settings(device, runtime, autotune=True)


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
    overrides = Overrides.parse(set_)
    cfg = overrides.apply(cfg)
    return (cfg if seed is None else replace(cfg, seed=seed)), overrides.apply_runtime(runtime)
