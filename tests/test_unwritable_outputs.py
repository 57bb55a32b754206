"""Outputs that cannot be written: every command finds out before any work, and a disk that fills up half-way
is one ``Error:`` line with nothing half-written under a final name.

The tests run as root, for whom a ``chmod``'ed folder is still writable: the read-only folder is a read-only
tmpfs mount (or ``chattr +i``), the full disk a 64 KiB tmpfs, so the kernel itself refuses the writes
(tests/filesystems.py). Each "no work" check replaces the function a command does its work in by one that
fails the test: a command that checked its outputs only when writing them would call it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_CLI, forbid_work, write_folder_set, write_proposal_store
from PIL import Image

from frcnn_cli.cli.main import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


_no_work = forbid_work


def _command(name: str, ro: Path, synth_set, tiny_checkpoint, tmp_path) -> tuple[list, str, str, str]:
    """``(arguments, output, option, the function doing the work)`` of one command writing into ``ro``."""
    train, test = synth_set
    if name in ("train-rpn", "train-detector"):
        extra = ["--proposals", write_proposal_store(tmp_path / "p.h5", train, np.zeros((1, 4), np.float32),
                                                     np.ones(1, np.float32))] if name == "train-detector" else []
        return ([name, "--data", train, "--out", ro / "m.pt", "--init", "none", *TINY_CLI, *extra], "m.pt", "--out",
                "frcnn_cli.train.stage.run_stage")
    if name == "train":
        return (["train", "--data", train, "--workdir", ro / "run", *TINY_CLI], "run", "--workdir",
                "frcnn_cli.train.pipeline.run_pipeline")
    if name == "dump-proposals":
        return (["dump-proposals", "--model", tiny_checkpoint(), "--data", test, "--out", ro / "p.h5"], "p.h5",
                "--out", "frcnn_cli.inference.load_predictor")
    if name == "detect":
        return (["detect", Path(test).parent / "JPEGImages", "--model", tiny_checkpoint(), "--out", ro / "drawn"],
                "drawn", "--out", "frcnn_cli.inference.load_predictor")
    if name in ("eval --out", "eval --report"):
        out = ["--out", ro / "results"] if name == "eval --out" else ["--report", ro / "r.html"]
        return (["eval", "--model", tiny_checkpoint(), "--data", test, *out], out[1].name, out[0],
                "frcnn_cli.inference.load_predictor")
    if name == "prepare folder":
        images, xml = write_folder_set(tmp_path / "folder")
        return (["prepare", "folder", "--images", images, "--annotations", xml, "--out", ro / "m.json"], "m.json",
                "--out", "frcnn_cli.data.folder.prepare_folder")
    if name == "prepare synth":
        return (["prepare", "synth", "--out", ro / "set", "--train", "2", "--test", "1"], "set", "--out",
                "frcnn_cli.data.synthetic.make_synthetic_set")
    assert name == "demo"
    return (["demo", "--workdir", ro / "demo", "--train", "2", "--test", "1", "--iters", "1"], "demo", "--workdir",
            "frcnn_cli.demo.run_demo")


COMMANDS = ["train-rpn", "train-detector", "train", "dump-proposals", "detect", "eval --out", "eval --report",
            "prepare folder", "prepare synth", "demo"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_read_only_output_is_refused_before_any_work(name, read_only_dir, synth_set, tiny_checkpoint, tmp_path,
                                                       monkeypatch, assert_clean_error):
    args, output, option, work = _command(name, read_only_dir, synth_set, tiny_checkpoint, tmp_path)
    _no_work(monkeypatch, work)
    message = assert_clean_error(_run(*args), str(read_only_dir / output), option)
    assert any(reason in message for reason in (os.strerror(errno.EROFS), os.strerror(errno.EPERM),
                                                os.strerror(errno.EACCES))), message
    assert list(read_only_dir.iterdir()) == []


def test_train_rpn_into_a_read_only_folder_names_the_folder_not_metrics_jsonl(synth_set, read_only_dir,
                                                                              assert_clean_error):
    """The issue's case, without a spy: before the check, one iteration trained and metrics.jsonl failed."""
    result = _run("train-rpn", "--data", synth_set[0], "--out", read_only_dir / "rpn.pt", "--init", "none",
                  "--iters", "1", *TINY_CLI)
    message = assert_clean_error(result, f"cannot write {read_only_dir / 'rpn.pt'}",
                                 "choose an output folder you can write to (--out)")
    assert "metrics.jsonl" not in message


# --------------------------------------------------------------------------------------------------
# a disk that fills up (a real one: the kernel's ENOSPC on a 64 KiB tmpfs)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_while_saving_a_checkpoint_is_no_space_left_not_a_traceback(synth_set, full_disk,
                                                                                  assert_clean_error):
    """torch.save given a path reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc]``;
    frcnn gives it an open file, whose write raises the kernel's ENOSPC."""
    out = full_disk / "rpn.pt"
    result = _run("train-rpn", "--data", synth_set[0], "--out", out, "--init", "none", "--iters", "1", *TINY_CLI)
    assert_clean_error(result, f"cannot write {out}: {os.strerror(errno.ENOSPC)}", "free some space")
    assert "rpn.pt" not in " ".join(_files(full_disk))  # no checkpoint, no temporary
    assert _files(full_disk) in ([], ["metrics.jsonl"])


def test_prepare_synth_on_a_full_disk_leaves_nothing(full_disk, assert_clean_error):
    out = full_disk / "set"
    result = _run("prepare", "synth", "--out", out, "--train", "20", "--test", "5")
    assert_clean_error(result, f"cannot write {out}: {os.strerror(errno.ENOSPC)}", "free some space")
    assert _files(full_disk) == [] and not out.exists()  # no image, no staging folder, no empty --out


def test_prepare_synth_into_an_older_set_replaces_it_whole_or_not_at_all(tmp_path, monkeypatch):
    from frcnn_cli.data import synthetic

    out = tmp_path / "set"
    assert _run("prepare", "synth", "--out", out, "--train", "3", "--test", "2", "--seed", "1").exit_code == 0
    before = {name: (out / name).read_bytes() for name in _files(out)}
    real, calls = synthetic._write_image, []

    def fail_on_the_fourth(*args):
        calls.append(args)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    monkeypatch.setattr(synthetic, "_write_image", fail_on_the_fourth)
    assert _run("prepare", "synth", "--out", out, "--train", "3", "--test", "2", "--seed", "2").exit_code == 1
    assert {name: (out / name).read_bytes() for name in _files(out)} == before  # the old set, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no staging folder left


def test_detect_on_a_full_disk_keeps_no_cut_jpeg(tiny_checkpoint, tmp_path, full_disk, assert_clean_error):
    """PIL's JPEG encoder ignores a short write: saved straight to the file, a cut JPEG got the final name."""
    photo = tmp_path / "in" / "photo.jpg"
    photo.parent.mkdir()
    # ~100 KB at quality 95, which PIL writes in one write(2): cut short at 64 KiB without an error
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photo, quality=95)
    out = full_disk / "drawn"
    result = _run("detect", photo, "--model", tiny_checkpoint(), "--out", out, "--set", "runtime.num_workers=0",
                  "--device", "cpu")
    assert_clean_error(result, f"cannot write {out / 'photo.jpg'}: {os.strerror(errno.ENOSPC)}", "free some space")
    assert _files(full_disk) == []


def test_a_torchscript_export_onto_a_full_disk_is_no_space_left_not_an_abort(tiny_checkpoint, full_disk,
                                                                             assert_clean_error):
    """torch.jit.save given a path writes the archive's end in a C++ destructor: a full disk there aborted the
    process (exit 134, C++ frames, the temporary and the lock file left behind). A subprocess: it was an abort."""
    out = full_disk / "m.ts"
    result = subprocess.run([sys.executable, "-m", "frcnn_cli", "export", "--model", str(tiny_checkpoint()),
                             "--format", "torchscript", "--out", str(out)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_clean_error(result, f"cannot write {out}: {os.strerror(errno.ENOSPC)}", "free some space")
    assert _files(full_disk) == []


def test_a_disk_already_full_is_no_space_left_with_advice_to_free_some(synth_set, full_disk, assert_clean_error):
    """The lock's owner record is the first byte written: on a disk already full it failed with "No space left on
    device; choose an output folder you can write to", advice for a read-only folder."""
    with open(full_disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(bytes(4096))
    out = full_disk / "m.json"
    result = _run("prepare", "merge", *synth_set, "--out", out)
    assert_clean_error(result, f"cannot write {out}: {os.strerror(errno.ENOSPC)}", "free some space")
    assert _files(full_disk) == ["filler"]


def test_atomic_write_bytes_notices_a_short_write(tmp_path, monkeypatch):
    """A writer that reports success but wrote less: the size is checked before the rename."""
    from frcnn_cli import atomic
    from frcnn_cli.errors import FrcnnError

    def short_write(self, data):
        with open(self, "wb") as f:
            return f.write(data[: len(data) // 2])

    monkeypatch.setattr(Path, "write_bytes", short_write)
    with pytest.raises(FrcnnError, match=r"cannot write .*out\.jpg: No space left on device \(wrote 50 of 100"):
        atomic.atomic_write_bytes(tmp_path / "out.jpg", bytes(100))
    assert list(tmp_path.iterdir()) == []
