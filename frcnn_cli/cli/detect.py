"""``frcnn detect`` (filled in by the detection issue)."""

from __future__ import annotations

import click

from ..errors import FrcnnError


@click.command("detect")
def detect() -> None:
    """Detect objects in images and folders (not available yet)."""
    raise FrcnnError("frcnn detect is not available yet in this version")
