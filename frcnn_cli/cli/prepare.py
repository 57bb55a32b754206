"""placeholder until the prepare helper writes it"""

from __future__ import annotations

import click


@click.group("prepare")
def prepare() -> None:
    """Turn a dataset into a manifest."""
