"""Table 5's one-stage ablation: dense sliding windows as Fast R-CNN's proposals in training and at test time
(dense_proposals.py; ``train-detector --proposals dense``, ``eval --test-proposals dense``)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CLI

from frcnn_cli.cli.main import cli
from frcnn_cli.config import get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.dense_proposals import DenseProposalSource, DenseProposer, DenseWindows, is_dense

pytestmark = pytest.mark.usefixtures("one_thread")


def _windows(ratios, scales=(1.0,), min_size=0.0):
    cfg = apply_overrides(get_preset("vgg16"), [f"anchors.scales={','.join(map(str, scales))}",
                                                f"anchors.ratios={','.join(map(str, ratios))}",
                                                f"rpn.min_size={min_size}"])
    return DenseWindows.from_config(cfg, "dense")


def test_one_square_window_per_cell_by_hand():
    # a 16 x 16 template at stride 16 over a 20 x 40 image: ceil(20/16) = 2 rows, ceil(40/16) = 3 columns,
    # cell-major, clipped to the image
    windows = _windows((1.0,)).windows(20, 40)
    torch.testing.assert_close(windows, torch.tensor([
        [0.0, 0, 16, 16], [16, 0, 32, 16], [32, 0, 40, 16],
        [0, 16, 16, 20], [16, 16, 32, 20], [32, 16, 40, 20]]))


def test_three_ratios_per_cell_by_hand():
    # py-faster-rcnn's templates of base 16, scale 1, around (7.5, 7.5): ratio 0.5 -> 23 x 12, inclusive
    # [-3.5, 2, 18.5, 13], ours [-3.5, 2, 19.5, 14]; ratio 1 -> ours [0, 0, 16, 16]; ratio 2 -> 11 x 22,
    # inclusive [2.5, -3, 12.5, 18], ours [2.5, -3, 13.5, 19]; then clipped to the 16 x 32 image
    windows = _windows((0.5, 1.0, 2.0)).windows(16, 32)  # one row of two cells
    torch.testing.assert_close(windows, torch.tensor([
        [0.0, 2, 19.5, 14], [0, 0, 16, 16], [2.5, 0, 13.5, 16],
        [12.5, 2, 32, 14], [16, 0, 32, 16], [18.5, 0, 29.5, 16]]))


def test_the_papers_windows_of_a_600_by_1000_image():
    vgg = get_preset("vgg16")
    dense = DenseWindows.from_config(vgg, "dense")
    assert dense.windows(600, 1000, 1.6).shape == (38 * 63 * 9, 4)  # 21,546: the paper's "~20k"
    square = DenseWindows.from_config(vgg, "dense-square")
    sides = square.templates[:, 2] - square.templates[:, 0]
    assert sides.tolist() == [128.0, 256.0, 512.0]  # 3 scales x 1:1
    assert square.windows(600, 1000, 1.6).shape == (38 * 63 * 3, 4)


def test_windows_below_the_min_size_in_original_pixels_are_dropped():
    dense = _windows((1.0,), min_size=5.0)  # at scale 2: 10 scaled pixels
    kept = dense.windows(20, 40, 2.0)  # the bottom row is 4 px high
    assert kept.tolist() == [[0.0, 0, 16, 16], [16, 0, 32, 16]]  # the 8-px-wide corner goes too


def test_the_proposer_gives_each_image_its_own_windows_whatever_the_batch():
    dense = _windows((0.5, 1.0, 2.0))
    sizes, scales = torch.tensor([[20, 40], [16, 32]]), torch.tensor([1.0, 1.0])
    found = DenseProposer(dense)(None, None, torch.zeros(2, 1, 4), sizes, scales)
    torch.testing.assert_close(found[0][0], dense.windows(20, 40))
    torch.testing.assert_close(found[1][0], dense.windows(16, 32))
    assert found[1][1].tolist() == [0.0] * 6


def test_the_training_source_gives_windows_in_original_pixels_at_the_training_scale():
    cfg = apply_overrides(get_preset("vgg16"), ["input.train_scales=300", "input.max_size=1000"])
    manifest = Manifest("m", ["a"], "/", [ImageRecord("x", "x.jpg", 200, 100, [], [], [])])
    source = DenseProposalSource("dense", manifest, cfg)
    boxes, scores = source.get(0)  # scale 3: a 300 x 600 image
    torch.testing.assert_close(boxes, source.dense.windows(300, 600, 3.0) / 3)
    assert is_dense("dense") and is_dense("dense-square") and not is_dense("props.h5")


def test_fast_rcnn_trains_and_is_tested_on_dense_windows(synth_set, tmp_path):
    train, test = synth_set
    det = tmp_path / "det-dense.pt"
    result = CliRunner().invoke(cli, ["train-detector", "--data", str(train), "--proposals", "dense", "--out",
                                      str(det), "--iters", "2", "--init", "none", *TINY_CLI])
    assert result.exit_code == 0, result.output
    prov = torch.load(det, weights_only=True)["provenance"]
    assert prov["proposals"] == "dense" and "proposals_hash" not in prov
    result = CliRunner().invoke(cli, ["eval", "--model", str(det), "--data", str(test), "--test-proposals",
                                      "dense-square", "--json", "--set", "runtime.num_workers=0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "proposals: dense sliding windows (dense-square: 3 scales x 1 ratios" in result.output
    assert 0.0 <= json.loads(result.stdout.strip().splitlines()[-1])["map"] <= 1.0
