"""Shared fixtures.

Reliability suite (tests/test_bad_input.py, test_odd_input.py, test_crash_safety.py, test_security.py):
a tiny model at 64 px, checkpoints of it with random weights, an 8+4 image synthetic set, and the check
that a failed command printed one clean ``Error:`` line and wrote nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

TINY_OVERRIDES = ("input.train_scales=64", "input.test_scale=64", "input.max_size=96", "solver.num_workers=0")
ACTION = re.compile(r"\b(use|fix|give|check|run|rerun|delete|choose|add|replace|remove|upgrade|pick|lower|make|"
                    r"dump|train|evaluate|prepare|free|try|rename|keep|write|name|ask)\b", re.IGNORECASE)


def tiny_config(*extra: str):
    """The tiny preset at 64 px (no workers), with ``extra`` ``--set`` overrides."""
    from frcnn_cli.config import apply_overrides, get_preset

    return apply_overrides(get_preset("tiny"), [*TINY_OVERRIDES, *extra])


@pytest.fixture()
def tiny_checkpoint(tmp_path) -> Callable[..., Path]:
    """``make(name, classes, *, parts=..., stage="final", cfg=None)``: a checkpoint of a random tiny model."""
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    def make(name: str = "model.pt", classes: Sequence[str] = ("circle", "bottle", "car", "triangle", "donut"),
             *, parts: Sequence[str] = ("backbone", "rpn", "roi_head"), stage: str = "final", cfg=None) -> Path:
        torch.manual_seed(0)
        model = FasterRCNN(cfg if cfg is not None else tiny_config(), list(classes))
        path = tmp_path / "ckpts" / name
        save_checkpoint(path, model, stage=stage, provenance={}, parts=tuple(parts))
        return path

    return make


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> tuple[Path, Path]:
    """``(trainval.json, test.json)`` of a synthetic set: 8 + 4 images of about 64x48. Do not modify it."""
    from frcnn_cli.data.synthetic import make_synthetic_set

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_set(root / "set", n_train=8, n_test=4, seed=0, image_size=(64, 48))


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture()
def assert_clean_error() -> Callable[..., None]:
    """``check(result, *needles, out_dir=None)``: a non-zero exit, exactly one line starting with ``Error:``
    (holding every needle), something a user can do, no traceback, and no file at all under ``out_dir``."""

    def check(result, *needles: str, out_dir: Path | None = None) -> str:
        output = result.output if hasattr(result, "output") else result.stdout + result.stderr
        code = result.exit_code if hasattr(result, "exit_code") else result.returncode
        assert code != 0, output
        assert "Traceback" not in output, output
        if getattr(result, "exception", None) is not None:
            assert isinstance(result.exception, SystemExit), repr(result.exception)
        lines = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1, output
        message = output[output.index("Error:"):]
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"
        assert ACTION.search(output), f"no hint of what to do in {output!r}"
        if out_dir is not None:
            assert _files_under(out_dir) == [], _files_under(out_dir)
        return message

    return check
