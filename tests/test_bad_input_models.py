"""Bad input to the commands that read checkpoints, proposal files and images (checkpoints, HDF5 proposal
files, detect/eval/bench/demo): one clean ``Error:`` line naming the file and what to do, a non-zero exit,
no traceback, and nothing written under the output name (data, manifests and options:
``test_bad_input.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_CLI, truncate_file, write_file, write_proposal_store
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")  # faster on a busy 2-core machine

TINY = TINY_CLI


def _run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoints_of_random_bytes_are_refused_by_every_command(synth_set, tmp_path, assert_clean_error):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    image = Path(read_manifest(synth_set[1]).root) / "JPEGImages" / "000008.jpg"
    out = tmp_path / "out"
    for args in (["eval", "--model", noise, "--data", synth_set[1], "--out", out / "res"],
                 ["detect", image, "--model", noise, "--out", out / "det"],
                 ["dump-proposals", "--model", noise, "--data", synth_set[1], "--out", out / "p.h5"],
                 ["train-rpn", "--data", synth_set[0], "--out", out / "rpn.pt", *TINY, "--init", noise]):
        assert_clean_error(_run(*args), "noise.pt is not a readable torch file", out_dir=out)


def test_a_missing_checkpoint_names_the_path(synth_set, tmp_path, assert_clean_error):
    out = tmp_path / "out"
    result = _run("eval", "--model", tmp_path / "gone.pt", "--data", synth_set[1], "--out", out)
    assert_clean_error(result, "gone.pt does not exist", "--model", out_dir=out)


def test_a_checkpoint_of_another_backbone_is_refused(synth_set, tmp_path, tiny_checkpoint, assert_clean_error):
    ckpt = tiny_checkpoint("det1.pt")
    out = tmp_path / "out"
    result = _run("train-rpn", "--data", synth_set[0], "--out", out / "rpn2.pt", "--config", "zf", "--init", ckpt,
                  "--freeze-shared", "--device", "cpu")
    assert_clean_error(result, "det1.pt holds a tiny backbone but --config asks for zf", "drop --config",
                       out_dir=out)


def test_a_checkpoint_whose_parts_do_not_fit_its_config_is_refused(tmp_path, tiny_checkpoint,
                                                                    assert_clean_error, synth_set):
    import torch

    path = tiny_checkpoint("odd.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["rpn"]["conv_channels"] = 64  # the stored weights have 128
    torch.save(ckpt, path)
    out = tmp_path / "out"
    result = _run("eval", "--model", path, "--data", synth_set[1], "--out", out)
    assert_clean_error(result, "odd.pt: its 'rpn' part does not fit this model", out_dir=out)


def test_a_checkpoint_with_an_unreadable_config_is_refused(tmp_path, tiny_checkpoint, assert_clean_error,
                                                           synth_set):
    import torch

    path = tiny_checkpoint("cfg.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["rpn"]["objectness"] = "tanh"
    torch.save(ckpt, path)
    image = Path(read_manifest(synth_set[1]).root) / "JPEGImages" / "000008.jpg"
    result = _run("detect", image, "--model", path, "--out", tmp_path / "out")
    assert_clean_error(result, "cfg.pt holds a config this frcnn cannot read", "objectness", out_dir=tmp_path / "out")


def test_eval_with_a_manifest_of_another_class_count(synth_set, tmp_path, tiny_checkpoint, assert_clean_error):
    model = tiny_checkpoint("three.pt", ["circle", "bottle", "car"])
    out = tmp_path / "out"
    result = _run("eval", "--model", model, "--data", synth_set[1], "--out", out, "--json")
    assert_clean_error(result, "test.json has classes", "three.pt", "only in the manifest: triangle, donut",
                       "evaluate on a manifest of the model's dataset", out_dir=out)
    assert result.stdout == "" or "Error:" in result.stdout


def test_eval_with_a_manifest_whose_classes_differ_in_order(synth_set, tmp_path, tiny_checkpoint,
                                                            assert_clean_error):
    model = tiny_checkpoint("swapped.pt", ["bottle", "circle", "car", "triangle", "donut"])
    out = tmp_path / "out"
    result = _run("eval", "--model", model, "--data", synth_set[1], "--out", out)
    assert_clean_error(result, "the same names in another order", out_dir=out)


def test_eval_and_detect_refuse_a_checkpoint_without_a_detection_head(synth_set, tmp_path, tiny_checkpoint,
                                                                      assert_clean_error):
    rpn = tiny_checkpoint("rpn1.pt", parts=("backbone", "rpn"), stage="rpn")
    out = tmp_path / "out"
    result = _run("eval", "--model", rpn, "--data", synth_set[1], "--out", out)
    assert_clean_error(result, "rpn1.pt (stage 'rpn') has no detection head", "give a detector", out_dir=out)


# --------------------------------------------------------------------------------------------------
# proposal files


def _store(path: Path, manifest_path: Path) -> Path:
    boxes, scores = np.array([[1, 1, 20, 20], [5, 5, 30, 30]], np.float32), np.array([0.9, 0.4], np.float32)
    return write_proposal_store(path, manifest_path, boxes, scores)


def _foreign(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros((3, 3))
    return path


def _truncated(path: Path, manifest_path: Path) -> Path:
    _store(path, manifest_path)
    truncate_file(path, 0.4)
    return path


HDF5_CASES = {
    "truncated": (lambda p, s: _truncated(p, s[0]), ["props.h5 is not a readable HDF5 file", "dump-proposals"]),
    "foreign": (lambda p, s: _foreign(p), ["props.h5 is an HDF5 file but not a frcnn proposal file"]),
    "other_manifest": (lambda p, s: _store(p, s[1]), ["props.h5 was made from another manifest",
                                                      "trainval.json", "give the proposal file made for"]),
    "missing": (lambda p, s: p, ["props.h5 does not exist", "frcnn dump-proposals"]),
    "random_bytes": (lambda p, s: write_file(p, np.random.default_rng(1).bytes(3000)) or p,
                     ["props.h5 is not a readable HDF5 file"]),
}


@pytest.mark.parametrize("case", sorted(HDF5_CASES))
def test_bad_proposal_files_are_refused_by_train_detector(synth_set, tmp_path, case, assert_clean_error):
    make, needles = HDF5_CASES[case]
    props = make(tmp_path / "props.h5", synth_set)
    out = tmp_path / "out"
    result = _run("train-detector", "--data", synth_set[0], "--proposals", props, "--out", out / "det.pt", *TINY,
                  "--init", "none", "--iters", "1")
    assert_clean_error(result, *needles, out_dir=out)


def test_an_unfinished_dump_says_to_rerun_it(synth_set, tmp_path, assert_clean_error):
    props = _store(tmp_path / "props.h5", synth_set[1])
    props.rename(tmp_path / "props.h5.partial")
    result = _run("eval", "--proposals", props, "--data", synth_set[1])
    assert_clean_error(result, "props.h5 does not exist, but an unfinished dump does",
                       "rerun the same `frcnn dump-proposals`")


def test_a_proposal_output_under_a_regular_file_cannot_be_written(synth_set, tmp_path, tiny_checkpoint,
                                                                  assert_clean_error):
    (tmp_path / "plain.txt").write_text("x")
    result = _run("dump-proposals", "--model", tiny_checkpoint(), "--data", synth_set[1], "--out",
                  tmp_path / "plain.txt" / "p.h5")
    assert_clean_error(result, "cannot write", "plain.txt", "choose an output folder you can write to (--out)")


# --------------------------------------------------------------------------------------------------
# detect and eval


def test_detect_on_an_empty_folder(tmp_path, tiny_checkpoint, assert_clean_error):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    result = _run("detect", tmp_path / "empty", "--model", tiny_checkpoint(), "--out", out)
    assert_clean_error(result, "empty holds no images", "give image files", out_dir=out)


def test_detect_on_a_missing_file(tmp_path, tiny_checkpoint, assert_clean_error):
    out = tmp_path / "out"
    result = _run("detect", tmp_path / "ghost.jpg", "--model", tiny_checkpoint(), "--out", out, "--json")
    assert_clean_error(result, "ghost.jpg does not exist", "give image files", out_dir=out)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage", ["truncated_jpeg", "text_as_png"])
def test_detect_on_an_undecodable_image_names_it(tmp_path, tiny_checkpoint, damage, workers, assert_clean_error):
    """The readable image is still detected and written; the unreadable one is named, in the error and in
    detections.json (tests/test_detect_unreadable.py has the rest)."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "in" / "fine.png")
    if damage == "truncated_jpeg":
        bad = tmp_path / "in" / "photo.jpg"
        Image.new("RGB", (80, 60), (200, 100, 30)).save(bad, quality=95)
        truncate_file(bad, 0.5)
    else:
        bad = tmp_path / "in" / "photo.png"
        bad.write_text("hello")
    out = tmp_path / "out"
    result = _run("detect", tmp_path / "in", "--model", tiny_checkpoint(), "--out", out,  # 2 images: 1 worker
                  "--set", f"runtime.num_workers={workers}")
    assert_clean_error(result, "1 of 2 images could not be read", f"image {bad} cannot be decoded",
                       "replace the file")
    assert result.exit_code == 1
    entries = json.loads((out / "detections.json").read_text())
    assert [e["image"] for e in entries] == [str(tmp_path / "in" / "fine.png"), str(bad)]
    assert "error" not in entries[0] and entries[1]["detections"] == []
    assert entries[1]["error"].startswith(f"image {bad} cannot be decoded")
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "fine.png"]


def test_eval_results_under_a_regular_file_cannot_be_written(synth_set, tmp_path, tiny_checkpoint,
                                                            assert_clean_error):
    (tmp_path / "plain.txt").write_text("x")
    result = _run("eval", "--model", tiny_checkpoint(), "--data", synth_set[1], "--out", tmp_path / "plain.txt" / "r")
    assert_clean_error(result, "cannot create", "plain.txt", "Not a directory", "choose a --out you can write to")


# --------------------------------------------------------------------------------------------------
# bench, demo and the train pipeline


def test_bench_refuses_bad_models_presets_images_and_devices(tmp_path, tiny_checkpoint, assert_clean_error):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(2).bytes(3000))
    (tmp_path / "notes.jpg").write_text("not a picture")
    model = tiny_checkpoint()
    cases = [
        (["--config", "vgg17"], ["unknown preset 'vgg17'"]),
        (["--model", noise], ["noise.pt is not a readable torch file"]),
        (["--model", model, "--config", "tiny"], ["give exactly one of --model CKPT"]),
        (["--config", "tiny", "--device", "cuda"], ["no CUDA GPU", "use --device cpu"]),
        (["--config", "tiny", tmp_path / "ghost.jpg"], ["ghost.jpg does not exist"]),
        (["--config", "tiny", tmp_path / "notes.jpg"], ["notes.jpg cannot be decoded"]),
        (["--model", model, "--set", "backbone=zf"], ["'backbone' is fixed by the checkpoint"]),
    ]
    for args, needles in cases:
        assert_clean_error(_run("bench", *args), *needles)


def test_demo_on_a_device_that_is_not_here(tmp_path, assert_clean_error):
    result = _run("demo", "--workdir", tmp_path / "demo", "--device", "cuda:3")
    assert_clean_error(result, "--device cuda:3", "use --device cpu", out_dir=tmp_path / "demo")


@pytest.mark.parametrize("command", ["demo", "train"])
def test_a_workdir_under_a_regular_file_cannot_be_made(synth_set, tmp_path, command, assert_clean_error):
    (tmp_path / "plain.txt").write_text("x")
    workdir = tmp_path / "plain.txt" / "run"
    if command == "demo":
        result = _run("demo", "--workdir", workdir, "--train", "2", "--test", "1", "--iters", "1")
    else:
        result = _run("train", "--data", synth_set[0], "--workdir", workdir, *TINY, "--iters", "1")
    assert_clean_error(result, f"cannot create {workdir}", "choose a --workdir you can write to")


def test_a_real_process_prints_the_error_on_stderr_only(tmp_path):
    """The installed entry point: the one error line on stderr, nothing on stdout, exit code 1."""
    frcnn = Path(sys.executable).with_name("frcnn")
    cmd = [str(frcnn)] if frcnn.exists() else [sys.executable, "-m", "frcnn_cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*cmd, "train-rpn", "--data", str(tmp_path / "nope.json"), "--out",
                           str(tmp_path / "out" / "rpn.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: manifest ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "nope.json does not exist; create it with `frcnn prepare`" in proc.stderr
    assert not (tmp_path / "out").exists()
