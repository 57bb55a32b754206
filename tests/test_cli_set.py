"""``--set`` on commands that run a trained checkpoint: detect, eval, dump-proposals (and bench)."""

from __future__ import annotations

import json

import h5py
import pytest
from click.testing import CliRunner

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import read_manifest


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def checkpoint(tiny_checkpoint, synth_set):
    return tiny_checkpoint("model.pt", read_manifest(synth_set[1]).classes)


def test_detect_applies_a_test_time_setting(checkpoint, synth_set):
    images = read_manifest(synth_set[1])
    image = images.image_path(images.images[0])
    base = _run("detect", image, "--model", checkpoint, "--score-thresh", "0", "--json")
    capped = _run("detect", image, "--model", checkpoint, "--score-thresh", "0", "--json",
                  "--set", "roi_head.detections_per_image=2")
    assert base.exit_code == 0 and capped.exit_code == 0, capped.output
    full = json.loads(base.stdout)[0]["detections"]
    assert len(full) > 2  # random weights: many boxes above the 0.05 score floor
    assert json.loads(capped.stdout)[0]["detections"] == full[:2]  # the two best, unchanged


def test_eval_takes_the_set_and_direct_convolutions_give_the_same_ap(checkpoint, synth_set):
    _, test = synth_set
    runs = [_run("eval", "--model", checkpoint, "--data", test, "--json", *extra)
            for extra in ((), ("--set", "solver.cpu_winograd=false", "--set", "solver.num_workers=0"))]
    assert all(r.exit_code == 0 for r in runs), runs[1].output
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout)


def test_dump_proposals_records_the_changed_scale(checkpoint, synth_set, tmp_path):
    train, _ = synth_set
    out = tmp_path / "p.h5"
    result = _run("dump-proposals", "--model", checkpoint, "--data", train, "--out", out,
                  "--set", "input.test_scale=48")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        assert int(f.attrs["scale"]) == 48


@pytest.mark.parametrize("command", [["detect", "x.png"], ["eval", "--data", "m.json"],
                                     ["dump-proposals", "--data", "m.json", "--out", "p.h5"],
                                     ["bench"]])
def test_keys_the_weights_fix_are_refused_before_anything_is_read(command, tmp_path):
    result = _run(*command, "--model", tmp_path / "missing.pt", "--set", "anchors.scales=4,8")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: --set anchors.scales=4,8: 'anchors.scales' is fixed by the checkpoint")
    assert "Traceback" not in result.output


def test_set_and_a_proposal_file_do_not_go_together(synth_set, tmp_path):
    result = _run("eval", "--proposals", tmp_path / "p.h5", "--data", synth_set[1], "--set", "rpn.nms_thresh=0.5")
    assert result.exit_code == 2 and "--set" in result.output and "apply to --model only" in result.output


def test_an_unknown_key_names_it(checkpoint, synth_set):
    result = _run("eval", "--model", checkpoint, "--data", synth_set[1], "--set", "roi_head.nms=0.5")
    assert result.exit_code != 0 and "unknown config key 'roi_head.nms'" in result.output
