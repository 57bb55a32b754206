"""The length chosen from the data when no ``--epochs``/``--iters``/``--time`` is given: the validation split
carved from the training manifest (deterministic, reported in the plan, with the way to turn it off), and the
patience that then ends each step; the paper presets keep their fixed schedule."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import TINY_CLI

from frcnn_cli.config import get_preset
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.train.data_schedule import MAX_CARVED, carve_validation, carved_count, choose_length
from frcnn_cli.train.pipeline import PipelineRequest, plans, settle_request

TINY = get_preset("tiny")


def _manifest(n: int) -> Manifest:
    images = [ImageRecord(f"{i:04d}", f"{i:04d}.jpg", 64, 48, [[1.0, 1.0, 9.0, 9.0]], [0], [False])
              for i in range(n)]
    return Manifest("set", ["a"], "/nowhere", images)


def test_a_carve_holds_out_the_fraction_within_its_bounds():
    assert carved_count(200, 0.15) == 30
    assert carved_count(40, 0.15) == 6
    assert carved_count(30, 0.15) == 0  # 4.5 rounds to 4: under five images measure nothing
    assert carved_count(5000, 0.15) == MAX_CARVED
    assert carved_count(8, 0.5) == 0 and carved_count(12, 0.5) == 6  # never more than it leaves to train


def test_the_carved_split_is_the_same_for_the_same_manifest_and_seed_and_disjoint():
    manifest = _manifest(100)
    train, val = carve_validation(manifest, TINY)
    again_train, again_val = carve_validation(manifest, TINY)
    assert [r.id for r in val.images] == [r.id for r in again_val.images]
    assert [r.id for r in train.images] == [r.id for r in again_train.images]
    assert len(val.images) == 15 and len(train.images) == 85
    assert not {r.id for r in train.images} & {r.id for r in val.images}
    other = carve_validation(manifest, replace(TINY, seed=4))[1]
    assert [r.id for r in other.images] != [r.id for r in val.images]
    assert carve_validation(_manifest(20), TINY) is None


def test_validation_decides_the_length_only_when_none_is_given_and_the_preset_has_patience():
    vgg = get_preset("vgg16")
    assert choose_length(TINY, iters=None, epochs=None, seconds=None, validating=True, patience=None) == (
        choose_length(TINY, iters=None, epochs=None, seconds=None, validating=True, patience=5))  # tiny: 5 validations
    chosen = choose_length(TINY, iters=None, epochs=None, seconds=None, validating=True, patience=None)
    assert (chosen.source, chosen.patience, chosen.until_plateau) == ("validation", TINY.solver.patience, True)
    for given in ({"iters": 5}, {"epochs": 2.0}, {"seconds": 60.0}):
        fixed = choose_length(TINY, **{"iters": None, "epochs": None, "seconds": None, **given}, validating=True,
                              patience=None)
        assert not fixed.until_plateau and fixed.patience is None
    # the paper presets: a --val keeps the best checkpoint but never changes the paper's length
    paper = choose_length(vgg, iters=None, epochs=None, seconds=None, validating=True, patience=None)
    assert (paper.source, paper.until_plateau, vgg.solver.val_fraction, vgg.solver.mode) == (
        "epochs", False, 0.0, "alternating")


def test_frcnn_train_carves_its_validation_split_and_says_so_in_the_plan(frcnn, tmp_path):
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.data.synthetic import make_synthetic_set

    train_path, _ = make_synthetic_set(tmp_path / "set", n_train=40, n_test=1, seed=2, image_size=(64, 48))
    before = train_path.read_bytes()
    req = settle_request(PipelineRequest(cfg=TINY, manifest=read_manifest(train_path), manifest_path=train_path,
                                         workdir=tmp_path / "unused", device=None))
    assert req.mode == "joint" and req.carved == 6 and len(req.manifest.images) == 34
    (step, plan), = plans(req, TINY)
    assert (step, plan.source, plan.epochs) == ("final", "validation", TINY.solver.max_epochs)
    result = frcnn("train", "--data", train_path, "--workdir", tmp_path / "run", *TINY_CLI, "--mode", "joint",
                   "--set", "solver.max_epochs=1", "--val-every", 1)
    said = " ".join(result.stderr.split())
    assert f"validation: 6 of the 40 images of {train_path}" in said and "--set solver.val_fraction=0" in said
    assert "final.pt is the best checkpoint: val_map=" in said  # the carved split validated it, as --val would
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["carved"] == 6 and state["mode"] == "joint" and state["val"] is None
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "val_map" in r] == [17]  # 34 images, flipped, 4 an iteration
    assert train_path.read_bytes() == before  # the manifest on disk is never changed


@pytest.mark.parametrize("given", [{"cfg": replace(TINY, solver=replace(TINY.solver, val_fraction=0.0))},
                                   {"epochs": 1.0}, {"iters": 3}])
def test_no_carve_with_the_switch_off_or_a_fixed_length(given, tmp_path):
    req = PipelineRequest(**{"cfg": TINY, "manifest": _manifest(100), "manifest_path": tmp_path / "m.json",
                             "workdir": tmp_path, "device": None, **given})
    settled = settle_request(req)
    assert settled.carved == 0 and settled.val_manifest is None and len(settled.manifest.images) == 100


def test_a_set_too_small_to_carve_is_said_to_train_whole_for_its_fixed_epochs():
    from frcnn_cli.train.data_schedule import carve_note

    note = carve_note(_manifest(20), None, TINY, "small.json")
    assert "small.json has 20 images: too few to hold out a validation split" in note and "--val" in note
