"""``frcnn demo``."""

from __future__ import annotations

import click

from ..errors import FrcnnError


@click.command("demo")
def demo() -> None:
    """Synthetic data, 4-step training, evaluation (not available yet)."""
    raise FrcnnError("frcnn demo is not available yet in this version")
