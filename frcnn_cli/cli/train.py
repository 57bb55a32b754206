"""Training commands."""

from __future__ import annotations

import click

from ..errors import FrcnnError


@click.command("train-rpn")
def train_rpn() -> None:
    """Steps 1 and 3 (not available yet)."""
    raise FrcnnError("not available yet")


@click.command("dump-proposals")
def dump_proposals() -> None:
    """Proposals to HDF5 (not available yet)."""
    raise FrcnnError("not available yet")


@click.command("train-detector")
def train_detector() -> None:
    """Steps 2 and 4 (not available yet)."""
    raise FrcnnError("not available yet")


@click.command("train")
def train() -> None:
    """The whole pipeline (not available yet)."""
    raise FrcnnError("not available yet")
