from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import manifest_hash, read_manifest


def _xml(objects=(), size=(40, 30)) -> str:
    body = "".join(
        f"<object><name>{name}</name><difficult>{int(hard)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, hard in objects
    )
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>"


@pytest.fixture()
def devkit(tmp_path) -> Path:
    """VOCdevkit/VOC2007 with two 40x30 images: 000005 (a dog, a difficult cat) and 000007 (no objects)."""
    year = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    objects = [("dog", (10, 5, 20, 25), False), ("cat", (1, 1, 40, 30), True)]
    xmls = {"000005": _xml(objects), "000007": _xml()}
    for image_id, text in xmls.items():
        (year / "Annotations" / f"{image_id}.xml").write_text(text)
        Image.new("RGB", (40, 30), 50).save(year / "JPEGImages" / f"{image_id}.jpg")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    return tmp_path / "VOCdevkit"


def _run(*args: str):
    return CliRunner().invoke(cli, ["prepare", *args])


def test_prepare_voc_writes_the_manifest_and_prints_its_path(devkit, tmp_path):
    out = tmp_path / "m.json"
    result = _run("voc", "--root", str(devkit), "--year", "2007", "--split", "trainval", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    m = read_manifest(out)
    assert m.images[0].boxes == [[9.0, 4.0, 20.0, 25.0], [0.0, 0.0, 40.0, 30.0]]
    assert m.images[0].labels == [11, 7] and m.images[0].difficult == [False, True]
    assert "voc2007-trainval" in result.stderr and "dog" in result.stderr
    assert "2 images (1 without objects), 2 objects (1 difficult)" in result.stderr


def test_prepare_voc_shows_warnings(devkit, tmp_path):
    (devkit / "VOC2007" / "Annotations" / "000007.xml").write_text(_xml([("dog", (0, 0, 5, 5), False)]))
    result = _run("voc", "--root", str(devkit), "--out", str(tmp_path / "m.json"))
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.stderr and "0-based" in result.stderr


def _folder(tmp_path: Path, n: int = 10) -> tuple[Path, Path]:
    images, xml = tmp_path / "imgs", tmp_path / "xml"
    (images / "nested").mkdir(parents=True)
    xml.mkdir()
    for i in range(n):
        Image.new("L", (16, 12), 10).save(images / "nested" / f"im{i}.png")
        (xml / f"im{i}.xml").write_text(_xml([("zebra" if i % 2 else "ant", (1, 1, 8, 8), False)], (16, 12)))
    return images, xml


def test_prepare_folder_val_fraction_writes_two_disjoint_manifests(tmp_path):
    images, xml = _folder(tmp_path)
    args = ["folder", "--images", str(images), "--annotations", str(xml), "--val-fraction", "0.2",
            "--seed", "4"]
    result = _run(*args, "--out", str(tmp_path / "mine.json"))
    assert result.exit_code == 0, result.output
    train_path, val_path = tmp_path / "mine.json", tmp_path / "mine.val.json"
    assert result.stdout.split() == [str(train_path), str(val_path)]
    train, val = read_manifest(train_path), read_manifest(val_path)
    assert len(train.images) == 8 and len(val.images) == 2 and train.classes == ["ant", "zebra"]
    assert {r.id for r in train.images}.isdisjoint({r.id for r in val.images})
    assert sorted(r.path for r in train.images + val.images) == [f"nested/im{i}.png" for i in range(10)]
    assert "classes found in the XML (sorted" in result.stderr
    again = _run(*args, "--out", str(tmp_path / "again.json"))
    assert again.exit_code == 0
    assert manifest_hash(read_manifest(tmp_path / "again.val.json")) == manifest_hash(val)


def test_prepare_folder_with_a_class_file(tmp_path):
    images, xml = _folder(tmp_path, n=2)
    (tmp_path / "classes.txt").write_text("zebra\nant\n")
    out = tmp_path / "m.json"
    result = _run("folder", "--images", str(images), "--annotations", str(xml), "--classes",
                  str(tmp_path / "classes.txt"), "--out", str(out))
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m.classes == ["zebra", "ant"] and [r.labels for r in m.images] == [[1], [0]]


def _bad_xml(devkit: Path, text: str) -> None:
    (devkit / "VOC2007" / "Annotations" / "000005.xml").write_text(text)


BAD = {
    "box": (lambda d: _bad_xml(d, _xml([("cat", (1, 1, 5, 5), 0), ("dog", (80, 5, 50, 10), 0)])),
            "000005.xml, object 2 (dog): xmax 50 < xmin 80; fix the box or delete the object"),
    "class": (lambda d: _bad_xml(d, _xml([("unicorn", (1, 1, 5, 5), 0)])), "unknown class 'unicorn'"),
    "malformed": (lambda d: _bad_xml(d, "<annotation>"), "malformed XML"),
    "entity": (lambda d: _bad_xml(d, '<!DOCTYPE a [<!ENTITY x "y">]><annotation/>'), "DOCTYPE or ENTITY"),
    "image": (lambda d: (d / "VOC2007" / "JPEGImages" / "000007.jpg").write_bytes(b"\xff\xd8\xff"),
              "unreadable or truncated image"),
    "split": (lambda d: (d / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").unlink(), "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_voc_input_is_one_clean_error_and_writes_nothing(devkit, tmp_path, case):
    damage, message = BAD[case]
    damage(devkit)
    out = tmp_path / "out" / "m.json"
    result = _run("voc", "--root", str(devkit), "--out", str(out))
    assert result.exit_code != 0
    assert result.output.startswith("Error:"), result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.parametrize("extra, message", [
    (["--classes", "CLASSES"], "unknown class 'zebra'"),
    (["--split-file", "SPLIT"], "without both an image and an XML"),
])
def test_bad_folder_input_is_one_clean_error(tmp_path, extra, message):
    images, xml = _folder(tmp_path, n=2)
    (tmp_path / "classes.txt").write_text("ant\n")
    (tmp_path / "split.txt").write_text("ghost\n")
    extra = [str(tmp_path / "classes.txt") if a == "CLASSES" else str(tmp_path / "split.txt") if a == "SPLIT"
             else a for a in extra]
    out = tmp_path / "m.json"
    result = _run("folder", "--images", str(images), "--annotations", str(xml), *extra, "--out", str(out))
    assert result.exit_code != 0 and result.output.startswith("Error:") and message in result.output
    assert not out.exists()


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _run("folder", "--images", str(tmp_path / "empty"), "--annotations", str(tmp_path / "empty"),
                  "--out", str(tmp_path / "m.json"))
    assert result.exit_code == 1 and result.output.startswith("Error: no images")


def test_split_file_and_val_fraction_exclude_each_other(tmp_path):
    images, xml = _folder(tmp_path, n=2)
    (tmp_path / "split.txt").write_text("im0\n")
    result = _run("folder", "--images", str(images), "--annotations", str(xml), "--split-file",
                  str(tmp_path / "split.txt"), "--val-fraction", "0.5", "--out", str(tmp_path / "m.json"))
    assert result.exit_code == 2 and result.output.startswith("Error: give --split-file or --val-fraction, not both")
    assert "Usage:" not in result.output


def test_bad_year_is_a_usage_error(devkit, tmp_path):
    result = _run("voc", "--root", str(devkit), "--year", "twenty", "--out", str(tmp_path / "m.json"))
    assert result.exit_code == 2 and "not a year" in result.output


def test_prepare_synth_writes_both_manifests_and_folder_prepare_agrees(tmp_path):
    out = tmp_path / "synth"
    result = _run("synth", "--out", str(out), "--train", "4", "--test", "2", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "trainval.json"), str(out / "test.json")]
    trainval = read_manifest(out / "trainval.json")
    assert len(trainval.images) == 4 and len(read_manifest(out / "test.json").images) == 2
    (out / "keep.txt").write_text("\n".join(r.id for r in trainval.images))
    again = _run("folder", "--images", str(out / "JPEGImages"), "--annotations", str(out / "Annotations"),
                 "--classes", str(out / "classes.txt"), "--split-file", str(out / "keep.txt"),
                 "--out", str(tmp_path / "again.json"))
    assert again.exit_code == 0, again.output
    prepared = read_manifest(tmp_path / "again.json")
    assert [(r.id, r.boxes, r.labels, r.difficult) for r in prepared.images] == [
        (r.id, r.boxes, r.labels, r.difficult) for r in trainval.images]
    assert json.loads((tmp_path / "again.json").read_text())["format"] == "frcnn-manifest"


def test_a_class_without_training_objects_is_named_with_its_split(tmp_path):
    images, xml = _folder(tmp_path, n=4)  # ant and zebra
    (xml / "im0.xml").write_text(_xml([("ant", (1, 1, 8, 8), False), ("cat", (2, 2, 9, 9), True)], (16, 12)))
    (tmp_path / "classes.txt").write_text("ant\nbee\ncat\nzebra\n")
    out = tmp_path / "mine.json"
    result = _run("folder", "--images", str(images), "--annotations", str(xml), "--classes",
                  str(tmp_path / "classes.txt"), "--out", str(out))
    assert result.exit_code == 0, result.output
    warnings = [" ".join(w.split()) for w in result.stderr.split("Warning:")[1:]]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"classes 'bee', 'cat' have no objects (difficult ones aside) in split mine ({out})")
    assert "never learns them" in warnings[0]


def test_no_class_warning_when_every_class_has_objects(tmp_path):
    images, xml = _folder(tmp_path, n=4)
    result = _run("folder", "--images", str(images), "--annotations", str(xml), "--out", str(tmp_path / "m.json"))
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
