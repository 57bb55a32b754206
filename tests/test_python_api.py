"""docs/python-api.md runs: every block of the page, in order, in one folder, as a notebook would.

The page's own commands and calls run unchanged except for size: ``frcnn prepare synth`` makes 12 + 4 images,
``frcnn_cli.train`` trains each step 3 iterations at 96 px, ``frcnn export`` checks itself on one photo.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
PAGE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
SMALLER = {("prepare", "synth"): ["--train", "12", "--test", "4"],  # click keeps the last value of an option
           ("export",): ["--check-images", "synth/JPEGImages/000000.jpg"]}
SHORT_TRAINING = ("input.train_scales=96", "input.test_scale=96", "input.max_size=128", "runtime.num_workers=0")


def page_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of the page, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def run_command(frcnn, line: str) -> None:
    args = shlex.split(line)
    assert args[0] == "frcnn", line
    extra = next((more for head, more in SMALLER.items() if tuple(args[1:1 + len(head)]) == head), [])
    frcnn(*args[1:], *extra)


def test_every_block_of_the_python_api_page_runs(tmp_path, monkeypatch, frcnn, capsys):
    from frcnn_cli.train import api as pipeline

    real_train = pipeline.train

    def short_train(data, workdir, **options):
        options.update(iters=3, epochs=None, overrides=[*options.get("overrides", ()), *SHORT_TRAINING])
        return real_train(data, workdir, **options)

    monkeypatch.setattr(pipeline, "train", short_train)
    monkeypatch.chdir(tmp_path)
    blocks = page_blocks()
    assert [lang for lang, _ in blocks].count("python") >= 5 and {lang for lang, _ in blocks} == {"sh", "python"}
    namespace: dict = {}
    for lang, code in blocks:
        if lang == "sh":
            for line in code.strip().splitlines():
                run_command(frcnn, line)
        else:
            exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own examples
    assert namespace["final"] == Path("run/final.pt") and namespace["final"].is_file()
    printed = capsys.readouterr().out
    assert "3/3 loss_rpn_cls=" in printed and "step final done" in printed  # the progress callbacks were called
    assert Path("000000.drawn.jpg").is_file() and Path("model.onnx").is_file()
    assert 0.0 <= namespace["evaluation"].voc["map"] <= 1.0
    assert namespace["message"].startswith("--set solver.lr=0.1: 'solver.lr' is fixed by the checkpoint")
