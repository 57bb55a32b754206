"""Bad input, through the command line: one clean ``Error:`` line naming the file (and the image, object
or key) and what to do, a non-zero exit, no traceback, and nothing written under the output name.

Each case runs a real command (click's CliRunner; a subprocess where the process matters) on small files:
a folder of two 40x30 images with VOC XML, the 8+4 image synthetic set, and tiny random-weight models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_CLI, truncate_file, write_file
from PIL import Image

from frcnn_cli.cli.main import cli

pytestmark = pytest.mark.usefixtures("one_thread")  # faster on a busy 2-core machine

TINY = TINY_CLI


def _run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# prepare folder: annotations and images


def _xml(objects=(("cat", (5, 5, 20, 25)),), size=(40, 30)) -> str:
    body = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for name, b in objects)
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>"


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, Path]:
    """``imgs/a.png``, ``imgs/b.jpg`` (40x30) with ``xml/a.xml``, ``xml/b.xml`` (a cat each)."""
    images, xml = tmp_path / "imgs", tmp_path / "xml"
    images.mkdir()
    xml.mkdir()
    Image.new("RGB", (40, 30), (90, 120, 30)).save(images / "a.png")
    Image.new("RGB", (40, 30), (200, 20, 30)).save(images / "b.jpg", quality=90)
    for stem in ("a", "b"):
        (xml / f"{stem}.xml").write_text(_xml())
    return images, xml


FOLDER_CASES = {
    "malformed_xml": (lambda i, x: write_file(x / "a.xml", "<annotation><object><name>cat</name>"),
                      ["a.xml", "malformed XML", "fix or delete"]),
    "truncated_xml": (lambda i, x: truncate_file(x / "b.xml", 0.6), ["b.xml", "malformed XML"]),
    "xml_without_bndbox": (lambda i, x: write_file(x / "a.xml", "<annotation><object><name>cat</name></object>"
                                                            "</annotation>"),
                           ["a.xml, object 1 (cat): has no <bndbox>", "add the box"]),
    "non_numeric_coordinate": (lambda i, x: write_file(x / "b.xml", _xml([("cat", ("ten", 5, 20, 25))])),
                               ["b.xml, object 1 (cat)", "xmin 'ten' is not a number", "fix the box"]),
    "xmax_before_xmin": (lambda i, x: write_file(x / "a.xml", _xml([("cat", (30, 5, 12, 25))])),
                         ["a.xml, object 1 (cat)", "xmax 12 < xmin 30", "fix the box"]),
    "box_far_outside": (lambda i, x: write_file(x / "a.xml", _xml([("cat", (5, 5, 400, 25))])),
                        ["a.xml, object 1 (cat)", "outside the 40x30 image", "fix the box"]),
    "box_entirely_outside": (lambda i, x: write_file(x / "b.xml", _xml([("cat", (-90, -80, -50, -40))])),
                             ["b.xml, object 1 (cat)", "outside the 40x30 image"]),
    "missing_image": (lambda i, x: (i / "b.jpg").unlink(), ["b.xml: no image b", "add the image"]),
    "truncated_jpeg": (lambda i, x: truncate_file(i / "b.jpg", 0.5), ["b.jpg", "unreadable or truncated image"]),
    "not_an_image": (lambda i, x: write_file(i / "a.png", "this is a text file, not a PNG\n"),
                     ["a.png", "unreadable or truncated image", "replace it"]),
    "size_disagrees_with_image": (lambda i, x: write_file(x / "a.xml", _xml(size=(400, 300))),
                                  ["a.xml: <size> says 400x300", "a.png is 40x30", "fix <size>"]),
    "bad_difficult_flag": (lambda i, x: write_file(x / "a.xml", _xml().replace("<difficult>0", "<difficult>maybe")),
                           ["a.xml, object 1 (cat): <difficult> 'maybe' is not 0 or 1"]),
    "empty_annotation_folder": (lambda i, x: [p.unlink() for p in x.iterdir()],
                                ["no VOC XML annotations", "check the folder"]),
    "no_object_anywhere": (lambda i, x: [write_file(p, _xml(())) for p in x.iterdir()],
                           ["no <object> in any of the 2 annotations"]),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_bad_folder_data_is_one_clean_error_and_writes_no_manifest(folder, tmp_path, case, assert_clean_error):
    damage, needles = FOLDER_CASES[case]
    images, xml = folder
    damage(images, xml)
    out = tmp_path / "out"
    result = _run("prepare", "folder", "--images", images, "--annotations", xml, "--out", out / "m.json")
    assert_clean_error(result, *needles, out_dir=out)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_an_unknown_class_with_a_class_file_names_the_object(folder, tmp_path, assert_clean_error):
    images, xml = folder
    write_file(xml / "b.xml", _xml([("cat", (1, 1, 9, 9)), ("zebra", (2, 2, 30, 20))]))
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    out = tmp_path / "out"
    result = _run("prepare", "folder", "--images", images, "--annotations", xml, "--classes",
                  tmp_path / "classes.txt", "--out", out / "m.json")
    assert_clean_error(result, "b.xml, object 2 (zebra): unknown class 'zebra'", "add it to the class list",
                       out_dir=out)


def test_a_manifest_under_a_regular_file_cannot_be_written(folder, tmp_path, assert_clean_error):
    images, xml = folder
    (tmp_path / "plain.txt").write_text("not a folder")
    result = _run("prepare", "folder", "--images", images, "--annotations", xml, "--out",
                  tmp_path / "plain.txt" / "m.json")
    assert_clean_error(result, "cannot write", "plain.txt", "choose an output folder")
    assert (tmp_path / "plain.txt").read_text() == "not a folder"


def test_a_missing_voc_root_says_what_to_give(tmp_path, assert_clean_error):
    result = _run("prepare", "voc", "--root", tmp_path / "nowhere", "--out", tmp_path / "out" / "m.json")
    assert_clean_error(result, "VOC2007", "give --root the VOCdevkit folder", out_dir=tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# manifests


def _manifest_json(synth_set) -> dict:
    return json.loads(Path(synth_set[0]).read_text())


def _save_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _edit_image(index: int, **changes):
    def edit(data):
        data["images"][index].update(changes)
        if "boxes" in changes:
            data["images"][index].pop("truncated", None)
        return data
    return edit


MANIFEST_CASES = {
    "corrupt_json": (lambda d: json.dumps(d)[:-40] + "}}", ["bad.json is not valid JSON", "prepare"]),
    "not_a_manifest": (lambda d: [1, 2, 3], ["bad.json is not a frcnn manifest", "frcnn prepare"]),
    "future_version": (lambda d: {**d, "version": 7},
                       ["bad.json has version 7, newer than this frcnn reads", "upgrade frcnn"]),
    "negative_width": (_edit_image(2, width=-64), ["bad.json, image 2 (000002)", "-64", "positive integers"]),
    "box_of_three_numbers": (_edit_image(0, boxes=[[1.0, 2.0, 3.0]], labels=[0], difficult=[False]),
                             ["bad.json, image 0 (000000): box 0", "is not [x1, y1, x2, y2]"]),
    "label_out_of_range": (_edit_image(1, boxes=[[1.0, 2.0, 9.0, 9.0]], labels=[9], difficult=[False]),
                           ["image 1 (000001): box 0: label 9 is not an index into the 5 classes"]),
    "empty_box": (_edit_image(1, boxes=[[9.0, 2.0, 9.0, 9.0]], labels=[0], difficult=[False]),
                  ["image 1 (000001): box 0", "is empty or outside"]),
    "duplicate_id": (_edit_image(3, id="000000"), ["image 3 (000000): the id appears twice"]),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifests_are_refused_before_training(synth_set, tmp_path, case, assert_clean_error):
    make, needles = MANIFEST_CASES[case]
    bad = _save_json(tmp_path / "bad.json", make(_manifest_json(synth_set)))
    out = tmp_path / "out"
    result = _run("train-rpn", "--data", bad, "--out", out / "rpn.pt", *TINY, "--iters", "1")
    assert_clean_error(result, *needles, out_dir=out)


def test_a_missing_manifest_says_how_to_make_one(tmp_path, assert_clean_error):
    out = tmp_path / "out"
    result = _run("eval", "--proposals", tmp_path / "p.h5", "--data", tmp_path / "nope.json")
    assert_clean_error(result, "nope.json does not exist", "frcnn prepare", out_dir=out)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_deleted_after_prepare_names_the_image(synth_set, tmp_path, workers, assert_clean_error):
    data = _manifest_json(synth_set)
    root = tmp_path / "root"
    (root / "JPEGImages").mkdir(parents=True)
    for rec in data["images"][1:]:
        (root / rec["path"]).write_bytes((Path(data["root"]) / rec["path"]).read_bytes())
    manifest = _save_json(tmp_path / "m.json", {**data, "root": str(root)})
    out = tmp_path / "out"
    result = _run("train-rpn", "--data", manifest, "--out", out / "rpn.pt", *TINY, "--iters", "2",
                  "--set", f"solver.num_workers={workers}")
    assert_clean_error(result, "000000.jpg does not exist", "re-run frcnn prepare", out_dir=out)


def _manifest_with_a_changed_image(manifest_path: Path, tmp_path: Path) -> Path:
    """A copy of the set whose first image is now 20x20."""
    data = json.loads(manifest_path.read_text())
    root = tmp_path / "root"
    (root / "JPEGImages").mkdir(parents=True)
    for rec in data["images"]:
        (root / rec["path"]).write_bytes((Path(data["root"]) / rec["path"]).read_bytes())
    Image.new("RGB", (20, 20)).save(root / data["images"][0]["path"], format="JPEG")
    return _save_json(tmp_path / "m.json", {**data, "root": str(root)})


def test_an_image_changed_after_prepare_names_the_image(synth_set, tmp_path, tiny_checkpoint, assert_clean_error):
    manifest = _manifest_with_a_changed_image(synth_set[0], tmp_path)
    out = tmp_path / "out"
    result = _run("dump-proposals", "--model", tiny_checkpoint(), "--data", manifest, "--out",
                  out / "p.h5")
    assert_clean_error(result, "image 000000", "is 20x20 but the manifest says", "re-run it")
    # nothing under the final name; the unfinished dump stays for a rerun once the image is fixed
    assert [p.name for p in out.iterdir()] == ["p.h5.partial"]


def test_eval_with_loader_workers_names_a_changed_image(synth_set, tmp_path, tiny_checkpoint, assert_clean_error):
    manifest = _manifest_with_a_changed_image(synth_set[1], tmp_path)
    result = _run("eval", "--model", tiny_checkpoint(), "--data", manifest, "--out", tmp_path / "out",
                  "--set", "runtime.num_workers=1")
    assert_clean_error(result, "image 000", "is 20x20 but the manifest says", "re-run it", out_dir=tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# configuration and options


CONFIG_CASES = {
    "unknown_preset": (["--config", "vgg17"], ["unknown preset 'vgg17'", "choose one of vgg16, zf"]),
    "unknown_set_key": (["--set", "rpn.nms_thres=0.5"], ["--set rpn.nms_thres=0.5", "unknown config key "
                                                         "'rpn.nms_thres'", "use one of the keys allowed here"]),
    "unknown_section": (["--set", "optimizer.lr=0.5"], ["unknown config key 'optimizer'"]),
    "wrong_type": (["--set", "solver.lr=fast"], ["--set solver.lr=fast", "'solver.lr' must be a number"]),
    "wrong_int": (["--set", "rpn.batch_size_per_image=1.5"], ["'rpn.batch_size_per_image' must be an integer"]),
    "bad_choice": (["--set", "rpn.objectness=foo"], ["'rpn.objectness' is 'foo'", "allowed values: softmax, sigmoid"]),
    "not_key_value": (["--set", "solver.lr"], ["--set 'solver.lr' is not key=value"]),
    "zero_iters": (["--iters", "0"], ["'--iters': 0 is not in the range x>=1"]),
    "negative_iters": (["--iters", "-5"], ["'--iters': -5 is not in the range x>=1"]),
    "non_integer_iters": (["--iters", "ten"], ["'--iters': 'ten' is not a valid integer"]),
    "negative_checkpoint_every": (["--checkpoint-every", "-1"], ["'--checkpoint-every': -1"]),
    "cuda_without_gpu": (["--device", "cuda"], ["--device cuda", "no CUDA GPU", "use --device cpu"]),
    "unknown_device": (["--device", "quantum"], ["unknown device 'quantum'", "use cpu or cuda"]),
    "freeze_shared_without_checkpoint": (["--freeze-shared", "--init", "none"],
                                         ["--freeze-shared needs --init CHECKPOINT", "--init det1.pt"]),
    "missing_init_checkpoint": (["--init", "NOWHERE/det1.pt"], ["det1.pt does not exist"]),
    "nms_out_of_range": (["--set", "rpn.nms_thresh=5"], ["'rpn.nms_thresh' is 5.0; give a value from 0 to 1"]),
    "zero_size_divisor": (["--set", "input.size_divisor=0"], ["'input.size_divisor' is 0; give a value from 1"]),
    "no_train_scales": (["--set", "input.train_scales=[]"], ["'input.train_scales' is (); give one or more"]),
    "huge_test_scale": (["--set", "input.test_scale=100000"], ["'input.test_scale' is 100000", "from 1 to 8192"]),
    "negative_lr": (["--set", "solver.lr=-0.1"], ["'solver.lr' is -0.1; give a value of 0 or more"]),
    "nan_lr": (["--set", "solver.lr=nan"], ["'solver.lr' is nan"]),
    "negative_workers": (["--set", "solver.num_workers=-1"],
                         ["--set solver.num_workers=-1", "'runtime.num_workers' is -1; give a value from 0"]),
    "zero_conv_channels": (["--set", "rpn.conv_channels=0"], ["'rpn.conv_channels' is 0"]),
    "zero_anchor_ratio": (["--set", "anchors.ratios=0,1"], ["'anchors.ratios' is (0.0, 1.0); give one or more "
                                                           "values above 0"]),
    "zero_pixel_std": (["--set", "input.pixel_std=0,1,1"], ["'input.pixel_std' is (0.0, 1.0, 1.0)"]),
    "huge_seed": (["--seed", str(10**30)], ["'seed' is 1000000000000000000000000000000; give a value from 0 to"]),
    "negative_seed": (["--seed", "-4"], ["'seed' is -4"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_options_are_one_clean_error(synth_set, tmp_path, case, assert_clean_error):
    extra, needles = CONFIG_CASES[case]
    extra = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in extra]
    out = tmp_path / "out"
    result = _run("train-rpn", "--data", synth_set[0], "--out", out / "rpn.pt", *TINY, *extra)
    assert_clean_error(result, *needles, out_dir=out)


@pytest.mark.parametrize("text, needles", [
    ("[rpn\nnms_thresh = 0.6\n", ["bad.toml is not valid TOML", "fix the file"]),
    ('preset = "tiny"\n[rpn]\nnms_tresh = 0.6\n', ["bad.toml", "unknown config key 'rpn.nms_tresh'"]),
    ('preset = "tiny"\n[solver]\nlr = "fast"\n', ["bad.toml", "'solver.lr' must be a number"]),
    ('preset = "giant"\n', ["unknown preset 'giant'"]),
])
def test_a_bad_toml_config_names_the_file(synth_set, tmp_path, text, needles, assert_clean_error):
    (tmp_path / "bad.toml").write_text(text)
    out = tmp_path / "out"
    result = _run("train-rpn", "--data", synth_set[0], "--out", out / "rpn.pt", "--config", tmp_path / "bad.toml",
                  "--device", "cpu")
    assert_clean_error(result, *needles, out_dir=out)


def test_train_detector_without_proposals_is_a_usage_error(synth_set, tmp_path, assert_clean_error):
    out = tmp_path / "out"
    result = _run("train-detector", "--data", synth_set[0], "--out", out / "det.pt", *TINY)
    assert result.exit_code == 2
    assert_clean_error(result, "Missing option '--proposals'", out_dir=out)


def test_a_checkpoint_under_a_regular_file_cannot_be_written(synth_set, tmp_path, assert_clean_error):
    (tmp_path / "plain.txt").write_text("x")
    result = _run("train-rpn", "--data", synth_set[0], "--out", tmp_path / "plain.txt" / "rpn.pt", *TINY,
                  "--iters", "1")
    assert_clean_error(result, f"cannot write {tmp_path / 'plain.txt' / 'rpn.pt'}", "choose an output folder")
    assert (tmp_path / "plain.txt").read_text() == "x"
