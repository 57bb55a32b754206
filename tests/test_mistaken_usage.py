"""Mistakes a user makes with the commands' files: an output that is one of the command's own inputs, and a
file of the wrong kind given to an option. Each is refused before any work, by one ``Error:`` line that says
what the file is and what to give instead, and the user's files are left as they were.

(The second probe of issue 31: variants of its items on the other commands that share their code.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from coco_data import write_coco_set
from conftest import TINY_CLI, forbid_work, write_proposal_store

from frcnn_cli.cli.main import cli

pytestmark = pytest.mark.usefixtures("one_thread")
CHECKPOINT_CLI = ["--set", "runtime.num_workers=0", "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


_no_work = forbid_work


# --------------------------------------------------------------------------------------------------
# an output that is one of the command's inputs: the atomic rename would replace the input


def _own_input(name: str, tmp_path: Path, synth_set, tiny_checkpoint) -> tuple[list, Path, str, str]:
    """``(arguments, the input also named as output, its option, the function doing the work)``."""
    manifest = tmp_path / "m.json"
    shutil.copy(synth_set[1], manifest)
    if name == "prepare coco":
        coco, images = write_coco_set(tmp_path / "coco")
        return (["prepare", "coco", "--annotations", coco, "--images", images, "--out", coco], coco,
                "--annotations", "frcnn_cli.data.coco.prepare_coco")
    if name == "prepare merge":
        return (["prepare", "merge", manifest, synth_set[0], "--out", manifest], manifest, "a manifest to merge",
                "frcnn_cli.data.merge.merge_manifests")
    if name == "dump-proposals":
        return (["dump-proposals", "--model", tiny_checkpoint(), "--data", manifest, "--out", manifest], manifest,
                "--data", "frcnn_cli.inference.load_predictor")
    if name == "eval --report":
        return (["eval", "--model", tiny_checkpoint(), "--data", manifest, "--report", manifest, *TINY_CLI[-2:]],
                manifest, "--data", "frcnn_cli.inference.load_predictor")
    if name == "train-rpn --init":
        init = tiny_checkpoint("rpn.pt", parts=("backbone", "rpn"), stage="rpn")
        return (["train-rpn", "--data", synth_set[0], "--init", init, "--out", init, "--iters", "1", *TINY_CLI],
                init, "--init", "frcnn_cli.train.stage.run_stage")
    if name == "train-detector --proposals":
        props = write_proposal_store(tmp_path / "p.h5", synth_set[0], np.zeros((1, 4), np.float32),
                                     np.ones(1, np.float32))
        return (["train-detector", "--data", synth_set[0], "--proposals", props, "--out", props, "--init", "none",
                 "--iters", "1", *TINY_CLI], props, "--proposals", "frcnn_cli.train.stage.run_stage")
    assert name == "export --format torchscript"
    model = tiny_checkpoint()  # .pt is not refused by --format torchscript's suffix check (TorchScript uses it too)
    return (["export", "--model", model, "--format", "torchscript", "--out", model], model, "--model",
            "frcnn_cli.model.checkpoint.load_model")


OWN_INPUTS = ["prepare coco", "prepare merge", "dump-proposals", "eval --report", "train-rpn --init",
              "train-detector --proposals", "export --format torchscript"]


@pytest.mark.parametrize("name", OWN_INPUTS)
def test_an_output_that_is_one_of_the_commands_inputs_is_refused_before_any_work(name, tmp_path, synth_set,
                                                                                   tiny_checkpoint, monkeypatch,
                                                                                   assert_clean_error):
    """`prepare coco --out` the COCO file replaced it by the manifest, `dump-proposals --out` the manifest by an
    HDF5 file, `eval --report` the manifest by an HTML page; each exited 0."""
    args, own, option, work = _own_input(name, tmp_path, synth_set, tiny_checkpoint)
    before = own.read_bytes()
    _no_work(monkeypatch, work)
    assert_clean_error(_run(*args), f"cannot write {own}: it is also an input of this command ({option})",
                       "choose another")
    assert own.read_bytes() == before


def test_an_output_reached_by_a_symbolic_link_to_the_input_is_refused_too(tmp_path, synth_set, tiny_checkpoint,
                                                                          assert_clean_error):
    manifest = tmp_path / "m.json"
    shutil.copy(synth_set[1], manifest)
    (tmp_path / "link.json").symlink_to(manifest)
    result = _run("dump-proposals", "--model", tiny_checkpoint(), "--data", manifest, "--out", tmp_path / "link.json")
    assert_clean_error(result, "it is also an input of this command (--data)")
    assert manifest.read_bytes() == Path(synth_set[1]).read_bytes()


def test_detect_out_the_images_own_folder_is_refused_and_no_photo_is_drawn_over(tmp_path, synth_set,
                                                                                 tiny_checkpoint, monkeypatch,
                                                                                 assert_clean_error):
    """`frcnn detect photos --out photos` wrote each drawn copy over its photo (exit 0): the originals were gone."""
    photos = tmp_path / "photos"
    shutil.copytree(Path(synth_set[1]).parent / "JPEGImages", photos)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    _no_work(monkeypatch, "frcnn_cli.inference.load_predictor")
    assert_clean_error(_run("detect", photos, "--model", tiny_checkpoint(), "--out", photos),
                       f"--out {photos} would replace the image", "a folder of its own")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


# --------------------------------------------------------------------------------------------------
# a file of the wrong kind: named for what it is, not called damaged with advice to make it again


def _files_of_each_kind(tmp_path: Path, synth_set, tiny_checkpoint) -> dict[str, Path]:
    coco, _ = write_coco_set(tmp_path / "coco")
    props = write_proposal_store(tmp_path / "p.h5", synth_set[1], np.zeros((1, 4), np.float32), np.ones(1, np.float32))
    return {"manifest": Path(synth_set[1]), "checkpoint": tiny_checkpoint(), "coco": coco, "hdf5": props}


WRONG_KINDS = [  # (arguments with {kind} placeholders, the kind given, what the message calls it)
    (["detect", "{image}", "--model", "{manifest}"], "manifest", "is a frcnn manifest"),
    (["eval", "--model", "{hdf5}", "--data", "{manifest}"], "hdf5", "is an HDF5 file"),
    (["eval", "--model", "{checkpoint}", "--data", "{hdf5}"], "hdf5", "not a frcnn manifest"),
    (["train-rpn", "--data", "{checkpoint}", "--out", "{tmp}/r.pt"], "checkpoint", "is a PyTorch checkpoint"),
    (["train-rpn", "--data", "{coco}", "--out", "{tmp}/r.pt"], "coco", "frcnn prepare coco --annotations"),
    (["train-rpn", "--data", "{manifest}", "--init", "{manifest}", "--out", "{tmp}/r.pt"], "manifest",
     "is a frcnn manifest"),
    (["train-rpn", "--data", "{manifest}", "--config", "{checkpoint}", "--out", "{tmp}/r.pt"], "checkpoint",
     "not a TOML config"),
    (["train-detector", "--data", "{manifest}", "--proposals", "{manifest}", "--out", "{tmp}/d.pt"], "manifest",
     "not a proposal file"),
    (["eval", "--proposals", "{checkpoint}", "--data", "{manifest}"], "checkpoint", "not a proposal file"),
    (["prepare", "proposals", "--from", "{hdf5}", "--data", "{manifest}", "--out", "{tmp}/p2.h5"], "hdf5",
     "a proposal file of frcnn is used as it is"),
    (["convert", "caffe", "{checkpoint}", "--out", "{tmp}/w.pt"], "checkpoint", "not a Caffe model"),
    (["prepare", "folder", "--images", "{tmp}", "--annotations", "{tmp}", "--classes", "{checkpoint}", "--out",
      "{tmp}/m.json"], "checkpoint", "not a text file"),
    (["prepare", "folder", "--images", "{voc}/JPEGImages", "--annotations", "{voc}/Annotations", "--split-file",
      "{manifest}", "--out", "{tmp}/m.json"], "manifest", "not a text file"),
]


@pytest.mark.parametrize(("args", "kind", "needle"), WRONG_KINDS, ids=lambda v: " ".join(v[:2]) if isinstance(v, list)
                         else None)
def test_a_file_of_the_wrong_kind_is_named_for_what_it_is(args, kind, needle, tmp_path, synth_set, tiny_checkpoint,
                                                         assert_clean_error):
    """A manifest as --model was "not a readable torch file … damaged", a proposal file as --data "run `frcnn
    prepare` again", a COCO file as --data "use frcnn prepare" (without which), a checkpoint as --config "not
    valid TOML … fix the file": advice that fits a damaged file, not the wrong one."""
    files = _files_of_each_kind(tmp_path, synth_set, tiny_checkpoint)
    image = Path(synth_set[1]).parent / "JPEGImages" / "000000.jpg"
    args = [a.format(tmp=tmp_path, image=image, voc=image.parent.parent, **files) for a in args]
    extra = {"train-rpn": TINY_CLI, "train-detector": TINY_CLI, "detect": CHECKPOINT_CLI,
             "eval": CHECKPOINT_CLI if "--model" in args else []}
    extra = [a for a in extra.get(args[0], []) if "--config" not in args or a not in ("--config", "tiny")]
    message = assert_clean_error(_run(*args, *extra), str(files[kind]), needle)
    assert "damaged" not in message and "again" not in message, message


# --------------------------------------------------------------------------------------------------
# nothing to score against: as training and --val refuse it (issue 31, defect 10), so does eval


def _without_objects(manifest: Path, out: Path, *, difficult: bool) -> Path:
    import json

    data = json.loads(manifest.read_text(encoding="utf-8"))
    for rec in data["images"]:
        if difficult:
            rec["difficult"] = [True] * len(rec["boxes"])
        else:
            rec.update(boxes=[], labels=[], difficult=[], truncated=[])
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


@pytest.mark.parametrize("what", ["--model", "--proposals", "--model --coco --report", "difficult only"])
def test_eval_on_a_manifest_without_objects_is_refused_before_any_work(what, tmp_path, synth_set, tiny_checkpoint,
                                                                       monkeypatch, assert_clean_error):
    """Exit 0 with every AP, recall and the mAP "n/a" (null in --json), while `train --val` of the same manifest
    says "holds no object to score"."""
    empty = _without_objects(Path(synth_set[1]), tmp_path / "empty.json", difficult=what == "difficult only")
    if what == "--proposals":
        props = write_proposal_store(tmp_path / "p.h5", empty, np.zeros((1, 4), np.float32), np.ones(1, np.float32))
        args = ["--proposals", props]
    else:
        args = ["--model", tiny_checkpoint(), *CHECKPOINT_CLI]
        args += ["--coco", "--report", tmp_path / "r.html"] if "--coco" in what else []
    monkeypatch.setattr("frcnn_cli.inference.load_predictor", lambda *a, **k: pytest.fail("a model ran"))
    result = _run("eval", "--data", empty, *args, "--json")
    needle = "but no box at all" if what != "difficult only" else "difficult box(es) (difficult objects"
    assert_clean_error(result, f"manifest {empty} holds 4 image(s)", needle, "evaluate on a manifest with annotated")
    assert not (tmp_path / "r.html").exists()


def test_prepare_synth_into_a_users_voc_folder_is_refused_and_replaces_nothing(tmp_path, monkeypatch,
                                                                               assert_clean_error):
    """`prepare synth --out data` where data/ holds the user's VOC set replaced JPEGImages/000000.jpg and
    Annotations/000000.xml by drawn shapes (exit 0). An earlier synthetic set is still replaced whole."""
    mine = tmp_path / "data"
    (mine / "JPEGImages").mkdir(parents=True)
    (mine / "JPEGImages" / "000000.jpg").write_bytes(b"my photo")
    _no_work(monkeypatch, "frcnn_cli.data.synthetic._write_image")
    assert_clean_error(_run("prepare", "synth", "--out", mine, "--train", "1", "--test", "1"),
                       f"{mine} holds {mine / 'JPEGImages'}, and it is not a synthetic set", "empty or new folder")
    assert (mine / "JPEGImages" / "000000.jpg").read_bytes() == b"my photo"
    monkeypatch.undo()
    synth = tmp_path / "synth"
    for seed in ("1", "2"):
        assert _run("prepare", "synth", "--out", synth, "--train", "1", "--test", "1", "--seed", seed).exit_code == 0


@pytest.mark.parametrize("classes", [[], ["a", "a", "b"], ["", "b"]], ids=["none", "twice", "empty name"])
def test_a_checkpoint_whose_class_list_no_model_can_have_is_refused_by_every_command(classes, tiny_checkpoint,
                                                                                   tmp_path, assert_clean_error):
    """`export` of such a hand-made checkpoint refused its own temporary file ("….m.onnx.pid….tmp has damaged frcnn
    metadata …; rerun frcnn export": advice in a circle); detect drew and wrote ambiguous labels, exit 0."""
    model = tiny_checkpoint(classes=classes)
    for args in (["export", "--model", model, "--format", "onnx", "--out", tmp_path / "m.onnx"],
                 ["detect", Path(__file__), "--model", model, *CHECKPOINT_CLI]):
        message = assert_clean_error(_run(*args), f"checkpoint {model} has the class list",
                                     "not one or more distinct non-empty names")
        assert ".tmp" not in message
