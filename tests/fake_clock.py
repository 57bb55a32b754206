"""A clock for the budget tests (``frcnn_cli.train.budget.now``): seconds pass only when a test says so."""

from __future__ import annotations


class FakeClock:
    """Seconds that pass only when told: ``advance(s)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
