"""Output locks (frcnn_cli/locks.py): a second process writing the same run folder or output file is refused
with an error naming the first; a lock left by a killed process is taken over; nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_CLI

from frcnn_cli.cli.main import cli
from frcnn_cli.errors import BusyError, FrcnnError
from frcnn_cli.locks import lock_path, output_lock

HOLDER = r"""
import sys, time
from pathlib import Path
from frcnn_cli.locks import output_lock
target, folder, go = Path(sys.argv[1]), sys.argv[2] == "folder", Path(sys.argv[3])
with output_lock(target, folder=folder, option="--workdir" if folder else "--out"):
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_bytes(b"half a dump")  # what a live dump has written so far
    print("locked", flush=True)
    while not go.exists():
        time.sleep(0.02)
"""


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


class _Holder:
    """Another process holding the lock of ``target`` until ``release()`` (or a SIGKILL)."""

    def __init__(self, tmp_path: Path, target: Path, *, folder: bool = False, also_write: Path | None = None):
        self.go = tmp_path / f"go-{target.name}"
        args = [sys.executable, "-c", HOLDER, str(target), "folder" if folder else "file", str(self.go)]
        self.proc = subprocess.Popen(args + ([str(also_write)] if also_write else []), stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        self.pid = self.proc.pid

    def release(self) -> int:
        self.go.touch()
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


def test_a_second_train_on_one_workdir_is_refused_naming_the_first(synth_set, tmp_path, monkeypatch,
                                                                   assert_clean_error):
    work = tmp_path / "run"
    holder = _Holder(tmp_path, work, folder=True)
    try:
        monkeypatch.setattr("frcnn_cli.train.pipeline.run_pipeline",
                            lambda *a, **k: pytest.fail("the second train ran"))
        message = assert_clean_error(_run("train", "--data", synth_set[0], "--workdir", work, *TINY_CLI),
                                     f"{work} is being written by another frcnn process (PID {holder.pid}",
                                     "wait for it to finish or stop it, or choose another --workdir")
        assert "started 20" in message and str(lock_path(work, folder=True)) in message
    finally:
        assert holder.release() == 0
    assert not lock_path(work, folder=True).exists()  # deleted by its owner on release


def test_a_second_writer_of_one_output_file_is_refused(synth_set, tiny_checkpoint, tmp_path, assert_clean_error):
    out = tmp_path / "rpn.pt"
    holder = _Holder(tmp_path, out)
    try:
        result = _run("train-rpn", "--data", synth_set[0], "--out", out, "--init", "none", *TINY_CLI)
        assert_clean_error(result, f"{out} is being written by another frcnn process (PID {holder.pid}",
                           "choose another --out")
        assert result.exit_code == 1
        manifest = tmp_path / "m.json"
        other = _Holder(tmp_path, manifest)
        try:
            result = _run("prepare", "synth", "--out", tmp_path / "set", "--train", "1", "--test", "1")
            assert result.exit_code == 0, result.output  # another output: no conflict
            assert_clean_error(_run("eval", "--model", tiny_checkpoint(), "--data", synth_set[1], "--report",
                                    manifest), f"PID {other.pid}", "choose another --report")
        finally:
            assert other.release() == 0
    finally:
        assert holder.release() == 0


def test_a_dump_into_a_file_a_live_dump_is_writing_is_refused_and_its_partial_kept(synth_set, tiny_checkpoint,
                                                                                   tmp_path):
    """Before the lock, the second dump could not open the first one's .partial (HDF5's own lock) and
    discarded it; now it is refused naming the first process, and the .partial stays as it was."""
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.inference import dump_proposals
    from frcnn_cli.model.checkpoint import load_model

    out = tmp_path / "props.h5"
    partial = Path(f"{out}.partial")
    holder = _Holder(tmp_path, out, also_write=partial)
    try:
        from conftest import cpu_predictor

        model, _ = load_model(tiny_checkpoint(), "cpu", require=("rpn",))
        with pytest.raises(BusyError, match=rf"{out} is being written by another frcnn process \(PID {holder.pid}"):
            dump_proposals(cpu_predictor(model, mode="dump"), read_manifest(synth_set[1]), out,
                           checkpoint_path=tiny_checkpoint())
        assert partial.read_bytes() == b"half a dump"
    finally:
        assert holder.release() == 0


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    work = tmp_path / "run"
    holder = _Holder(tmp_path, work, folder=True)
    with pytest.raises(BusyError, match=f"PID {holder.pid}"):
        with output_lock(work, folder=True):
            pass
    holder.kill()  # kill -9: nothing cleaned up
    lock = lock_path(work, folder=True)
    assert json.loads(lock.read_text())["pid"] == holder.pid  # its record is still there
    with output_lock(work, folder=True):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_lock_file_of_a_process_that_is_gone_is_taken_over(tmp_path):
    """A lock file nobody holds (its writer died; a copy from elsewhere) does not block anyone."""
    out = tmp_path / "final.pt"
    lock = lock_path(out)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    lock.write_text(json.dumps({"pid": int(done.stdout), "host": "here", "command": "frcnn train", "started": "x"}))
    with output_lock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []


def test_locks_are_reentrant_in_one_process_and_leave_nothing(tmp_path):
    out = tmp_path / "new" / "deeper" / "props.h5"
    with output_lock(out):
        with output_lock(out):  # the command, then the library's dump_proposals
            assert lock_path(out).exists()
        assert lock_path(out).exists()  # still held by the outer one
    assert not (tmp_path / "new").exists()  # nothing was written: the folders made for it are gone again


def test_a_failed_command_leaves_no_output_folder_behind(tmp_path, assert_clean_error):
    out = tmp_path / "a" / "b" / "m.json"
    result = _run("prepare", "folder", "--images", tmp_path / "none", "--annotations", tmp_path / "none", "--out", out)
    assert_clean_error(result, "is not a folder")
    assert list(tmp_path.iterdir()) == []


def test_the_holder_record_says_who_and_since_when(tmp_path):
    out = tmp_path / "m.json"
    before = time.time()
    with output_lock(out):
        record = json.loads(lock_path(out).read_text())
    assert record["pid"] == os.getpid() and record["command"].startswith("frcnn")
    import datetime

    assert datetime.datetime.fromisoformat(record["started"]).timestamp() >= int(before) - 1


# --------------------------------------------------------------------------------------------------
# a run folder and the files in it see each other's locks


def test_a_file_output_inside_a_run_folder_another_process_holds_is_refused(synth_set, tmp_path, monkeypatch,
                                                                            assert_clean_error):
    """The issue's case: train --workdir runX runs; train-rpn --out runX/rpn1.pt would write its rpn1.pt and
    interleave metrics.jsonl."""
    run = tmp_path / "runX"
    holder = _Holder(tmp_path, run, folder=True)
    monkeypatch.setattr("frcnn_cli.train.stage.run_stage", lambda *a, **k: pytest.fail("the second command trained"))
    try:
        result = _run("train-rpn", "--data", synth_set[0], "--out", run / "rpn1.pt", "--init", "none", *TINY_CLI)
        assert_clean_error(result, f"{run / 'rpn1.pt'} is inside {run}, which another frcnn process (PID {holder.pid}",
                           "choose another --out", str(lock_path(run, folder=True)))
        nested = run / "eval" / "deeper"
        result = _run("prepare", "synth", "--out", nested, "--train", "1", "--test", "1")
        assert_clean_error(result, f"is inside {run}", f"PID {holder.pid}")
        assert sorted(p.name for p in run.iterdir()) == [".frcnn.lock"]  # nothing written, no folder left
    finally:
        assert holder.release() == 0


def test_a_run_folder_holding_a_file_another_process_writes_is_refused(synth_set, tmp_path, monkeypatch,
                                                                      assert_clean_error):
    """The reverse: train-rpn --out runX/rpn1.pt runs; train --workdir runX is refused naming it."""
    run = tmp_path / "runX"
    holder = _Holder(tmp_path, run / "rpn1.pt")
    monkeypatch.setattr("frcnn_cli.train.pipeline.run_pipeline", lambda *a, **k: pytest.fail("the run started"))
    try:
        result = _run("train", "--data", synth_set[0], "--workdir", run, *TINY_CLI)
        assert_clean_error(result, f"{run} holds {run / 'rpn1.pt'}, which another frcnn process (PID {holder.pid}",
                           "choose another --workdir")
        result = _run("train", "--data", synth_set[0], "--workdir", tmp_path, *TINY_CLI)  # a folder above it too
        assert_clean_error(result, f"holds {run / 'rpn1.pt'}", f"PID {holder.pid}")
        assert not lock_path(run, folder=True).exists() and not lock_path(tmp_path, folder=True).exists()
    finally:
        assert holder.release() == 0
    with output_lock(run, folder=True):  # once it is done, the folder is free
        pass


def test_one_process_may_lock_files_inside_its_own_run_folder(tmp_path):
    """frcnn train holds its --workdir and its dump steps lock props1.h5 in it."""
    run = tmp_path / "run"
    with output_lock(run, folder=True), output_lock(run / "props1.h5"), output_lock(run / "sub", folder=True):
        assert lock_path(run / "props1.h5").exists()
    assert not run.exists()


# --------------------------------------------------------------------------------------------------
# a failed detect --out / eval --out leaves no partial folder (docs/errors.md: it removes the folders it made)


def _fail_on_second_call(monkeypatch, target: str) -> None:
    import importlib

    module, name = target.rsplit(".", 1)
    real, calls = getattr(importlib.import_module(module), name), []

    def fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise FrcnnError(f"cannot write {args[0]}: No space left on device; free some space")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, fail)


def test_detect_failing_half_way_removes_the_output_folder_it_made(synth_set, tiny_checkpoint, tmp_path, monkeypatch,
                                                                   assert_clean_error):
    images = synth_set[1].parent / "JPEGImages"
    _fail_on_second_call(monkeypatch, "frcnn_cli.detect.atomic_write_bytes")  # the second drawn image
    out = tmp_path / "new" / "drawn"
    result = _run("detect", images, "--model", tiny_checkpoint(), "--out", out, "--set", "runtime.num_workers=0",
                  "--device", "cpu")
    assert_clean_error(result, "No space left on device")
    assert list(tmp_path.iterdir()) == [tmp_path / "ckpts"]  # neither drawn/ nor new/
    old = tmp_path / "old"
    old.mkdir()
    (old / "mine.txt").write_text("kept")
    _fail_on_second_call(monkeypatch, "frcnn_cli.detect.atomic_write_bytes")
    result = _run("detect", images, "--model", tiny_checkpoint(), "--out", old, "--set", "runtime.num_workers=0",
                  "--device", "cpu")
    assert result.exit_code == 1
    assert (old / "mine.txt").read_text() == "kept" and not (old / "detections.json").exists()  # not made: kept


def test_eval_failing_half_way_removes_the_output_folder_it_made(synth_set, tiny_checkpoint, tmp_path, monkeypatch,
                                                                 assert_clean_error):
    def full_disk(*_args, **_kwargs):
        assert sorted(out.glob("comp4_det_*.txt")), "the result files come first"
        raise FrcnnError("cannot write a plot: No space left on device; free some space")

    monkeypatch.setattr("frcnn_cli.evaluate.plots.plot_pr_curves", full_disk)  # after the result files
    out = tmp_path / "results"
    result = _run("eval", "--model", tiny_checkpoint(), "--data", synth_set[1], "--out", out, "--set",
                  "runtime.num_workers=0", "--device", "cpu")
    assert_clean_error(result, "No space left on device")
    assert not out.exists()


def test_detect_with_an_unreadable_photo_keeps_its_complete_output_folder(tiny_checkpoint, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (48, 40)).save(photos / "good.jpg")
    (photos / "cut.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "drawn"
    result = _run("detect", photos, "--model", tiny_checkpoint(), "--out", out, "--set", "runtime.num_workers=0",
                  "--device", "cpu")
    assert result.exit_code == 1 and "1 of 2 images could not be read" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "good.jpg"]
