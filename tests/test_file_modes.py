"""Written files follow the umask, as a plain ``open`` would make them: the temporary file of an atomic write is
made ``0600`` by ``tempfile``, and that mode used to survive the rename (manifests, checkpoints, ``state.json``,
``detections.json``, drawn images, the HTML report)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from frcnn_cli.cli.main import cli


@contextlib.contextmanager
def _umask(mask: int):
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("mask, file_mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, file_mode):
    from frcnn_cli.atomic import atomic_dir, atomic_write_json, atomic_write_text

    with _umask(mask):
        atomic_write_json(tmp_path / "state.json", {"done": []})
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        with atomic_dir(tmp_path / "set") as staging:
            (staging / "sub").mkdir()
            (staging / "sub" / "a.txt").write_text("a")
        assert _mode(tmp_path / "set") == 0o777 & ~mask and _mode(tmp_path / "set" / "sub") == 0o777 & ~mask
    assert _mode(tmp_path / "state.json") == _mode(tmp_path / "report.html") == file_mode
    assert _mode(tmp_path / "set" / "sub" / "a.txt") == file_mode


def test_what_the_commands_write_is_0644_under_umask_022(synth_set, tiny_checkpoint, tmp_path):
    with _umask(0o022):
        checkpoint = tiny_checkpoint()  # save_checkpoint under this umask
        _run("prepare", "synth", "--out", tmp_path / "set", "--train", "2", "--test", "1")
        _run("detect", synth_set[1].parent / "JPEGImages" / "000008.jpg", "--model", checkpoint, "--out",
             tmp_path / "drawn", "--set", "runtime.num_workers=0", "--device", "cpu")
        _run("eval", "--model", checkpoint, "--data", synth_set[1], "--report", tmp_path / "report.html",
             "--set", "runtime.num_workers=0", "--device", "cpu")
    files = [checkpoint, tmp_path / "set" / "trainval.json", tmp_path / "set" / "classes.txt",
             tmp_path / "set" / "JPEGImages" / "000000.jpg", tmp_path / "drawn" / "detections.json",
             tmp_path / "drawn" / "000008.jpg", tmp_path / "report.html"]
    assert {str(f): oct(_mode(f)) for f in files} == {str(f): "0o644" for f in files}
    assert _mode(tmp_path / "set" / "JPEGImages") == 0o755

