"""What the training commands tell a newcomer (issue 31): a set without objects, a run folder refused with the
option that differs and its two values, a failed first attempt that blocks nothing, validation ties and a
validation that never improved, the provenance of best checkpoints, ``--epochs`` rounded, and the advice for
``frcnn train`` (which has no ``--init``). The validation tests train on 2 images, flipped: one iteration of 4
images an epoch, so that every iteration can be validated."""

from __future__ import annotations

import json

import pytest

from frcnn_cli.data.manifest import read_manifest, write_manifest
from frcnn_cli.model.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_images(train_set, tmp_path_factory) -> tuple:
    """``(train.json, val.json)``: the first 2 images of the train set (an epoch is one iteration), 2 others."""
    folder = tmp_path_factory.mktemp("two")
    paths = []
    for name, source, images in (("train", train_set[0], slice(0, 2)), ("val", train_set[1], slice(0, 2))):
        manifest = read_manifest(source)
        manifest.images = manifest.images[images]
        write_manifest(folder / f"{name}.json", manifest)
        paths.append(folder / f"{name}.json")
    return tuple(paths)


def _without_objects(source, path, *, difficult: bool = False):
    """``source`` with every box removed (or, ``difficult``, every box marked difficult), written to ``path``."""
    manifest = read_manifest(source)
    for rec in manifest.images:
        if difficult:
            rec.difficult = [True] * len(rec.boxes)
        else:
            rec.boxes, rec.labels, rec.difficult, rec.truncated = [], [], [], None
    write_manifest(path, manifest)
    return path


@pytest.mark.parametrize("command", ["train-rpn", "train-detector", "train"])
def test_a_set_without_a_single_object_is_an_error_at_the_start_of_every_training_command(
        command, train_set, frcnn, train_options, tmp_path, assert_clean_error):
    """Before: "nan% of the 0 training boxes have an anchor …" and a training on nothing, exit 0."""
    data = _without_objects(train_set[0], tmp_path / "empty.json")
    out = tmp_path / "out"
    target = ["--workdir", out] if command == "train" else ["--out", out / "x.pt"]
    extra = ["--proposals", tmp_path / "none.h5"] if command == "train-detector" else []
    result = frcnn(command, "--data", data, *target, *extra, "--iters", 2, *train_options(), ok=False)
    assert_clean_error(result, f"{data} holds 12 image(s) but no box at all: nothing to learn", out_dir=out)
    assert "nan" not in result.output.lower()


def test_only_difficult_boxes_are_nothing_to_learn_too(train_set, frcnn, train_options, tmp_path, assert_clean_error):
    data = _without_objects(train_set[0], tmp_path / "hard.json", difficult=True)
    result = frcnn("train-rpn", "--data", data, "--out", tmp_path / "x.pt", "--iters", 2, *train_options(), ok=False)
    assert_clean_error(result, "but only", "difficult box(es)", "nothing to learn")


def test_validation_ties_keep_the_later_checkpoint_and_the_summary_says_it_never_improved(
        two_images, frcnn, train_options, figures, tmp_path):
    """A metric stuck at 0.0 used to keep the first validation's checkpoint: the least-trained model."""
    figures([0.0, 0.0, 0.0])
    out = tmp_path / "rpn.pt"
    result = frcnn("train-rpn", "--data", two_images[0], "--init", "none", "--epochs", 3, "--val", two_images[1],
                   "--val-every", 1, "--out", out, *train_options())
    rows = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "val_recall" in r]
    assert [r["best"] for r in rows] == [True, True, True]
    best = read_checkpoint(tmp_path / "rpn.best.pt")
    assert best["train_state"]["iteration"] == best["provenance"]["best"]["iteration"] == 3
    assert read_checkpoint(out)["provenance"]["validation"]["improved"] is False
    said = " ".join(result.stderr.split())
    assert "rpn.best.pt is the best checkpoint" in said and "validation never improved on its first figure (0)" in said


def test_a_validation_that_falls_keeps_the_first_and_says_so_one_that_rises_says_nothing(
        two_images, frcnn, train_options, figures, tmp_path):
    figures([0.5, 0.4, 0.5])
    args = ["train-rpn", "--data", two_images[0], "--init", "none", "--epochs", 3, "--val", two_images[1],
            "--val-every", 1, *train_options()]
    result = frcnn(*args, "--out", tmp_path / "a" / "rpn.pt")
    assert read_checkpoint(tmp_path / "a" / "rpn.best.pt")["provenance"]["best"]["iteration"] == 3
    assert "never improved on its first figure (0.5)" in " ".join(result.stderr.split())
    figures([0.5, 0.4, 0.6])
    result = frcnn(*args, "--out", tmp_path / "b" / "rpn.pt")
    assert "never improved" not in result.stderr
    assert read_checkpoint(tmp_path / "b" / "rpn.pt")["provenance"]["validation"]["improved"] is True


def test_best_checkpoints_carry_the_provenance_keys_of_formats_md_and_rpn_steps_their_anchors(
        two_images, frcnn, train_options, figures, tmp_path):
    """``validation`` and ``planned_iterations`` were missing from best checkpoints (a KeyError for readers), and
    the RPN checkpoints of ``frcnn train`` had no ``anchors``."""
    figures([0.3, 0.2] * 4)
    frcnn("train", "--data", two_images[0], "--workdir", tmp_path, "--epochs", 2, "--val", two_images[1],
          "--val-every", 1, *train_options())
    state = json.loads((tmp_path / "state.json").read_text())
    for step in ("rpn1", "det1", "rpn2", "final"):
        for path in (tmp_path / f"{step}.pt", tmp_path / f"{step}.last.pt"):
            prov = read_checkpoint(path)["provenance"]
            assert prov["planned_iterations"] == 2 and prov["validation"]["metric"] in ("val_map", "val_recall")
            assert prov["validation"]["best_iteration"] == 1
            assert ("anchors" in prov) == step.startswith("rpn")
            if step.startswith("rpn"):
                assert prov["anchors"] == state["anchors"] and prov["anchors"]["before"]["boxes"] > 0
    assert read_checkpoint(tmp_path / "final.pt")["provenance"]["iterations"] == 1


def test_rpn_checkpoints_of_frcnn_train_carry_their_anchors_without_val_too(train_set, frcnn, train_options,
                                                                            tmp_path):
    frcnn("train", "--data", train_set[0], "--workdir", tmp_path, "--mode", "joint", "--iters", 1, *train_options())
    assert read_checkpoint(tmp_path / "final.pt")["provenance"]["anchors"]["before"]["boxes"] > 0


@pytest.fixture(scope="module")
def finished_run(train_set, frcnn, train_options, tmp_path_factory, one_thread):
    """A finished joint run of 2 iterations with ``--val v.json``; returns ``(workdir, v.json, its args)``."""
    work = tmp_path_factory.mktemp("finished")
    val = work / "v.json"
    write_manifest(val, read_manifest(train_set[1]))
    args = ["train", "--data", train_set[0], "--workdir", work / "run", "--mode", "joint", "--iters", 2,
            "--val", val, *train_options()]
    frcnn(*args)
    return work / "run", val, args


def test_a_changed_val_file_is_said_to_have_changed_not_other_options(finished_run, frcnn, assert_clean_error):
    """Before: "holds a run with other validation options (--val, --val-every, --patience …)"."""
    workdir, val, args = finished_run
    original = val.read_bytes()
    manifest = read_manifest(val)
    manifest.images = manifest.images[1:]
    write_manifest(val, manifest)
    try:
        result = frcnn(*args, ok=False)
    finally:
        val.write_bytes(original)
    message = assert_clean_error(result, f"--val {val} changed since the run started (content hash",
                                 "restore it or use another --workdir")
    assert "other validation options" not in message
    assert frcnn(*args).exit_code == 0  # restored: the finished run is recognised again


@pytest.mark.parametrize("change, said", [
    (["--iters", "3"], "--iters 2 when the run started, 3 now"),
    (["--epochs", "1"], "--iters 2 when the run started, not given now; --epochs not given when the run started, "
                        "1.0 now"),
    (["--mode", "alternating"], "--mode joint when the run started, alternating now"),
    (["--val-every", "2"], "--val-every not given when the run started, 2 now"),
    (["--set", "solver.lr=0.02"], "--set solver.lr 0.01 when the run started, 0.02 now"),
    (["--seed", "7"], "--seed 3 when the run started, 7 now"),
    (["--set", "input.flip=false"], "--set input.flip true when the run started, false now"),
    (["--config", "zf"], "--config tiny when the run started, zf now; and "),
])
def test_every_refusal_of_a_run_folder_names_the_option_that_differs_and_its_two_values(
        finished_run, frcnn, assert_clean_error, change, said):
    workdir, _, args = finished_run
    args = [a for a in args if a not in ("--iters", 2)] if "--epochs" in change else list(args)
    if "--mode" in change:
        i = args.index("--mode")
        args[i + 1] = change[1]
    else:
        args += change
    result = frcnn(*args, ok=False)
    assert_clean_error(result, f"{workdir} holds a run started with other options ({said}",
                       "rerun it with the same options or use another --workdir")


def test_a_failed_first_attempt_blocks_nothing_and_its_advice_names_set_init(train_set, frcnn, train_options,
                                                                            tmp_path, assert_clean_error):
    """The quickstart's offline `frcnn train` failed on the ImageNet weights, left state.json, and the next
    command on that folder was refused; its advice named --init, which train does not have."""
    workdir = tmp_path / "mine"
    common = ["train", "--data", train_set[0], "--workdir", workdir, "--mode", "joint", *train_options()]
    failed = frcnn(*common, "--set", "init=imagenet", "--iters", 2, ok=False)  # tiny has no ImageNet weights
    assert_clean_error(failed, "ImageNet weights", "--set init=none")
    assert (workdir / "state.json").exists()  # what a kill at this point leaves too
    result = frcnn(*common, "--iters", 1)
    said = " ".join(result.stderr.split())
    assert f"{workdir} held a run that never trained an iteration, started with other options (--iters 2 when " in said
    assert "--set init imagenet when the run started, none now" in said
    assert json.loads((workdir / "state.json").read_text())["done"] == ["final"]


def test_a_run_that_trained_an_iteration_is_still_protected(train_set, frcnn, train_options, tmp_path,
                                                           kill_after_saving, assert_clean_error):
    workdir = tmp_path / "run"
    common = ["train", "--data", train_set[0], "--workdir", workdir, "--mode", "joint", "--checkpoint-every", 1,
              *train_options()]
    kill_after_saving(1)
    with pytest.raises(BaseException, match="killed after writing"):
        frcnn(*common, "--iters", 2)
    result = frcnn(*common, "--iters", 3, ok=False)
    assert_clean_error(result, "--iters 2 when the run started, 3 now")


def test_epochs_rounded_to_whole_iterations_are_said(train_set, two_images, frcnn, train_options, tmp_path):
    """``--epochs 0.01`` ran 1 iteration (0.167 epochs here) without a word."""
    result = frcnn("train-rpn", "--data", train_set[0], "--init", "none", "--epochs", 0.01, "--out",
                   tmp_path / "rpn.pt", *train_options())
    said = " ".join(result.stderr.split())
    assert ("rpn: --epochs 0.01 is 0.06 iterations (6 an epoch of 24 images of 4 per iteration); a step runs whole "
            "iterations, at least one: 1, which is 0.167 epochs") in said
    quiet = frcnn("train-rpn", "--data", two_images[0], "--init", "none", "--epochs", 1, "--out",
                  tmp_path / "b.pt", *train_options())
    assert "a step runs whole iterations" not in quiet.stderr
