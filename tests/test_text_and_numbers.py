"""What users type: NaN and infinity are refused by every option where they make no sense (exit 2, naming the
option), and text files saved by Notepad (a UTF-8 byte-order mark, CRLF line ends) read as they look."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import TINY_CLI
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import read_manifest

BOM = "\ufeff"


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# NaN and infinity


def _option_cases(synth_set, tiny_checkpoint, tmp_path):
    folder = tmp_path / "folder"
    (folder / "imgs").mkdir(parents=True)
    (folder / "xml").mkdir()
    return {
        "--score-thresh": ["detect", synth_set[1], "--model", tiny_checkpoint()],
        "--nms": ["dump-proposals", "--model", tiny_checkpoint(), "--data", synth_set[1], "--out", tmp_path / "p.h5"],
        "--val-fraction": ["prepare", "folder", "--images", folder / "imgs", "--annotations", folder / "xml",
                           "--out", tmp_path / "m.json"],
    }


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "infinity"])
@pytest.mark.parametrize("option", ["--score-thresh", "--nms", "--val-fraction"])
def test_nan_and_infinity_are_refused_naming_the_option(option, value, synth_set, tiny_checkpoint, tmp_path,
                                                        assert_clean_error):
    args = _option_cases(synth_set, tiny_checkpoint, tmp_path)[option]
    result = _run(*args, option, value)
    assert result.exit_code == 2, result.output
    assert_clean_error(result, f"Invalid value for '{option}'")
    assert "finite" in result.output or "range" in result.output, result.output
    assert not (tmp_path / "p.h5").exists() and not (tmp_path / "m.json").exists()


def test_every_float_option_of_every_command_refuses_nan():
    """A float option added later without the check fails here."""
    import click

    from frcnn_cli.cli.options import FiniteFloatRange

    def commands(group):
        for command in group.commands.values():
            if isinstance(command, click.Group):
                yield from commands(command)
            else:
                yield command

    floats = [(command.name, p.name) for command in commands(cli) for p in command.params
              if isinstance(p.type, (click.types.FloatParamType, click.FloatRange))]
    assert floats, "no float option found: the search is broken"
    assert all(isinstance(p.type, FiniteFloatRange) for command in commands(cli) for p in command.params
               if isinstance(p.type, (click.types.FloatParamType, click.FloatRange))), floats


def test_set_refuses_nan_naming_the_key(synth_set, tmp_path, assert_clean_error):
    result = _run("train-rpn", "--data", synth_set[0], "--out", tmp_path / "r.pt", *TINY_CLI,
                  "--set", "rpn.nms_thresh=nan")
    assert result.exit_code == 2
    assert_clean_error(result, "rpn.nms_thresh", "give a value from 0 to 1")


# --------------------------------------------------------------------------------------------------
# byte-order marks and CRLF


def _folder_set(root):
    (root / "imgs").mkdir(parents=True)
    (root / "xml").mkdir()
    for stem, name in (("a", "cat"), ("b", "dog"), ("c", "cat")):
        Image.new("RGB", (40, 30)).save(root / "imgs" / f"{stem}.png")
        (root / "xml" / f"{stem}.xml").write_text(
            f"<annotation><object><name>{name}</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>")
    return root / "imgs", root / "xml"


def _notepad(path, lines):
    """``lines`` as Notepad saves them: UTF-8 with a byte-order mark, CRLF line ends."""
    path.write_bytes((BOM + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def test_a_class_file_and_a_split_file_with_a_bom_and_crlf(tmp_path):
    images, xml = _folder_set(tmp_path)
    classes = _notepad(tmp_path / "classes.txt", ["dog", "cat"])
    split = _notepad(tmp_path / "split.txt", ["a", "b"])
    out = tmp_path / "m.json"
    result = _run("prepare", "folder", "--images", images, "--annotations", xml, "--classes", classes,
                  "--split-file", split, "--out", out)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.classes == ["dog", "cat"]  # not "\ufeffdog": every dog was "unknown" before
    assert [(r.id, r.labels) for r in manifest.images] == [("a", [1]), ("b", [0])]


def test_a_voc_imageset_with_a_bom(tmp_path):
    from frcnn_cli.data.voc import _split_ids

    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    _notepad(main / "test.txt", ["000001", "000002"])
    assert _split_ids(tmp_path / "VOC2007", "test") == ["000001", "000002"]


def test_a_toml_config_a_coco_file_and_a_manifest_with_a_bom(tmp_path, synth_set):
    from frcnn_cli.config_io import load_config_file
    from frcnn_cli.data.coco import prepare_coco

    config = _notepad(tmp_path / "c.toml", ['preset = "tiny"', "[rpn]", "nms_thresh = 0.6"])
    assert load_config_file(config)[0].rpn.nms_thresh == 0.6
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10], "iscrowd": 0}],
            "categories": [{"id": 3, "name": "cat"}]}
    (tmp_path / "coco.json").write_bytes((BOM + json.dumps(coco)).encode("utf-8"))
    assert prepare_coco(tmp_path / "coco.json", tmp_path / "imgs", name="x").classes == ["cat"]
    edited = tmp_path / "edited.json"
    edited.write_bytes((BOM + synth_set[1].read_text().replace("\n", "\r\n")).encode("utf-8"))
    assert read_manifest(edited).images == read_manifest(synth_set[1]).images
