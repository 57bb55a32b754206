"""The one place rich is set up: a console on stderr, progress bars, tables.

Results go to stdout (``click.echo``); everything for a person watching goes to stderr. Progress bars are
plain log lines when stderr is not a terminal; tables there are as wide as they need to be.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

err_console = Console(stderr=True, highlight=False)
_UNLIMITED = 1 << 20  # characters: the width a table is measured in when no terminal limits it


def info(message: str) -> None:
    """A line for the person at the terminal (stderr)."""
    err_console.print(message)


def warn(message: str) -> None:
    err_console.print(f"[yellow]Warning:[/yellow] {message}")


class ProgressReporter:
    """A rich bar on a terminal, plain lines every ``every`` steps otherwise (none when ``quiet``).

    Called as ``reporter(done, total)`` it is the library's ``callbacks.Progress`` (the bar starts at the
    first call, when the total is known); ``update(done, text)`` adds a text (training losses).
    """

    def __init__(self, description: str, total: int | None = None, *, every: int = 10, quiet: bool = False) -> None:
        self.description = description
        self.total = total
        self.every = max(1, every)
        self.quiet = quiet
        self.start = time.perf_counter()
        self._progress: Progress | None = None
        self._task = None
        self._entered = False

    def __enter__(self) -> ProgressReporter:
        self._entered = True
        return self

    def _start_bar(self) -> None:
        if self._progress is None and not self.quiet and err_console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[text]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=err_console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, text="")

    def __call__(self, done: int, total: int) -> None:
        if total != self.total:
            self.total = total
            if self._progress is not None:
                self._progress.update(self._task, total=total)
        self.update(done)

    def update(self, done: int, text: str = "") -> None:
        if self.quiet:
            return
        self._start_bar()
        if self._progress is not None:
            self._progress.update(self._task, completed=done, text=text)
        elif done % self.every == 0 or done == self.total:
            elapsed = time.perf_counter() - self.start
            total = "?" if self.total is None else self.total
            print(f"{self.description} {done}/{total} {text} [{elapsed:.0f}s]", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None


def _writes_to_terminal() -> bool:
    isatty = getattr(err_console.file, "isatty", None)
    return bool(isatty and isatty())


def _print_whole(renderable: RenderableType) -> None:
    """Print on stderr: as wide as the terminal on one, else as wide as ``renderable`` needs.

    A log file or pipe has no width, and rich's 80-column fallback would squeeze a wide table until its
    cells end in '…'; there it gets a console of the table's own width (the other lines keep rich's).
    """
    if _writes_to_terminal():
        err_console.print(renderable)
        return
    needed = Measurement.get(err_console, err_console.options.update(max_width=_UNLIMITED), renderable).maximum
    if needed <= err_console.width:
        err_console.print(renderable)
        return
    wide = Console(file=err_console.file, width=needed, highlight=False, color_system=err_console.color_system,
                   force_terminal=err_console.is_terminal, no_color=err_console.no_color)
    wide.print(renderable)


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Render a table on stderr, never cut in a log file or pipe (``_print_whole``)."""
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    _print_whole(t)


class TrainingProgress:
    """A progress bar per training stage (rich on a terminal, plain lines otherwise), fed ``LoopState``s.

    A new bar starts whenever the iteration count goes back or the total changes (the next pipeline step).
    """

    def __init__(self, label: str = "training") -> None:
        self.label = label
        self.note = ""  # appended to every progress line (the latest validation figure)
        self._bar: ProgressReporter | None = None
        self._total = -1
        self._last = -1

    def __call__(self, state) -> None:
        if self._bar is None or state.total != self._total or state.iteration <= self._last:
            self.close()
            self._bar = ProgressReporter(self.label, state.total, every=1).__enter__()
            self._total = state.total
        self._last = state.iteration
        losses = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in state.losses.items() if k != "loss")
        note = f" {self.note}" if self.note else ""
        self._bar.update(state.iteration, f"{losses} lr={state.lr:.1e} {state.images_per_s:.1f} img/s{note}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
