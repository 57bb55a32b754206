"""docs/cli.md is generated from the click definitions and must match them."""

from __future__ import annotations

from pathlib import Path

from frcnn_cli.cli.docgen import render_cli_markdown
from frcnn_cli.cli.main import cli

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
STALE = "docs/cli.md is stale: run python -m frcnn_cli.cli.docgen > docs/cli.md"


def test_cli_md_is_generated_from_the_click_definitions():
    assert CLI_MD.read_text(encoding="utf-8") == render_cli_markdown(), STALE


def test_cli_md_names_every_command_and_option():
    text = render_cli_markdown()

    def walk(cmd, path):
        yield cmd, path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    for cmd, path in walk(cli, "frcnn"):
        assert f"## {path}\n" in text, path
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in text, f"{path} {opt}"
