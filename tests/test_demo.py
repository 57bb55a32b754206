"""``frcnn demo`` shrunk: 16 + 8 synthetic images, 10 iterations per training step, one intra-op thread.

Checks what the demo leaves behind (summary.json and its fields, the drawn detections, the recall plot, the
six steps of the run folder), that a rerun resumes instead of training again, and that a workdir holding
a set of another size is refused with a clean error. The numbers of a full run are in docs/demo.md.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from frcnn_cli.cli.main import cli

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--iters", "10", "--train", "16", "--test", "8", "--device", "cpu"]
STEPS = ["rpn1", "props1", "det1", "rpn2", "props2", "final"]
CLASSES = ["circle", "bottle", "car", "triangle", "donut"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, object]:
    workdir = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(workdir), *QUICK])
    assert result.exit_code == 0, result.output
    return workdir, result


def _png_or_jpeg(path: Path) -> bool:
    head = path.read_bytes()[:8]
    return head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff")


def test_the_summary_holds_the_map_the_time_and_every_class(demo_run):
    workdir, result = demo_run
    path = workdir / "summary.json"
    assert result.stdout.strip().splitlines()[-1] == str(path.resolve())
    summary = json.loads(path.read_text())
    assert summary["format"] == "frcnn-demo-summary" and summary["version"] == 1
    assert summary["map"] is None or 0.0 <= summary["map"] <= 1.0
    assert list(summary["ap"]) == CLASSES
    assert all(v is None or 0.0 <= v <= 1.0 for v in summary["ap"].values())
    valid = [v for v in summary["ap"].values() if v is not None]
    assert summary["map"] == pytest.approx(sum(valid) / len(valid), abs=1e-5) if valid else summary["map"] is None
    assert summary["seconds"] > 0
    assert summary["config"] == "tiny" and summary["device"] == "cpu"
    assert summary["iterations"] == {"rpn": 10, "detector": 10}
    assert (summary["train_images"], summary["test_images"]) == (16, 8)
    assert summary["torch"] and summary["notes"] == []
    assert Path(summary["model"]) == (workdir / "run" / "final.pt").resolve()


def test_docs_demo_md_lists_every_key_of_summary_json(demo_run):
    """demo.md's summary.json left out ``steps`` and ``val_images``."""
    workdir, _ = demo_run
    summary = json.loads((workdir / "summary.json").read_text())
    text = (Path(__file__).resolve().parent.parent / "docs" / "demo.md").read_text(encoding="utf-8")
    documented = set(re.findall(r'"(\w+)":', text[text.index("## summary.json"):text.index("## The `tiny` preset")]))
    step_keys = {key for step in summary["steps"].values() for key in step}
    assert set(summary) | set(summary["steps"]) | step_keys <= documented


def test_the_pictures_and_the_recall_plot_are_written(demo_run):
    workdir, _ = demo_run
    summary = json.loads((workdir / "summary.json").read_text())
    pictures = [Path(p) for p in summary["pictures"]["detections"]]
    assert 1 <= len(pictures) <= 4
    assert all(p.parent == (workdir / "detections").resolve() and p.is_file() and _png_or_jpeg(p) for p in pictures)
    plot = Path(summary["pictures"]["recall_vs_iou"])
    assert plot == (workdir / "recall_vs_iou.png").resolve() and plot.read_bytes().startswith(b"\x89PNG")
    recall = summary["recall"]["average_recall"]
    assert list(recall) == ["10", "50", "100", "300"]
    assert all(0.0 <= v <= 1.0 or math.isnan(v) for v in recall.values())


def test_the_run_folder_holds_the_six_steps_and_the_report_shows_the_map(demo_run):
    workdir, result = demo_run
    state = json.loads((workdir / "run" / "state.json").read_text())
    assert state["done"] == STEPS
    assert all((workdir / "run" / f"{s}{'.h5' if s.startswith('props') else '.pt'}").is_file() for s in STEPS)
    assert "mAP" in result.stderr and "circle" in result.stderr


def test_a_rerun_resumes_and_skips_every_done_step(demo_run):
    workdir, _ = demo_run
    before = {s: (workdir / "run" / f"{s}.pt").stat().st_mtime_ns for s in ("rpn1", "det1", "final")}
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(workdir), *QUICK])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("already done") == 7  # the data and the six steps
    assert {s: (workdir / "run" / f"{s}.pt").stat().st_mtime_ns for s in before} == before
    summary = json.loads((workdir / "summary.json").read_text())
    assert "resumed" in summary["notes"][0]


def test_a_workdir_with_a_set_of_another_size_is_refused(demo_run, assert_clean_error):
    workdir, _ = demo_run
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(workdir), "--iters", "10", "--train", "20",
                                      "--test", "8"])
    assert_clean_error(result, "16 + 8 images", "--train 16 --test 8")


@pytest.mark.parametrize(("cores", "load", "threads"), [(2, 0.1, 2), (2, 0.6, 1), (2, 3.5, 1), (8, 1.2, 7),
                                                         (8, 6.0, 4), (1, 0.0, 1)])
def test_the_demo_takes_the_cores_idle_at_its_start_and_at_least_half(monkeypatch, cores, load, threads):
    import os

    from frcnn_cli import demo

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert demo.default_threads() == threads
