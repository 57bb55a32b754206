"""Options shared by several commands: ``--config``, ``--set`` and how they make a Config."""

from __future__ import annotations

from dataclasses import replace

import click

from ..config import Config, apply_overrides, resolve_config
from ..errors import ConfigError

positive_int = click.IntRange(min=1)

# keys that change the network's layers or what its outputs mean: a checkpoint's weights fix them
STRUCTURAL_KEYS = ("backbone", "anchors.", "rpn.conv_channels", "rpn.objectness", "roi_head.pooler",
                   "roi_head.box_target_")


def checkpoint_set_option(f):
    """Repeatable ``--set key=value`` for a command that runs a trained checkpoint."""
    return click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                        help="Change a test-time setting of the checkpoint's config, e.g. --set input.test_scale=800,"
                             " roi_head.fc_svd_rank=1024, solver.cpu_winograd=false, solver.num_workers=0 "
                             "(repeatable).")(f)


def check_checkpoint_overrides(set_: tuple[str, ...], checkpoint, advice: str = "drop it") -> None:
    """A ``ConfigError`` for a ``--set`` key that a checkpoint's weights fix (before loading it)."""
    for item in set_:
        key = item.split("=", 1)[0].strip()
        if any(key == s or key.startswith(s) for s in STRUCTURAL_KEYS):
            raise ConfigError(f"--set {item}: '{key}' is fixed by the checkpoint's weights ({checkpoint}) and "
                              f"cannot be changed here; {advice}")


def apply_checkpoint_overrides(model, set_: tuple[str, ...]) -> None:
    """``--set`` on a loaded model's config (in place); the keys were checked by ``check_checkpoint_overrides``
    before the checkpoint was read."""
    model.cfg = apply_overrides(model.cfg, list(set_))


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
