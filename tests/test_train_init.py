"""``--init`` takes imagenet, none, a frcnn checkpoint, or a plain weights file (e.g. converted Caffe weights)."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES, tiny_config

from frcnn_cli.cli.main import cli
from frcnn_cli.model.checkpoint import read_checkpoint
from frcnn_cli.model.detector import FasterRCNN


def _set_args(*extra: str) -> list[str]:
    return [a for kv in (*TINY_OVERRIDES, *extra) for a in ("--set", kv)]


def test_a_plain_weights_file_initialises_the_shared_convs(tmp_path, synth_set):
    trainval, _ = synth_set
    torch.manual_seed(123)
    donor = FasterRCNN(tiny_config(), ["a"])
    weights = {**donor.backbone_parts.shared.state_dict(), **donor.backbone_parts.head_top.state_dict()}
    assert len(weights) == len(donor.backbone_parts.shared.state_dict()) + len(
        donor.backbone_parts.head_top.state_dict()), "shared and head_top keys must be disjoint"
    torch.save(weights, tmp_path / "weights.pth")
    out = tmp_path / "rpn.pt"
    result = CliRunner().invoke(cli, ["train-rpn", "--data", str(trainval), "--out", str(out), "--config", "tiny",
                                      "--init", str(tmp_path / "weights.pth"), "--iters", "1",
                                      "--set", "solver.lr=0", "--set", "solver.weight_decay=0",
                                      *_set_args()])
    assert result.exit_code == 0, result.output
    stored = read_checkpoint(out)["parts"]["backbone"]
    for key, value in donor.backbone_parts.shared.state_dict().items():
        assert torch.equal(stored[key], value), key


def test_set_init_is_honoured_like_the_init_option(tmp_path, synth_set):
    trainval, _ = synth_set
    result = CliRunner().invoke(cli, ["train-rpn", "--data", str(trainval), "--out", str(tmp_path / "r.pt"),
                                      "--config", "tiny", "--iters", "1",
                                      *_set_args(f"init={tmp_path / 'nowhere.pth'}")])
    assert result.exit_code != 0
    assert "nowhere.pth" in result.output


def test_resume_without_a_saved_state_says_it_starts_from_iteration_zero(tmp_path, synth_set):
    trainval, _ = synth_set
    result = CliRunner().invoke(cli, ["train-rpn", "--data", str(trainval), "--out", str(tmp_path / "r.pt"),
                                      "--config", "tiny", "--init", "none", "--iters", "1", "--resume",
                                      *_set_args()])
    assert result.exit_code == 0, result.output
    assert "starting from iteration 0" in result.output

