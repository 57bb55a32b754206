"""docs/cli.md is generated from the click definitions and must match them; what a command's help says of
the docs' measurements agrees with them."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from frcnn_cli.cli.docgen import render_cli_markdown
from frcnn_cli.cli.main import cli

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
DEMO_MD = CLI_MD.with_name("demo.md")
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


def test_the_demo_help_quotes_the_time_docs_demo_md_measured():
    """``frcnn demo --help`` said "about 6 minutes" after the demo had become a 3½-minute run."""
    row = next(line for line in DEMO_MD.read_text(encoding="utf-8").splitlines() if "the demo's default" in line)
    measured = re.search(r"\*\*(\d+ min \d+ s)\*\*", row).group(1)
    said = " ".join(CliRunner().invoke(cli, ["demo", "--help"]).output.split())
    assert f"({measured} measured: docs/demo.md)" in said
