"""``frcnn prepare`` on the messy data a newcomer has (issue 31): one truncated photo among good ones, photo
names with spaces, a class named background, a VOC-layout folder not named VOC2007 (BCCD), and the hint of
what to run next."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.folder import prepare_folder
from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.data.voc import prepare_voc
from frcnn_cli.errors import DataError


def _xml(name: str = "dog", box=(2, 2, 20, 14), size=(32, 24)) -> str:
    return (f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size><object><name>{name}"
            f"</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            "</bndbox></object></annotation>")


def _photos(folder: Path, stems: list[str], *, truncated: tuple[str, ...] = (), name: str = "dog") -> tuple[Path, Path]:
    """``folder/images/<stem>.jpg`` (32x24) and ``folder/xml/<stem>.xml`` (one ``name``); the ``truncated``
    ones cut in half."""
    images, xml = folder / "images", folder / "xml"
    images.mkdir(parents=True)
    xml.mkdir()
    for i, stem in enumerate(stems):
        Image.effect_noise((32, 24), 40 + i).convert("RGB").save(images / f"{stem}.jpg", quality=90)
        (xml / f"{stem}.xml").write_text(_xml(name))
        if stem in truncated:
            data = (images / f"{stem}.jpg").read_bytes()
            (images / f"{stem}.jpg").write_bytes(data[: len(data) // 2])
    return images, xml


def _prepare(*args) -> object:
    return CliRunner().invoke(cli, ["prepare", *map(str, args)])


def test_one_truncated_photo_stops_prepare_and_the_message_offers_skip_unreadable(tmp_path, assert_clean_error):
    images, xml = _photos(tmp_path, ["a", "b", "c"], truncated=("b",))
    result = _prepare("folder", "--images", images, "--annotations", xml, "--out", tmp_path / "m.json")
    assert_clean_error(result, str(images / "b.jpg"), "unreadable or truncated image", "--skip-unreadable")


def test_skip_unreadable_leaves_the_photo_and_its_xml_out_and_lists_it(tmp_path):
    images, xml = _photos(tmp_path, ["a", "b", "c", "d"], truncated=("b", "d"))
    (xml / "d.xml").write_text("<annotation><object>")  # its XML is left out with it, unread
    out = tmp_path / "m.json"
    result = _prepare("folder", "--images", images, "--annotations", xml, "--out", out, "--skip-unreadable")
    assert result.exit_code == 0, result.output
    assert [rec.id for rec in read_manifest(out).images] == ["a", "c"]
    warning = " ".join(result.stderr.split())
    assert (f"2 unreadable image(s) left out with their XML (--skip-unreadable): {images / 'b.jpg'}, "
            f"{images / 'd.jpg'}") in warning


def test_skip_unreadable_of_prepare_voc_too(tmp_path):
    year = tmp_path / "VOC2007"
    images, xml = _photos(year, ["000001", "000002"], truncated=("000002",))
    images.rename(year / "JPEGImages")
    xml.rename(year / "Annotations")
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    with pytest.raises(DataError, match="000002.jpg: unreadable or truncated image"):
        prepare_voc(tmp_path, [2007], "trainval")
    warnings: list[str] = []
    manifest = prepare_voc(tmp_path, [2007], "trainval", on_warning=warnings.append, skip_unreadable=True)
    assert [rec.id for rec in manifest.images] == ["000001"] and "1 unreadable image(s) left out" in warnings[0]


def test_every_photo_unreadable_is_still_an_error(tmp_path):
    images, xml = _photos(tmp_path, ["a", "b"], truncated=("a", "b"))
    with pytest.raises(DataError, match="none of the 2 images can be decoded"):
        prepare_folder(images, xml, skip_unreadable=True)


def test_photo_names_with_whitespace_prepare_with_a_warning_about_eval_out(tmp_path):
    images, xml = _photos(tmp_path, ["IMG 0001", "IMG_0002", "tab\there"])
    warnings: list[str] = []
    manifest = prepare_folder(images, xml, on_warning=warnings.append)
    assert [rec.id for rec in manifest.images] == ["IMG 0001", "IMG_0002", "tab\there"]
    assert len(warnings) == 1
    assert "2 image id(s) hold whitespace (first: 'IMG 0001', IMG 0001.jpg)" in warnings[0]
    assert "frcnn eval --out writes these ids %-escaped ('IMG 0001' as 'IMG%200001'" in warnings[0]


def test_a_split_file_may_name_photos_whose_names_hold_spaces(tmp_path):
    images, xml = _photos(tmp_path, ["IMG 0001", "IMG 0002", "x"])
    (tmp_path / "keep.txt").write_text("IMG 0002.jpg\nx -1\n")  # a devkit-style "id -1" line too
    manifest = prepare_folder(images, xml, split_file=tmp_path / "keep.txt", on_warning=lambda m: None)
    assert [rec.id for rec in manifest.images] == ["IMG 0002", "x"]


@pytest.mark.parametrize("name", ["background", "__background__", "Background"])
def test_a_background_class_in_the_xml_is_refused_as_in_a_class_file(tmp_path, assert_clean_error, name):
    images, xml = _photos(tmp_path, ["a", "b"])
    (xml / "b.xml").write_text(_xml(name))
    result = _prepare("folder", "--images", images, "--annotations", xml, "--out", tmp_path / "m.json")
    assert_clean_error(result, f"b.xml, object 1: class {name!r} is the background class",
                       "frcnn adds the background class itself")


def _bccd(root: Path) -> Path:
    """BCCD's layout: ``root/BCCD/{Annotations, JPEGImages, ImageSets/Main/{trainval,test}.txt}``."""
    layout = root / "BCCD"
    images, xml = _photos(layout, ["BloodImage_00000", "BloodImage_00001"])
    images.rename(layout / "JPEGImages")
    xml.rename(layout / "Annotations")
    (layout / "ImageSets" / "Main").mkdir(parents=True)
    (layout / "ImageSets" / "Main" / "trainval.txt").write_text("BloodImage_00000\nBloodImage_00001\n")
    return layout


@pytest.mark.parametrize("where", ["parent", "itself"])
def test_prepare_voc_on_a_voc_layout_of_another_name_gives_the_prepare_folder_command(
        tmp_path, assert_clean_error, where):
    layout = _bccd(tmp_path)
    root = tmp_path if where == "parent" else layout
    result = _prepare("voc", "--root", root, "--out", tmp_path / "m.json")
    message = assert_clean_error(result, f"{layout} has VOC's layout under another name",
                                 "frcnn prepare folder --images")
    command = message[message.index("frcnn prepare folder"):].split()[2:]
    redone = _prepare(*command, "--out", tmp_path / "m.json")
    assert redone.exit_code == 0, redone.output
    assert len(read_manifest(tmp_path / "m.json").images) == 2


def test_prepare_voc_of_another_year_names_the_years_found(tmp_path, assert_clean_error):
    (tmp_path / "VOC2012" / "Annotations").mkdir(parents=True)
    result = _prepare("voc", "--root", tmp_path, "--year", "2007", "--out", tmp_path / "m.json")
    assert_clean_error(result, "no folder", "found VOC2012: --year 2012")


@pytest.mark.parametrize("gpu", [False, True])
def test_the_train_command_suggested_after_prepare_fits_the_machine(tmp_path, monkeypatch, gpu):
    """It suggested `frcnn train` without --config: VGG16, impractical on a CPU and impossible offline."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    images, xml = _photos(tmp_path, ["a", "b", "c", "d"])
    out = tmp_path / "mine.json"
    result = _prepare("folder", "--images", images, "--annotations", xml, "--out", out, "--val-fraction", "0.25")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    command = f"next: frcnn train --data {out} --workdir runs/mine --val {tmp_path / 'mine.val.json'}"
    if gpu:
        assert f"{command} (a GPU is here: VGG16, the paper's network, from ImageNet weights (downloaded once" in said
        assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in "".join(said.split())  # wrapped anywhere
    else:
        assert f"{command} --config tiny (no GPU here: the tiny preset" in said
