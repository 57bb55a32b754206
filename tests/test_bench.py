from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from frcnn_cli.bench import STAGES, make_batches, synthetic_image, time_model
from frcnn_cli.cli.main import cli
from frcnn_cli.config import RuntimeConfig, get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.inference import InferenceSettings, Predictor
from frcnn_cli.model.checkpoint import save_checkpoint
from frcnn_cli.model.detector import FasterRCNN

KEYS = {"device", "batch_size", "image_size", "ms_per_image", "images_per_s", "peak_memory_mb", "precision"}
CPU = torch.device("cpu")


def _bench(*args: str):
    return CliRunner().invoke(cli, ["bench", *args])


def _tiny(**overrides) -> FasterRCNN:
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), [f"{k}={v}" for k, v in overrides.items()])
    return FasterRCNN(cfg, ["a", "b"])


def _check_document(doc: dict) -> None:
    assert set(doc) == KEYS
    assert set(doc["ms_per_image"]) == {"total", *STAGES}
    ms = doc["ms_per_image"]
    assert all(ms[k] > 0 for k in STAGES)
    assert sum(ms[k] for k in STAGES) == pytest.approx(ms["total"], rel=0.02)
    assert doc["images_per_s"] == pytest.approx(1000.0 / ms["total"])
    assert doc["peak_memory_mb"] > 0
    assert doc["precision"] in ("float32", "bfloat16")


def test_bench_json_is_the_design_document_for_the_synthetic_image():
    result = _bench("--config", "tiny", "--json", "--runs", "2", "--warmup", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    _check_document(doc)
    assert doc["device"] == "cpu" and doc["batch_size"] == 1
    # 500x375 at tiny's test scale 192 (max 320): scale 192/375, 256x192, already a multiple of 16
    assert doc["image_size"] == [192, 256]
    assert "shared convs" in result.stderr and "random weights" in result.stderr


def test_the_footer_names_the_runtime_key_that_switches_winograd_off():
    """It named ``solver.cpu_winograd``, the key's spelling before the runtime settings had their section."""
    args = ["--config", "tiny", "--runs", "1", "--warmup", "0", "--device", "cpu"]
    said = " ".join(_bench(*args).stderr.split())
    assert "Winograd F(4x4, 3x3) for 2 convs (--set runtime.cpu_winograd=false: direct)" in said
    direct = _bench(*args, "--set", "runtime.cpu_winograd=false")
    assert direct.exit_code == 0, direct.output
    assert "Winograd" not in direct.stderr


def test_bench_times_image_folders_in_batches(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (100, 80), (10, 200, 30)).save(folder / "sub" / "a.png")
    (folder / "notes.txt").write_text("not an image")
    result = _bench("--config", "tiny", str(folder), "--batch-size", "2", "--runs", "1", "--warmup", "0",
                    "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    _check_document(doc)
    # 100x80: scale 192/80 = 2.4 -> 240x192; the one image fills both places of the batch
    assert doc["batch_size"] == 2 and doc["image_size"] == [192, 240]


def test_bench_of_a_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _tiny(), stage="test", provenance={})
    result = _bench("--model", str(path), "--runs", "1", "--warmup", "0", "--json",
                    "--set", "rpn.test_post_nms_top_n=50")
    assert result.exit_code == 0, result.output
    _check_document(json.loads(result.stdout))
    assert "random weights" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--config", "tiny", "--model", "m.pt"], "exactly one of --model"),
    ([], "exactly one of --model"),
    (["--config", "nope"], "unknown preset 'nope'"),
    (["--config", "tiny", "missing.jpg"], "missing.jpg does not exist"),
    (["--model", "missing.pt"], "checkpoint missing.pt does not exist"),
    (["--model", "missing.pt", "--set", "backbone=zf"], "fixed by the checkpoint"),
    (["--config", "tiny", "--device", "tpu"], "device"),
])
def test_bench_errors_are_one_clean_line(args, message):
    result = _bench(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output


def test_bench_refuses_an_empty_folder_and_a_zero_batch(tmp_path):
    result = _bench("--config", "tiny", str(tmp_path))
    assert result.exit_code != 0 and "holds no images" in result.output
    result = _bench("--config", "tiny", "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output


def _predictor(model: FasterRCNN, **runtime) -> Predictor:
    return Predictor(model, CPU, InferenceSettings.from_config(model.cfg), RuntimeConfig(**runtime))


def test_every_timed_run_splits_exactly_into_the_three_stages():
    model = _tiny()
    batches = make_batches([synthetic_image(1)], model.cfg.input, 2, CPU, channels_last=True)
    per_run, peak = time_model(_predictor(model), batches, runs=3, warmup=1)
    assert len(per_run) == 3 and peak > 0
    for run in per_run:
        assert run["backbone"] + run["proposals"] + run["region_wise"] == pytest.approx(run["total"], rel=1e-9)


def test_batches_cycle_the_images_to_whole_batches():
    cfg = get_preset("tiny").input
    images = [synthetic_image(i) for i in range(4)]
    batches = make_batches(images, cfg, 3, CPU)
    assert [len(b) for b in batches] == [3, 3]
    assert torch.equal(batches[1].tensor[1], batches[0].tensor[0])  # image 0 again fills the second batch
    assert make_batches(images[:1], cfg, 1, CPU, channels_last=True)[0].tensor.is_contiguous(
        memory_format=torch.channels_last)


def test_the_predictor_prepares_a_copy_with_channels_last_and_the_configured_svd():
    model = _tiny(**{"roi_head.fc_svd_rank": 64})
    predictor = _predictor(model)
    assert predictor.svd_layers == ["roi_head.head_top.fc6", "roi_head.head_top.fc7"]
    assert predictor.winograd_layers == ["backbone.conv5", "rpn.conv"]  # tiny's 3x3 stride-1 128-channel convs
    prepared = predictor.model
    assert not prepared.training and prepared is not model
    assert prepared.backbone.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    # the model handed in is left as it was: no SVD, no Winograd, the usual layout
    assert type(model.roi_head.head_top.fc6) is torch.nn.Linear and type(model.backbone.conv5) is torch.nn.Conv2d
    assert not model.backbone.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    direct = _predictor(model, cpu_winograd=False, channels_last=False)
    assert direct.winograd_layers == [] and direct.model.backbone.conv2.weight.is_contiguous()
