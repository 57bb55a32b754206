"""frcnn detect: finding images, detections in original pixels, drawing, output names, the command."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import cpu_predictor
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.config import get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data import loading as loading_module
from frcnn_cli.data.images import find_images
from frcnn_cli.detect import (
    PALETTE,
    detect_images,
    detections_json,
    draw_detections,
    output_paths,
    save_detections,
)
from frcnn_cli.errors import ConfigError, DataError
from frcnn_cli.model.checkpoint import save_checkpoint
from frcnn_cli.model.detector import FasterRCNN

CLASSES = ["cat", "dog"]


def _model(**roi_head) -> FasterRCNN:
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), ["input.test_scale=64", "input.max_size=96"])
    if roi_head:
        cfg = replace(cfg, roi_head=replace(cfg.roi_head, **roi_head))
    return FasterRCNN(cfg, CLASSES).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def predictor(model):
    return cpu_predictor(model)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of a 64x48 RGB PNG, the same grey as L and RGB, and an RGBA one with its RGB twin."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    paths = {"rgb": root / "a.png", "gray": root / "sub" / "grey é 1.png", "gray_rgb": root / "sub" / "g.png",
             "rgba": root / "sub" / "c.png", "rgba_rgb": root / "sub" / "d.bmp"}
    Image.new("RGB", (64, 48), (120, 30, 200)).save(paths["rgb"])
    Image.new("L", (50, 40), 100).save(paths["gray"])
    Image.new("RGB", (50, 40), (100, 100, 100)).save(paths["gray_rgb"])
    Image.new("RGBA", (60, 45), (10, 200, 30, 128)).save(paths["rgba"])
    Image.new("RGB", (60, 45), (10, 200, 30)).save(paths["rgba_rgb"])
    return root, paths


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, stage="final", provenance={})
    return path


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------------------------------
# finding images


def test_find_images_searches_folders_recursively_for_image_types_sorted(tmp_path):
    for name in ("b.JPG", "a.png", "sub/z.webp", "sub/deep/y.TIFF", "notes.txt", ".hidden.png",
                 ".cache/x.png", "sub/x.gif"):
        _touch(tmp_path / name)
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.png", "b.JPG", "sub/deep/y.TIFF", "sub/x.gif", "sub/z.webp"]


def test_find_images_keeps_argument_order_and_names_a_file_once(tmp_path):
    one, two = _touch(tmp_path / "f" / "1.png"), _touch(tmp_path / "2.jpg")
    assert find_images([two, tmp_path / "f", one, two]) == [two, one]


def test_find_images_skips_the_output_folder(tmp_path):
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "out" / "a.png")
    assert find_images([tmp_path], exclude=tmp_path / "out") == [tmp_path / "a.png"]


def test_an_empty_folder_or_a_missing_path_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(DataError, match="empty holds no images"):
        find_images([tmp_path / "empty"])
    with pytest.raises(DataError, match="nothere.jpg does not exist"):
        find_images([tmp_path / "nothere.jpg"])


# --------------------------------------------------------------------------------------------------
# detections


def _by_name(results):
    return {r["image"].rsplit("/", 1)[-1]: r for r in results}


def test_png_grayscale_and_rgba_images_give_detections_in_original_pixels(predictor, files):
    _, paths = files
    results = detect_images(predictor, list(paths.values()), batch_size=2, score_thresh=0.0)
    got = _by_name(results)
    assert [(r["width"], r["height"]) for r in results] == [(64, 48), (50, 40), (50, 40), (60, 45), (60, 45)]
    for r in results:
        assert set(r) == {"image", "width", "height", "detections"}
        dets = r["detections"]
        assert dets and all(set(d) == {"label", "score", "box"} for d in dets)
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        boxes = torch.tensor([d["box"] for d in dets])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= r["width"]).all() and (boxes[:, 3] <= r["height"]).all()
        assert boxes[:, 2].max() > 0.75 * r["width"]  # not left in the 64-pixel scaled frame
    # grey L == the same grey as RGB; RGBA == its RGB (alpha dropped, not composited)
    _assert_same(got["grey é 1.png"]["detections"], got["g.png"]["detections"])
    _assert_same(got["c.png"]["detections"], got["d.bmp"]["detections"])


def _assert_same(a, b):
    """Equal up to float noise (the images sit in batches with different neighbours)."""
    assert [d["label"] for d in a] == [d["label"] for d in b]
    assert [d["score"] for d in a] == pytest.approx([d["score"] for d in b], abs=1e-5)
    assert torch.allclose(torch.tensor([d["box"] for d in a]), torch.tensor([d["box"] for d in b]), atol=2e-3)


def test_score_threshold_and_class_filter_select_detections(predictor, files):
    _, paths = files
    everything = detect_images(predictor, [paths["rgb"]], score_thresh=0.0)[0]["detections"]
    cut = sorted(d["score"] for d in everything)[len(everything) // 2]
    above = detect_images(predictor, [paths["rgb"]], score_thresh=cut)[0]["detections"]
    assert above == [d for d in everything if d["score"] >= cut]
    cats = detect_images(predictor, [paths["rgb"]], score_thresh=0.0, classes_filter=["cat"])[0]["detections"]
    assert cats == [d for d in everything if d["label"] == "cat"] and cats
    with pytest.raises(ConfigError, match="'bird'.*cat, dog"):
        detect_images(predictor, [paths["rgb"]], classes_filter=["bird"])


def test_a_threshold_below_the_models_own_shows_low_scores_and_leaves_the_config(files):
    low = _model()
    with torch.no_grad():  # background logit +5: every class score is 1 / (e^5 + 2) = 0.0066
        low.roi_head.cls_score.weight.zero_()
        low.roi_head.cls_score.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    _, paths = files
    predictor = cpu_predictor(low)
    assert detect_images(predictor, [paths["rgb"]], score_thresh=0.05)[0]["detections"] == []
    dets = detect_images(predictor, [paths["rgb"]], score_thresh=0.0)[0]["detections"]
    assert dets and all(d["score"] == pytest.approx(0.006648, abs=2e-6) for d in dets)
    assert low.cfg.roi_head.score_thresh == 0.05 and predictor.settings.detections.score_thresh == 0.05


def _blocks(path, height, width, seed, mode="RGB"):
    """Random 8x8-pixel blocks: edges for the RPN, and an image that resizing cannot blur into one grey."""
    shape = (height // 8 + 1, width // 8 + 1) + ((3,) if mode == "RGB" else ())
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    Image.fromarray(pixels[:height, :width], mode).save(path)
    return path


def test_loader_workers_give_byte_identical_output(tmp_path, monkeypatch):
    """Decoding and rescaling in a worker (one thread) or here: the same JSON and drawn files, in order."""
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), ["input.test_scale=128", "input.max_size=192"])
    model = FasterRCNN(cfg, CLASSES).eval()
    (tmp_path / "in").mkdir()
    paths = [_blocks(tmp_path / "in" / "photo.jpg", 400, 600, 0),  # shrunk by rows (data/resize.py)
             _blocks(tmp_path / "in" / "small.png", 48, 64, 1), _blocks(tmp_path / "in" / "grey.png", 90, 70, 2, "L"),
             _blocks(tmp_path / "in" / "wide.bmp", 60, 500, 3), _blocks(tmp_path / "in" / "tall.png", 300, 130, 4)]
    workers = []
    loader = loading_module.failsafe_loader
    monkeypatch.setattr(loading_module, "failsafe_loader",
                        lambda *a, **kw: workers.append(kw["num_workers"]) or loader(*a, **kw))
    outputs = []
    for n in (0, 1):
        predictor = cpu_predictor(model, runtime=(f"runtime.num_workers={n}",))
        results = detect_images(predictor, paths, batch_size=2, score_thresh=0.0)
        save_detections(results, tmp_path / f"out{n}", classes=CLASSES)
        files = sorted(p for p in (tmp_path / f"out{n}").rglob("*") if p.is_file())
        outputs.append((detections_json(results), {p.name: p.read_bytes() for p in files}))
    assert workers == [0, 1]
    assert outputs[0] == outputs[1]
    results = json.loads(outputs[0][0])
    assert [r["image"] for r in results] == [str(p) for p in paths]
    assert all(r["detections"] for r in results) and len(outputs[0][1]) == 6


# --------------------------------------------------------------------------------------------------
# drawing and output names


def test_draw_detections_draws_the_box_in_the_class_colour(tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (80, 60), (0, 0, 0)).save(src)
    out = draw_detections(src, [{"label": "dog", "score": 0.987, "box": [10.0, 30.0, 40.0, 55.0]}],
                          tmp_path / "drawn" / "in.png", classes=CLASSES)
    image = Image.open(out).convert("RGB")
    assert image.size == (80, 60)
    dog = PALETTE[1]
    assert image.getpixel((10, 50)) == dog and image.getpixel((39, 50)) == dog  # left, right edges
    assert image.getpixel((25, 54)) == dog and image.getpixel((25, 50)) == (0, 0, 0)  # bottom edge, inside
    assert image.getpixel((70, 5)) == (0, 0, 0)
    label_area = [image.getpixel((x, y)) for x in range(10, 40) for y in range(10, 30)]
    assert label_area.count(dog) > 100 and any(p != dog and p != (0, 0, 0) for p in label_area)
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["in.png"]  # no temporary left


def test_output_names_keep_spaces_and_never_collide(tmp_path):
    images = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "b" / "chat noir é.png",
              tmp_path / "b" / "anim.gif", tmp_path / "b" / "anim.gif.png"]
    names = [p.relative_to(tmp_path / "out").as_posix() for p in output_paths(images, tmp_path / "out")]
    assert names == ["a/x.jpg", "b/x.jpg", "b/chat noir é.png", "b/anim.gif.png", "b/anim.gif (2).png"]
    assert output_paths([tmp_path / "a" / "x.jpg"], tmp_path / "o") == [tmp_path / "o" / "x.jpg"]


# --------------------------------------------------------------------------------------------------
# the command


def _detect(*args):
    return CliRunner().invoke(cli, ["detect", *map(str, args)])


def test_detect_json_on_stdout_and_out_folder(files, checkpoint, tmp_path):
    root, _ = files
    out = tmp_path / "out"
    result = _detect(root, "--model", checkpoint, "--score-thresh", "0", "--json", "--out", out,
                     "--batch-size", "3")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [r["image"] for r in printed] == [str(p) for p in find_images([root])]
    assert json.loads((out / "detections.json").read_text(encoding="utf-8")) == printed
    drawn = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert drawn == ["a.png", "detections.json", "sub/c.png", "sub/d.bmp", "sub/g.png", "sub/grey é 1.png"]
    assert "(64x48): 54 detections" in result.stderr and "class" in result.stderr


def test_detect_classes_option_and_proposal_ablations(files, checkpoint):
    _, paths = files
    result = _detect(paths["rgb"], "--model", checkpoint, "--score-thresh", "0", "--json", "--classes", "dog")
    assert result.exit_code == 0, result.output
    labels = {d["label"] for d in json.loads(result.stdout)[0]["detections"]}
    assert labels == {"dog"}
    one = _detect(paths["rgb"], "--model", checkpoint, "--score-thresh", "0", "--json", "--no-rpn-reg",
                  "--proposals-n", "1")
    assert one.exit_code == 0, one.output
    assert 1 <= len(json.loads(one.stdout)[0]["detections"]) <= 2  # one proposal: a box per class at most
    assert "no reg, N=1" in one.stderr


def test_detect_errors_are_one_clean_line(tmp_path, checkpoint, model):
    (tmp_path / "empty").mkdir()
    result = _detect(tmp_path / "empty", "--model", checkpoint)
    assert result.exit_code != 0
    assert "Error:" in result.output and "empty holds no images" in result.output
    assert "Traceback" not in result.output
    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    bad = _detect(tmp_path / "x.png", "--model", checkpoint, "--classes", "cat,bird")
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "Error: --classes: 'bird' not among the model's classes (cat, dog)" in bad.output
    rpn_only = tmp_path / "rpn.pt"
    save_checkpoint(rpn_only, model, stage="rpn", provenance={}, parts=("backbone", "rpn"))
    result = _detect(tmp_path / "x.png", "--model", rpn_only)
    assert result.exit_code != 0 and "has no detection head" in result.output


def test_save_detections_refuses_the_images_own_folder_and_leaves_the_photos(tmp_path):
    """The library's save_detections into the folder of the images would draw each copy over its photo."""
    photo = _blocks(tmp_path / "photo.png", 40, 60, 7)
    before = photo.read_bytes()
    results = [{"image": str(photo), "width": 60, "height": 40,
                "detections": [{"label": "dog", "score": 0.9, "box": [1.0, 2.0, 30.0, 20.0]}]}]
    with pytest.raises(DataError, match="would replace the image"):
        save_detections(results, tmp_path, classes=CLASSES)
    assert photo.read_bytes() == before and not (tmp_path / "detections.json").exists()
    assert save_detections(results, tmp_path / "drawn", classes=CLASSES) == [tmp_path / "drawn" / "photo.png"]
