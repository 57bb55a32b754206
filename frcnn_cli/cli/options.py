"""Options shared by several commands: ``--config``, ``--set`` and how they make a Config."""

from __future__ import annotations

from dataclasses import replace

import click

from ..config import Config, apply_overrides, resolve_config

positive_int = click.IntRange(min=1)


def config_options(f):
    """``--config PRESET|FILE`` and repeatable ``--set key=value``."""
    f = click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                     help="Override one setting, e.g. --set rpn.nms_thresh=0.6 (repeatable).")(f)
    f = click.option("--config", default=None, metavar="PRESET|FILE",
                     help="vgg16 (default), zf, resnet50, resnet101, tiny, or a .toml file.")(f)
    return f


def load_cli_config(config: str | None, set_: tuple[str, ...], seed: int | None,
                    base: Config | None = None) -> Config:
    """The preset or file, then ``--set`` overrides, then ``--seed``."""
    cfg = base if base is not None else resolve_config(config)
    cfg = apply_overrides(cfg, list(set_))
    return cfg if seed is None else replace(cfg, seed=seed)
