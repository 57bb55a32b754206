"""frcnn eval: detector AP (JSON, devkit result files, plots, class checks) and proposal recall."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import cpu_predictor
from PIL import Image

from frcnn_cli.cli.evaluate import split_of
from frcnn_cli.cli.main import cli
from frcnn_cli.config import get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data.manifest import ImageRecord, Manifest, manifest_hash, write_manifest
from frcnn_cli.data.proposal_store import SETTINGS, ProposalWriter
from frcnn_cli.inference import detect_manifest
from frcnn_cli.model.checkpoint import save_checkpoint
from frcnn_cli.model.detector import FasterRCNN

CLASSES = ["cat", "dog"]


def _records():
    return [
        ImageRecord("im 0", "a.png", 64, 48, [[10.0, 10.0, 30.0, 30.0]], [0], [False]),
        ImageRecord("im1", "b.png", 64, 48, [[0.0, 0.0, 20.0, 20.0], [30.0, 5.0, 60.0, 40.0]], [1, 0],
                    [False, True]),
        ImageRecord("im2", "c.png", 64, 48, [], [], []),
    ]


def _manifest(root, name="synth-test", classes=CLASSES) -> Manifest:
    return Manifest(name, list(classes), str(root), _records())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name, colour in (("a", (200, 30, 30)), ("b", (20, 90, 200)), ("c", (90, 90, 90))):
        Image.new("RGB", (64, 48), colour).save(root / f"{name}.png")
    data = root / "synth-test.json"
    write_manifest(data, _manifest(root))
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), ["input.test_scale=64", "input.max_size=96"])
    model = FasterRCNN(cfg, CLASSES).eval()
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model, stage="final", provenance={})
    return root, data, ckpt, model


def _eval(*args):
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


def test_eval_json_schema_and_metric_choice(setup):
    _, data, ckpt, _ = setup
    result = _eval("--model", ckpt, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) == {"metric", "map", "ap"} and summary["metric"] == "11point"
    assert list(summary["ap"]) == CLASSES
    assert all(0.0 <= v <= 1.0 for v in summary["ap"].values())
    assert summary["map"] == pytest.approx(sum(summary["ap"].values()) / 2)
    assert "mAP" in result.stderr and "AP (%)" in result.stderr
    area = _eval("--model", ckpt, "--data", data, "--json", "--metric", "area")
    assert json.loads(area.stdout)["metric"] == "area"
    voc07 = _eval("--model", ckpt, "--data", data, "--json", "--voc2007")
    assert json.loads(voc07.stdout) == summary


def test_eval_out_writes_devkit_files_in_voc_pixels_and_plots(setup, tmp_path):
    root, data, ckpt, model = setup
    out = tmp_path / "out"
    result = _eval("--model", ckpt, "--data", data, "--out", out, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # the result folder on stdout, the tables on stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["ap_summary.png", "comp4_det_test_cat.txt", "comp4_det_test_dog.txt", "pr_cat.png",
                     "pr_dog.png"]
    dets = detect_manifest(cpu_predictor(model), _manifest(root), batch_size=2)
    ids = ["im 0", "im1", "im2"]
    for k, name in enumerate(CLASSES):
        want = [(ids[i], float(s), *(b + torch.tensor([1.0, 1.0, 0.0, 0.0])).tolist())
                for i, d in enumerate(dets) for s, b, lab in zip(d["scores"], d["boxes"], d["labels"])
                if lab == k + 1]
        lines = (out / f"comp4_det_test_{name}.txt").read_text().splitlines()
        got = [line.replace("%20", " ").rsplit(" ", 5) for line in lines]  # "im 0" is written "im%200"
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            assert g[0] == w[0]
            assert [float(v) for v in g[1:]] == pytest.approx(list(w[1:]), abs=2e-3)


def test_eval_without_matplotlib_warns_and_writes_the_result_files(setup, tmp_path, monkeypatch):
    _, data, ckpt, _ = setup
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = _eval("--model", ckpt, "--data", data, "--out", tmp_path, "--proposals-n", "1")
    assert result.exit_code == 0, result.output
    assert "matplotlib is not installed" in result.stderr
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".txt", ".txt"]
    lines = sum(len(p.read_text().splitlines()) for p in tmp_path.iterdir())
    assert 0 < lines <= 2 * 3  # one proposal per image: at most one box per class and image


def test_split_is_the_manifest_names_last_part():
    assert split_of("voc2007-test") == "test"
    assert split_of("voc2007+2012-trainval") == "trainval"
    assert split_of("mydata") == "test" and split_of("odd-") == "test"


def test_the_validation_manifest_of_prepare_folder_gives_the_val_split():
    """``prepare folder --val-fraction`` names its second manifest ``NAME.val``: not ``comp4_det_test_*``."""
    assert split_of("kangaroo.val") == "val" and split_of("kangaroo-v2.val") == "val"
    assert split_of("my.photos-test") == "test" and split_of("kangaroo") == "test"


def test_a_manifest_with_other_classes_is_refused_naming_both_files(setup, tmp_path):
    root, _, ckpt, _ = setup
    other = tmp_path / "birds.json"
    write_manifest(other, _manifest(root, classes=["cat", "bird"]))
    result = _eval("--model", ckpt, "--data", other)
    assert result.exit_code != 0 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert str(other) in message and str(ckpt) in message
    assert "only in the manifest: bird; only in the model: dog" in message
    swapped = tmp_path / "swapped.json"
    write_manifest(swapped, _manifest(root, classes=["dog", "cat"]))
    result = _eval("--model", ckpt, "--data", swapped)
    assert result.exit_code != 0 and "another order" in " ".join(result.output.split())


@pytest.mark.parametrize("args, message", [
    ((), "exactly one of --model"),
    (("--model", "m.pt", "--proposals", "p.h5"), "exactly one of --model"),
    (("--model", "m.pt", "--voc2007", "--metric", "area"), "cannot go with --metric area"),
    (("--proposals", "p.h5", "--no-rpn-nms"), "apply to --model only"),
])
def test_options_that_do_not_go_together_are_one_error_line(setup, args, message, assert_clean_error):
    """Like every other command's option conflicts (bench, prepare folder): ``Error: …``, exit 2, no usage block."""
    _, data, _, _ = setup
    result = _eval(*args, "--data", data)
    assert result.exit_code == 2 and "Usage:" not in result.output
    assert result.output.startswith("Error:")
    assert_clean_error(result, message)


def test_an_unknown_option_keeps_clicks_usage_error(setup):
    _, data, _, _ = setup
    result = _eval("--modle", "m.pt", "--data", data)
    assert result.exit_code == 2 and "Usage: " in result.output and "No such option '--modle'" in result.output


def _recall_file(root, path):
    manifest = _manifest(root)
    attrs = {key: 0 for key in SETTINGS} | {"config": {}}
    with ProposalWriter(path, manifest_hash=manifest_hash(manifest), attrs=attrs, manifest=manifest) as w:
        w.write(0, torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.tensor([0.9]))  # IoU 1 with the cat
        # the dog [0, 0, 20, 20] is covered with IoU 320/400 = 0.8; the difficult cat does not count
        w.write(1, torch.tensor([[0.0, 0.0, 20.0, 16.0], [30.0, 5.0, 60.0, 40.0]]), torch.tensor([0.8, 0.7]))
        w.write(2, torch.zeros((0, 4)), torch.zeros(0))
        w.finish()
    return path


def test_proposal_recall_at_each_iou_and_the_fig2_plot(setup, tmp_path):
    root, data, _, _ = setup
    path = _recall_file(root, tmp_path / "p.h5")
    out = tmp_path / "out"
    result = _eval("--proposals", path, "--data", data, "--json", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iou_thresholds"] == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    assert summary["recall"]["300"] == pytest.approx([1.0] * 7 + [0.5] * 3)
    assert summary["average_recall"]["100"] == pytest.approx(0.85)
    assert summary["num_objects"] == 2
    assert (out / "recall_vs_iou.png").stat().st_size > 0


HEADER = ["N", *(f"{0.5 + 0.05 * i:.2f}" for i in range(10)), "AR"]


def _header_cells(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def test_the_recall_table_is_whole_in_a_log_file(setup, tmp_path, monkeypatch):
    """stderr to a file or pipe: rich falls back to 80 columns, too few for 12 columns of recall."""
    from rich.console import Console

    from frcnn_cli.cli import console

    monkeypatch.setattr(console, "err_console", Console(stderr=True, highlight=False, width=80))
    root, data, _, _ = setup
    result = _eval("--proposals", _recall_file(root, tmp_path / "p.h5"), "--data", data)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stderr
    assert _header_cells(result.stderr) == HEADER
    assert "│ 300  │ 1.000 │ 1.000 │" in result.stderr and "0.850" in result.stderr


def test_a_table_on_a_terminal_keeps_the_terminal_width(monkeypatch):
    import io

    from rich.console import Console

    from frcnn_cli.cli import console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(console, "err_console", Console(file=screen, width=60, highlight=False))
    console.table("recall", HEADER, [["300", *["1.000"] * 10, "0.850"]])
    lines = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue()).splitlines()  # without the colour codes
    assert lines and max(len(line) for line in lines) == 60
