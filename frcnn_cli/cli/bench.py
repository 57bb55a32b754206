"""``frcnn bench``."""

from __future__ import annotations

import click

from ..errors import FrcnnError


@click.command("bench")
def bench() -> None:
    """Table-4 timing breakdown (not available yet)."""
    raise FrcnnError("frcnn bench is not available yet in this version")
