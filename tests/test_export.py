"""``frcnn export`` and exported models in ``detect``/``eval``/``bench``: the files give the checkpoint's
detections on images of two sizes, in ONNX Runtime and TorchScript, and as plain ONNX Runtime code reads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from frcnn_cli.data.images import batch_from_images, load_image
from frcnn_cli.export import verify
from frcnn_cli.export.predictor import load_exported
from frcnn_cli.export.writer import export_model
from frcnn_cli.inference import InferenceSettings, Predictor
from frcnn_cli.model.checkpoint import file_sha256, load_model, save_checkpoint
from frcnn_cli.model.detector import FasterRCNN

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CLASSES = ["circle", "bottle", "car", "triangle", "donut"]
NO_WORKERS = ("--set", "runtime.num_workers=0")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``make(*overrides)``: a random tiny checkpoint (64 px) of the config ``tiny_config(*overrides)``."""
    folder = tmp_path_factory.mktemp("export")

    def make(*overrides: str):
        path = folder / f"model{len(list(folder.glob('*.pt')))}.pt"
        torch.manual_seed(0)
        save_checkpoint(path, FasterRCNN(tiny_config(*overrides), CLASSES), stage="final", provenance={})
        return path

    return make


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """The default tiny checkpoint and its ONNX and TorchScript exports (checked on the default images)."""
    ckpt = checkpoints()
    folder = tmp_path_factory.mktemp("exported")
    model, _ = load_model(ckpt)
    files = {}
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        files[fmt] = export_model(model, InferenceSettings.from_config(model.cfg), folder / name, fmt=fmt,
                                  checkpoint=ckpt).path
    return {"checkpoint": ckpt, **files}


def _images():
    """Two sizes (landscape and portrait), neither at the test scale."""
    return verify.check_images(((120, 160), (150, 90), (120, 160)), seed=3)


def _reference(checkpoint, **settings):
    model, _ = load_model(checkpoint)
    return Predictor(model, "cpu", InferenceSettings.from_config(model.cfg, **settings), owned=True)


def _assert_same_detections(want, got):
    assert len(got["scores"]) == len(want["scores"])
    torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)
    assert torch.equal(got["labels"], want["labels"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_gives_the_checkpoints_detections_on_two_sizes(exported, fmt):
    reference = _reference(exported["checkpoint"])
    predictor = load_exported(exported[fmt], torch.device("cpu"))
    assert predictor.classes == CLASSES and predictor.settings == reference.settings
    counts = []
    for image in _images():
        want = reference.run(batch_from_images([image], reference.settings.config.input)).detections[0]
        _assert_same_detections(want, predictor.detect_image(image))
        counts.append(len(want["scores"]))
    assert min(counts) > 0


@pytest.mark.parametrize("extra", [("roi_head.pooler=roipool",), ("rpn.objectness=sigmoid", "input.pixel_order=bgr")])
def test_onnx_export_of_other_configs_gives_the_checkpoints_detections(checkpoints, tmp_path, extra):
    ckpt = checkpoints(*extra)
    model, _ = load_model(ckpt)
    settings = InferenceSettings.from_config(model.cfg)
    report = export_model(model, settings, tmp_path / "m.onnx", fmt="onnx", checkpoint=ckpt, images=_images())
    assert report.verification.ok and report.verification.detections > 0
    predictor, reference = load_exported(report.path, torch.device("cpu")), _reference(ckpt)
    for image in _images()[:2]:
        want = reference.run(batch_from_images([image], settings.config.input)).detections[0]
        _assert_same_detections(want, predictor.detect_image(image))


def _plain_onnxruntime(path, image: np.ndarray):
    """What docs/deploying.md tells a user to write, without frcnn."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"image": image})
    return classes, boxes, scores, labels


def test_plain_onnxruntime_reads_the_contract_and_the_metadata(exported):
    image = load_image_array()
    classes, boxes, scores, labels = _plain_onnxruntime(exported["onnx"], image)
    assert classes == CLASSES
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
    assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape and len(scores) > 0
    assert (np.diff(scores) <= 0).all() and labels.min() >= 0 and labels.max() < len(CLASSES)
    assert (boxes[:, 2] <= image.shape[2]).all() and (boxes[:, 3] <= image.shape[1]).all()
    meta = ort.InferenceSession(str(exported["onnx"])).get_modelmeta().custom_metadata_map
    assert meta["checkpoint_sha256"] == file_sha256(exported["checkpoint"])
    assert json.loads(meta["config"])["input"]["test_scale"] == 64
    assert meta["file_format"] == "onnx"


def load_image_array() -> np.ndarray:
    return _images()[1].numpy()


@pytest.mark.parametrize("setting", [("score_thresh", 0.999), ("rpn.min_size", 10000.0)])
def test_an_image_without_detections_gives_empty_outputs_of_the_right_shapes(checkpoints, tmp_path, setting):
    ckpt = checkpoints()
    model, _ = load_model(ckpt)
    key, value = setting
    settings = (InferenceSettings.from_config(model.cfg, overrides=[f"{key}={value}"]) if "." in key else
                InferenceSettings.from_config(model.cfg))
    if key == "score_thresh":
        from dataclasses import replace
        settings = replace(settings, detections=replace(settings.detections, score_thresh=value))
    path = export_model(model, settings, tmp_path / "empty.onnx", fmt="onnx", checkpoint=ckpt).path
    _, boxes, scores, labels = _plain_onnxruntime(path, load_image_array())
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64


def test_export_settings_are_those_of_detect(checkpoints, tmp_path, frcnn):
    ckpt = checkpoints()
    out = tmp_path / "m.onnx"
    frcnn("export", "--model", ckpt, "--format", "onnx", "--out", out, "--proposals-n", 7, "--score-thresh", 0.1,
          "--set", "roi_head.nms_thresh=0.5", *NO_WORKERS)
    predictor = load_exported(out, torch.device("cpu"))
    assert predictor.settings.proposals.post_nms_top_n == 7
    assert predictor.settings.detections.score_thresh == 0.1 and predictor.settings.detections.nms_thresh == 0.5
    from frcnn_cli.ablations import ProposalAblation

    reference = _reference(ckpt, overrides=["roi_head.nms_thresh=0.5"], score_thresh=0.1,
                           ablation=ProposalAblation(top_n=7))
    for image in _images()[:2]:
        want = reference.run(batch_from_images([image], reference.settings.config.input)).detections[0]
        _assert_same_detections(want, predictor.detect_image(image))


def test_detect_json_of_the_onnx_model_equals_the_checkpoints(exported, synth_set, frcnn):
    images = synth_set[1].parent / "JPEGImages"
    # the checkpoint one image at a time: in a batch an image is padded to the largest one, which changes
    # what GroupNorm sees; the graph always runs one image (the batch size only groups the decoding)
    runs = [json.loads(frcnn("detect", images, "--model", exported[key], "--json", "--score-thresh", 0.15,
                             *NO_WORKERS, "--batch-size", batch_size).stdout)
            for key, batch_size in (("checkpoint", 1), ("onnx", 3))]
    want, got = runs
    assert [r["image"] for r in got] == [r["image"] for r in want] and len(want) == 12
    assert sum(len(r["detections"]) for r in want) > 0
    for a, b in zip(want, got):
        assert (a["width"], a["height"]) == (b["width"], b["height"])
        assert len(a["detections"]) == len(b["detections"])
        left = list(b["detections"])  # the same detections; near-equal scores of a random model may swap places
        for d in a["detections"]:
            twin = next(e for e in left if e["label"] == d["label"] and abs(d["score"] - e["score"]) <= 2e-6
                        and max(abs(x - y) for x, y in zip(d["box"], e["box"])) <= 2e-3)
            left.remove(twin)


def test_detect_on_an_onnx_model_goes_on_past_an_unreadable_photo(exported, synth_set, frcnn, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "a.jpg"
    good.write_bytes((synth_set[1].parent / "JPEGImages" / "000000.jpg").read_bytes())
    (folder / "b.jpg").write_text("not a picture")
    result = frcnn("detect", folder, "--model", exported["onnx"], "--json", "--score-thresh", 0.15, *NO_WORKERS,
                   ok=False)
    entries = json.loads(result.stdout)
    assert result.exit_code != 0 and [e["image"] for e in entries] == [str(good), str(folder / "b.jpg")]
    assert "error" not in entries[0] and entries[1]["detections"] == [] and "cannot be decoded" in entries[1]["error"]


def test_eval_of_the_exported_models_equals_the_checkpoints(exported, synth_set, frcnn):
    runs = [json.loads(frcnn("eval", "--model", exported[key], "--data", synth_set[1], "--json", *NO_WORKERS).stdout)
            for key in ("checkpoint", "onnx", "torchscript")]
    assert runs[0]["ap"] == runs[1]["ap"] == runs[2]["ap"]


def test_bench_of_an_onnx_model_reports_the_total_only(exported, frcnn):
    result = frcnn("bench", "--model", exported["onnx"], "--runs", 1, "--warmup", 0, "--json")
    report = json.loads(result.stdout)
    assert report["ms_per_image"]["total"] > 0
    assert report["ms_per_image"]["backbone"] is None and report["ms_per_image"]["region_wise"] is None
    assert report["image_size"] == [64, 96]  # 375x500 at the test scale 64, padded to 16
    assert "total only" in result.output


def test_a_corrupted_onnx_file_is_one_error_line(exported, tmp_path, frcnn, assert_clean_error, synth_set):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported["onnx"].read_bytes()[:5000])
    images = synth_set[1].parent / "JPEGImages"
    assert_clean_error(frcnn("detect", images, "--model", bad, ok=False), "bad.onnx", "not a readable ONNX")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    assert_clean_error(frcnn("eval", "--model", garbage, "--data", synth_set[1], ok=False), "garbage.onnx")


@pytest.mark.parametrize(("args", "needle"), [
    (("--set", "input.test_scale=80"), "fixed in its graph"),
    (("--proposals-n", "5"), "--proposals-n N"),
    (("--score-thresh", "0.01"), "--score-thresh 0.01"),
])
def test_settings_baked_into_the_graph_are_refused(exported, synth_set, frcnn, assert_clean_error, args, needle):
    images = synth_set[1].parent / "JPEGImages"
    result = frcnn("detect", images, "--model", exported["onnx"], *args, ok=False)
    assert_clean_error(result, needle, "frcnn export")


def test_an_exported_model_gives_no_proposals(exported, synth_set, frcnn, assert_clean_error, tmp_path):
    result = frcnn("dump-proposals", "--model", exported["onnx"], "--data", synth_set[1], "--out", tmp_path / "p.h5",
                   *NO_WORKERS, ok=False)
    assert_clean_error(result, "detections", "checkpoint", out_dir=tmp_path)


def test_a_failed_check_is_an_error_naming_the_difference_and_writes_nothing(checkpoints, tmp_path, frcnn,
                                                                            assert_clean_error, monkeypatch):
    monkeypatch.setattr(verify, "BOX_TOLERANCE", -1.0)  # no export can pass: the check must refuse it
    out = tmp_path / "out"
    result = frcnn("export", "--model", checkpoints(), "--format", "onnx", "--out", out / "m.onnx", ok=False)
    assert_clean_error(result, "largest box difference", "nothing was written", out_dir=out)


def test_check_images_from_the_command_line(checkpoints, tmp_path, frcnn, synth_set):
    images = sorted((synth_set[1].parent / "JPEGImages").glob("*.jpg"))[:2]
    result = frcnn("export", "--model", checkpoints(), "--format", "torchscript", "--out", tmp_path / "m.ts",
                   *(a for p in images for a in ("--check-images", p)))
    h, w = load_image(images[0]).shape[-2:]
    assert f"checked on 2 images ({w}x{h}," in result.output
    assert (tmp_path / "m.ts").is_file()


def test_compare_detections_measures_the_largest_differences():
    def dets(boxes, scores, labels):
        return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
                "labels": torch.tensor(labels)}

    want = dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [1, 2])
    same = verify.compare_detections(want, want)
    assert same.ok and same.box_px == 0 and same.compared == 4
    moved = verify.compare_detections(want, dets([[0, 0, 10, 11.5], [20, 20, 40, 40]], [0.9, 0.3], [1, 2]))
    assert not moved.ok and moved.box_px == pytest.approx(1.5)
    rescored = verify.compare_detections(want, dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.305], [1, 2]))
    assert not rescored.ok and rescored.score == pytest.approx(0.005)
    relabelled = verify.compare_detections(want, dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [1, 3]))
    assert not relabelled.ok and "label 2" in relabelled.unmatched[0]
    fewer = verify.compare_detections(want, dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.45, 0.3], [1, 2]))
    assert fewer.counts == (1, 0) and not fewer.ok


def test_the_deploying_pages_onnxruntime_example_runs_on_an_exported_model(exported, tmp_path):
    page = (Path(__file__).resolve().parent.parent / "docs" / "deploying.md").read_text(encoding="utf-8")
    block = page.split("<!-- deploying-example")[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 12 and "frcnn" not in block
    from PIL import Image

    Image.fromarray(_images()[1].permute(1, 2, 0).numpy()).save(tmp_path / "cat.jpg")
    code = block.replace('"model.onnx"', repr(str(exported["onnx"])))
    # -I: no PYTHONPATH, no working folder on the path: the repository's frcnn_cli is not importable
    result = subprocess.run([sys.executable, "-I", "-c", code + "\nimport sys; assert 'frcnn_cli' not in sys.modules"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and lines[0].split()[0] in CLASSES
