"""Outputs the file system allows but frcnn used to mishandle: names of up to 255 bytes (temporaries and lock files
stay within the limit), devices and FIFOs (never replaced by a regular file), symbolic links (written through;
a dangling one named with its missing target)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_folder_set
from PIL import Image

from frcnn_cli.atomic import _host_id, atomic_path, atomic_write_text
from frcnn_cli.cli.main import cli
from frcnn_cli.locks import lock_path, output_lock
from frcnn_cli.output_paths import fit_name, name_bytes, short_stem

NAME_MAX = os.pathconf("/tmp", "PC_NAME_MAX")
NO_WORKERS = ("--set", "runtime.num_workers=0", "--device", "cpu")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _long(name: str, size: int = NAME_MAX) -> str:
    """``name`` padded in front with ``x`` to ``size`` bytes."""
    return "x" * (size - name_bytes(name)) + name


def _prepare(tmp_path: Path, out: Path):
    images, xml = write_folder_set(tmp_path / "data")
    return _run("prepare", "folder", "--images", images, "--annotations", xml, "--out", out)


# --------------------------------------------------------------------------------------------------
# names of up to NAME_MAX bytes


def test_every_helper_name_of_a_255_byte_output_fits_and_is_its_own(tmp_path):
    a, b = _long("a.json"), _long("b.json")
    for reserve in (6, 37):
        stems = {short_stem(a, reserve, tmp_path), short_stem(b, reserve, tmp_path)}
        assert len(stems) == 2 and all(name_bytes(s) + reserve == NAME_MAX for s in stems)
    assert short_stem("m.json", 37, tmp_path) == "m.json"  # short names keep the readable form
    with atomic_path(tmp_path / a) as tmp:
        assert name_bytes(tmp.name) <= NAME_MAX
    assert (tmp_path / a).exists()
    with output_lock(tmp_path / b):
        assert name_bytes(lock_path(tmp_path / b).name) <= NAME_MAX and lock_path(tmp_path / b).exists()


def test_a_multibyte_name_is_shortened_on_a_character_boundary(tmp_path):
    name = "é" * 127 + ".jpg"  # 258 bytes: over the limit only once a suffix is added
    stem = short_stem(name, 37, tmp_path)
    assert name_bytes(stem) <= NAME_MAX - 37 and stem.encode("utf-8").decode("utf-8") == stem
    assert fit_name(name + ".png", tmp_path).endswith(".png") and name_bytes(fit_name(name + ".png", tmp_path)) <= 255


def test_prepare_and_export_write_a_255_byte_output(tmp_path, tiny_checkpoint):
    out = tmp_path / _long(".json")
    result = _prepare(tmp_path, out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["format"] == "frcnn-manifest"
    pytest.importorskip("torch")
    model = tmp_path / _long(".ts")
    result = _run("export", "--model", tiny_checkpoint(), "--format", "torchscript", "--out", model)
    assert result.exit_code == 0, result.output
    assert model.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", "ckpts", out.name, model.name])


def test_detect_draws_a_photo_whose_name_has_255_bytes(tmp_path, tiny_checkpoint):
    photos = tmp_path / "photos"
    photos.mkdir()
    long_jpg, long_gif = _long(".jpg"), _long(".gif")  # a .gif is drawn as .gif.png: cut to fit
    Image.new("RGB", (48, 40), (90, 120, 30)).save(photos / long_jpg)
    Image.new("RGB", (48, 40), (30, 20, 200)).save(photos / long_gif)
    out = tmp_path / "drawn"
    result = _run("detect", photos, "--model", tiny_checkpoint(), "--out", out, "--score-thresh", "0", *NO_WORKERS)
    assert result.exit_code == 0, result.output
    drawn = sorted(p.name for p in out.iterdir())
    assert "detections.json" in drawn and long_jpg in drawn
    assert [n for n in drawn if n.endswith(".png")] == [fit_name(long_gif + ".png", out)]
    assert all(name_bytes(n) <= NAME_MAX for n in drawn)


def test_a_name_over_the_limit_is_refused_first_with_advice_that_fits(tmp_path, assert_clean_error):
    out = tmp_path / _long(".json", NAME_MAX + 1)
    message = assert_clean_error(_prepare(tmp_path, out), f"is {NAME_MAX + 1} bytes long",
                                 f"allows {NAME_MAX}; give --out a shorter name")
    assert "choose an output folder you can write to" not in message


@pytest.mark.parametrize("command", ["train-rpn", "dump-proposals"])
def test_an_output_whose_derived_name_would_be_too_long_is_refused_first(command, tmp_path, synth_set,
                                                                         tiny_checkpoint, assert_clean_error):
    """train-rpn keeps OUT.resume.pt, dump-proposals OUT.partial: before, a traceback (the name too long for
    even asking whether it exists)."""
    if command == "train-rpn":
        out, derived = tmp_path / "run" / _long(".pt", NAME_MAX - 5), ".pt.resume.pt"
        args = ["train-rpn", "--data", synth_set[0], "--out", out, "--init", "none", "--iters", "1", "--config",
                "tiny", *NO_WORKERS]
    else:
        out, derived = tmp_path / "run" / _long(".h5", NAME_MAX - 5), ".h5.partial"
        args = ["dump-proposals", "--model", tiny_checkpoint(), "--data", synth_set[1], "--out", out, *NO_WORKERS]
    assert_clean_error(_run(*args), f"{derived}: its name is", "give --out a shorter name")
    assert not (tmp_path / "run").exists()


def test_a_killed_writers_temporary_of_a_long_name_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / _long(".json")
    code = ("import os, signal, sys; from frcnn_cli.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(out)], timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and re.fullmatch(rf"\..+~[0-9a-f]{{10}}\.pid\d+-{_host_id()}\.\w+\.tmp", left[0]), left
    atomic_write_text(out, "whole")
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


# --------------------------------------------------------------------------------------------------
# devices, FIFOs: refused, never replaced


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["prepare", "eval --report", "export", "train-rpn", "train-rpn metrics"])
def test_an_output_that_is_a_fifo_is_refused_before_any_work_and_stays_a_fifo(command, tmp_path, synth_set,
                                                                              tiny_checkpoint, assert_clean_error,
                                                                              monkeypatch):
    fifo = _fifo(tmp_path / "pipe")
    if command == "train-rpn":
        monkeypatch.setattr("frcnn_cli.train.stage.run_stage", lambda *a, **k: pytest.fail("trained"))
    args = {"prepare": None,
            "eval --report": ["eval", "--model", tiny_checkpoint(), "--data", synth_set[1], "--report", fifo],
            "export": ["export", "--model", tiny_checkpoint(), "--format", "onnx", "--out", fifo],
            "train-rpn": ["train-rpn", "--data", synth_set[0], "--out", fifo, "--init", "none"],
            "train-rpn metrics": ["train-rpn", "--data", synth_set[0], "--out", tmp_path / "rpn.pt", "--init", "none",
                                  "--iters", "1", "--config", "tiny", *NO_WORKERS]}[command]
    if command == "train-rpn metrics":  # the log appended to beside the checkpoint: an append would wait forever
        fifo = _fifo(tmp_path / "metrics.jsonl")
    result = _prepare(tmp_path, fifo) if args is None else _run(*args)
    assert_clean_error(result, f"cannot write {fifo}: it is a named pipe (FIFO), not a regular file",
                       "remove it or choose another --report" if command == "eval --report" else "choose another --out")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("command", ["detect --out", "train --workdir", "prepare synth --out"])
def test_a_fifo_given_for_an_output_folder_is_named_a_fifo_not_a_file(command, tmp_path, synth_set, tiny_checkpoint,
                                                                      assert_clean_error):
    fifo = _fifo(tmp_path / "pipe")
    args = {"detect --out": ["detect", synth_set[1], "--model", tiny_checkpoint(), "--out", fifo],
            "train --workdir": ["train", "--data", synth_set[0], "--workdir", fifo, "--config", "tiny"],
            "prepare synth --out": ["prepare", "synth", "--out", fifo]}[command]
    assert_clean_error(_run(*args), f"cannot write into {fifo}: it is a named pipe (FIFO), not a folder",
                       f"give {command.split()[-1]} a folder")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_a_device_like_dev_null_is_never_replaced(tmp_path, assert_clean_error):
    null = tmp_path / "mynull"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    assert_clean_error(_prepare(tmp_path, null), f"cannot write {null}: it is a character device",
                       "; choose another --out")
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_a_fifo_inside_an_output_folder_is_not_replaced(tmp_path, tiny_checkpoint, assert_clean_error):
    photos, out = tmp_path / "photos", tmp_path / "drawn"
    photos.mkdir()
    out.mkdir()
    Image.new("RGB", (48, 40)).save(photos / "a.jpg")
    fifo = _fifo(out / "detections.json")
    result = _run("detect", photos, "--model", tiny_checkpoint(), "--out", out, *NO_WORKERS)
    assert_clean_error(result, f"cannot write {fifo}: it is a named pipe (FIFO)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# --------------------------------------------------------------------------------------------------
# symbolic links


@pytest.mark.parametrize("command", ["detect", "train", "prepare synth"])
def test_a_dangling_link_as_output_folder_names_its_missing_target(command, tmp_path, synth_set, tiny_checkpoint,
                                                                   assert_clean_error):
    link = tmp_path / "linkdir"
    link.symlink_to(tmp_path / "missing" / "dir")
    args = {"detect": ["detect", synth_set[1].parent / "JPEGImages", "--model", tiny_checkpoint(), "--out", link],
            "train": ["train", "--data", synth_set[0], "--workdir", link, "--config", "tiny"],
            "prepare synth": ["prepare", "synth", "--out", link]}[command]
    option = "--workdir" if command == "train" else "--out"
    message = assert_clean_error(_run(*args), f"{link}: it is a symbolic link to {tmp_path / 'missing' / 'dir'}, "
                                              "which does not exist", f"choose another {option}")
    assert "File exists" not in message
    assert link.is_symlink() and not (tmp_path / "missing").exists()


def test_a_dangling_link_above_an_output_file_is_named(tmp_path, assert_clean_error):
    link = tmp_path / "linkdir"
    link.symlink_to("/nonexistent-frcnn-target")
    out = link / "sub" / "m.json"
    assert_clean_error(_prepare(tmp_path, out), f"{link} is a symbolic link to /nonexistent-frcnn-target, which "
                                                "does not exist")


def test_an_output_file_that_is_a_link_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real" / "m.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "m.json"
    link.symlink_to(real)
    result = _prepare(tmp_path, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads(real.read_text())["format"] == "frcnn-manifest"
    assert sorted(p.name for p in real.parent.iterdir()) == ["m.json"]  # no temporary, no lock left


def test_an_atomic_write_under_a_name_too_long_says_to_shorten_it_not_to_free_space(tmp_path):
    """Every writer's names (a result file named by a class, a drawn photo) reach the file system here: "File name
    too long; free some space or choose another output" was advice for a full disk."""
    from frcnn_cli.errors import FrcnnError

    with pytest.raises(FrcnnError, match=r"File name too long; give the output a shorter name"):
        atomic_write_text(tmp_path / ("x" * (NAME_MAX + 1)), "a")
    assert list(tmp_path.iterdir()) == []
