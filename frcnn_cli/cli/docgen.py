"""docs/cli.md, generated from the click definitions so that the reference cannot drift from ``--help``.

Regenerate with ``python -m frcnn_cli.cli.docgen > docs/cli.md``; ``tests/test_docs.py`` fails while the
file differs from :func:`render_cli_markdown`. The page walks the ``frcnn`` group in the order of its
commands (the workflow's), subgroups (``prepare``) included, and gives for each command its usage line,
its help text and a table of its options: names, type or choices, default, help.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap

import click

from .main import cli

HEADER = """\
# Command reference

<!-- Generated from the click definitions by `python -m frcnn_cli.cli.docgen > docs/cli.md`;
     do not edit by hand: tests/test_docs.py checks that this file is up to date. -->

Every command prints its own help with `-h` or `--help`. Results go to stdout, progress and tables to
stderr; a user error is one `Error: …` line on stderr with a non-zero exit (see
[errors.md](errors.md)). A default of "—" means the option is off or unset, and the value then comes
from the model's or the preset's config where the help says so.
"""


def _anchor(title: str) -> str:
    """The GitHub anchor of a heading: lower case, spaces to '-', punctuation other than '-'/'_' dropped."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _paragraphs(text: str) -> list[tuple[bool, list[str]]]:
    """``(verbatim, lines)`` per paragraph of a click help text; a paragraph after ``\\b`` is verbatim."""
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text or "").split("\f")[0]):
        lines = block.splitlines()
        verbatim = bool(lines) and lines[0].strip() == "\b"
        if verbatim:
            lines = lines[1:]
        if any(line.strip() for line in lines):
            out.append((verbatim, lines))
    return out


def _help_markdown(text: str) -> str:
    """Help text as Markdown: prose paragraphs joined into lines, ``\\b`` blocks as code blocks."""
    parts = []
    for verbatim, lines in _paragraphs(text):
        if verbatim:
            body = textwrap.dedent("\n".join(lines)).strip("\n")
            parts.append(f"```text\n{body}\n```")
        else:
            parts.append(_escape(" ".join(line.strip() for line in lines)))
    return "\n\n".join(parts)


def _summary(cmd: click.Command) -> str:
    """The first prose paragraph of a command's help, on one line."""
    for verbatim, lines in _paragraphs(cmd.help or ""):
        if not verbatim:
            return _escape(" ".join(line.strip() for line in lines))
    return ""


def _escape(text: str) -> str:
    """Prose for Markdown: ``<`` as an entity, so that ``VOC<year>`` is not taken for an HTML tag."""
    return text.replace("<", "&lt;")


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, HTML characters and pipes escaped."""
    return _escape(" ".join(str(text).split())).replace("|", "\\|")


def _range(t: click.IntRange | click.FloatRange) -> str:
    bounds = []
    if t.min is not None:
        bounds.append(f"{'>' if t.min_open else '≥'} {t.min:g}")
    if t.max is not None:
        bounds.append(f"{'<' if t.max_open else '≤'} {t.max:g}")
    return " and ".join(bounds)


def _type(param: click.Parameter) -> str:
    """What a parameter takes: ``flag``, the choices, a number and its range, a file, a folder, or text."""
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    t = param.type
    if isinstance(t, click.Choice):
        kind = " | ".join(f"`{c}`" for c in t.choices)
    elif isinstance(t, (click.IntRange, click.FloatRange)):
        base = "integer" if isinstance(t, click.IntRange) else "number"
        kind = f"{base} {_range(t)}".strip()
    elif isinstance(t, click.Path):
        kind = "file" if not t.dir_okay else "folder" if not t.file_okay else "path"
    elif t is click.INT:
        kind = "integer"
    elif t is click.FLOAT:
        kind = "number"
    elif param.metavar:
        kind = f"`{param.metavar}`"
    else:
        kind = "text"
    if isinstance(param, click.Option) and param.multiple:
        kind += ", repeatable"
    return kind


def _is_unset(value: object) -> bool:
    # click >= 8.2 marks "no default" with a sentinel object instead of None
    return value is None or type(value).__name__ == "Sentinel"


def _default(param: click.Option) -> str:
    if param.required:
        return "required"
    value = param.default
    if param.is_flag:
        return "on" if value is True else "off"
    if _is_unset(value) or (isinstance(value, (tuple, list)) and not value):
        return "—"
    return f"`{value}`"


def _options_table(cmd: click.Command) -> list[str]:
    options = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    if not options:
        return []
    rows = ["| option | takes | default | what it does |", "|---|---|---|---|"]
    for opt in options:
        names = ", ".join(f"`{n}`" for n in (*opt.opts, *opt.secondary_opts))
        rows.append(f"| {names} | {_cell(_type(opt))} | {_cell(_default(opt))} | {_cell(opt.help or '')} |")
    return rows


def _arguments(cmd: click.Command) -> list[str]:
    lines = []
    for arg in (p for p in cmd.params if isinstance(p, click.Argument)):
        name = arg.metavar or arg.name.upper()
        if arg.nargs == -1:
            count = "one or more" if arg.required else "zero or more"
        else:
            count = f"{'required' if arg.required else 'optional'}, {'one' if arg.nargs == 1 else arg.nargs}"
        lines.append(f"- `{name}` ({count}): {_type(arg)}")
    return lines


def _walk(cmd: click.Command, path: list[str], ctx: click.Context | None):
    """``(command, its full name, its context)`` for ``cmd`` and every command below it, in listed order."""
    ctx = click.Context(cmd, info_name=path[-1], parent=ctx)
    yield cmd, " ".join(path), ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            yield from _walk(cmd.get_command(ctx, name), [*path, name], ctx)


def _command_section(cmd: click.Command, name: str, ctx: click.Context) -> list[str]:
    usage = " ".join([name, *cmd.collect_usage_pieces(ctx)])
    lines = [f"## {name}", "", "```text", usage, "```", ""]
    help_text = _help_markdown(cmd.help or "")
    if help_text:
        lines += [help_text, ""]
    if isinstance(cmd, click.Group):
        lines += ["Commands:", ""]
        lines += [f"- [{name} {sub}](#{_anchor(f'{name} {sub}')}): {_summary(cmd.get_command(ctx, sub))}"
                  for sub in cmd.list_commands(ctx)]
        lines.append("")
    arguments = _arguments(cmd)
    if arguments:
        lines += ["Arguments:", "", *arguments, ""]
    table = _options_table(cmd)
    if table:
        lines += ["Options:", "", *table, ""]
    return lines


def render_cli_markdown() -> str:
    """docs/cli.md: every ``frcnn`` command and option, from the click definitions."""
    lines = [HEADER]
    for cmd, name, ctx in _walk(cli, ["frcnn"], None):
        lines += _command_section(cmd, name, ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    # bytes, so that a redirect writes UTF-8 whatever the locale
    sys.stdout.buffer.write(render_cli_markdown().encode("utf-8"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
