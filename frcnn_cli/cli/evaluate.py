"""``frcnn eval`` (filled in by the evaluation issue)."""

from __future__ import annotations

import click

from ..errors import FrcnnError


@click.command("eval")
def eval_command() -> None:
    """VOC AP of a detector, or recall of a proposal file (not available yet)."""
    raise FrcnnError("frcnn eval is not available yet in this version")
