"""``frcnn prepare coco`` (data/coco.py) and the manifest's optional COCO keys (data/manifest.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from coco_data import coco_dict, write_coco_set

from frcnn_cli.cli.main import cli
from frcnn_cli.data.coco import prepare_coco
from frcnn_cli.data.manifest import ImageRecord, Manifest, manifest_hash, read_manifest, split_manifest, write_manifest
from frcnn_cli.errors import DataError


@pytest.fixture()
def coco_set(tmp_path):
    return write_coco_set(tmp_path / "coco")


def _prepare(ann, images, **kwargs):
    warnings: list[str] = []
    manifest = prepare_coco(ann, images, on_warning=warnings.append, **kwargs)
    return manifest, warnings


def test_categories_become_classes_in_id_order_keeping_names_and_original_ids(coco_set):
    manifest, _ = _prepare(*coco_set)
    assert manifest.classes == ["car", "dog", "toothbrush"]
    assert manifest.category_ids == [3, 18, 90]
    assert [rec.id for rec in manifest.images] == ["397133", "7", "42", "1000"]  # the file's order
    assert [rec.coco_id for rec in manifest.images] == [397133, 7, 42, 1000]
    assert manifest.images[1].path == "sub/b.jpg"


def test_bbox_x_y_w_h_becomes_continuous_x1_y1_x_plus_w_y_plus_h(coco_set):
    rec = _prepare(*coco_set)[0].images[0]
    assert rec.boxes == [[10.0, 10.0, 30.0, 40.0], [50.0, 20.0, 90.5, 70.0], [0.0, 0.0, 100.0, 40.0]]
    assert rec.labels == [1, 0, 0]
    assert (rec.width, rec.height) == (100, 80)  # from the JSON: the (empty) file is never decoded


def test_crowd_region_is_a_difficult_box_marked_crowd_and_areas_are_kept(coco_set):
    rec = _prepare(*coco_set)[0].images[0]
    assert rec.difficult == [False, False, True] and rec.crowd == [False, False, True]
    assert rec.area == [450.0, 2025.0, 3500.0]  # COCO's mask areas, not the boxes' (600, 2025, 4000)


def test_image_without_annotations_is_kept_and_drop_empty_leaves_it_out(coco_set):
    kept, _ = _prepare(*coco_set)
    assert kept.images[2].id == "42" and kept.images[2].boxes == [] and kept.images[2].crowd == []
    dropped, warnings = _prepare(*coco_set, drop_empty=True)
    assert [rec.id for rec in dropped.images] == ["397133", "7", "1000"]
    assert any("images without objects left out (--drop-empty): 1" in w for w in warnings)


def test_zero_area_box_is_dropped_and_box_past_the_edge_clipped_with_one_counted_warning(coco_set):
    manifest, warnings = _prepare(*coco_set)
    rec = manifest.images[1]
    assert rec.boxes == [[30.0, 20.0, 60.0, 50.0]] and rec.labels == [2]  # 60.5 clipped to the width
    assert len(warnings) == 1
    assert "boxes reaching at most 5 px outside their image, clipped: 1 (first: annotation 5 (image 7))" \
        in warnings[0]
    assert "boxes of zero width or height, dropped: 1 (first: annotation 4 (image 7))" in warnings[0]
    assert str(coco_set[0]) in warnings[0]


def test_prepare_coco_command_writes_a_manifest_that_reads_back_the_same(coco_set, tmp_path):
    ann, images = coco_set
    out = tmp_path / "coco-train.json"
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", ann, "--images", images, "--out", out])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "4 images (1 without objects), 7 objects (1 difficult, including 1 crowd region)" in result.stderr
    assert "Warning:" in result.stderr and "zero width" in result.stderr
    back = read_manifest(out)
    assert back == _prepare(ann, images, name="coco-train")[0]
    data = json.loads(out.read_text())
    assert data["category_ids"] == [3, 18, 90] and data["images"][0]["coco_id"] == 397133


def test_a_manifest_without_the_new_keys_hashes_exactly_as_before():
    manifest = Manifest(name="toy", classes=["cat", "dog"], root="/data/voc", images=[
        ImageRecord("000005", "JPEGImages/000005.jpg", 40, 30, boxes=[[9.0, 4.0, 20.0, 25.0], [0.0, 0.0, 40.0, 30.0]],
                    labels=[1, 0], difficult=[False, True], truncated=[True, False]),
        ImageRecord("000007", "JPEGImages/000007.jpg", 50, 20, [], [], [], None)])
    # the value frcnn 0.1.0 computed, before the COCO keys existed
    assert manifest_hash(manifest) == "6fb5162bb1208eca0540067a5ba0eb9e7a6c2833c984bcf6bee9d79453ccffaf"
    manifest.category_ids = [5, 9]
    assert manifest_hash(manifest) != "6fb5162bb1208eca0540067a5ba0eb9e7a6c2833c984bcf6bee9d79453ccffaf"


def test_coco_keys_survive_a_write_and_a_split(coco_set, tmp_path):
    manifest, _ = _prepare(*coco_set)
    write_manifest(tmp_path / "m.json", manifest)
    back = read_manifest(tmp_path / "m.json")
    assert back == manifest and manifest_hash(back) == manifest_hash(manifest)
    train, val = split_manifest(back, 0.5, seed=0)
    assert train.category_ids == val.category_ids == [3, 18, 90]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d, rec: rec.update(crowd=[True]), "crowd region but not difficult"),
    (lambda d, rec: rec.update(crowd=[False, False]), "\"crowd\" must be a list with one flag per box"),
    (lambda d, rec: rec.update(area=[-1.0]), "\"area\" values must be finite numbers >= 0"),
    (lambda d, rec: rec.update(coco_id="7"), "coco_id '7' is not an integer"),
    (lambda d, rec: d["images"][1].update(coco_id=rec["coco_id"]), "coco_id 5 appears twice"),
    (lambda d, rec: d.update(category_ids=[3]), "\"category_ids\" must be 2 distinct integers"),
    (lambda d, rec: d.update(category_ids=[3, 3]), "\"category_ids\" must be 2 distinct integers"),
])
def test_bad_coco_keys_in_a_manifest_name_the_problem(tmp_path, change, message):
    data = {"format": "frcnn-manifest", "version": 1, "name": "m", "classes": ["a", "b"], "root": "/",
            "category_ids": [3, 18], "images": [
                {"id": "x", "path": "x.jpg", "width": 10, "height": 10, "boxes": [[0, 0, 5, 5]], "labels": [0],
                 "difficult": [False], "crowd": [False], "area": [20.0], "coco_id": 5},
                {"id": "y", "path": "y.jpg", "width": 10, "height": 10, "boxes": [], "labels": [],
                 "difficult": [], "coco_id": 6}]}
    change(data, data["images"][0])
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="m.json") as info:
        read_manifest(tmp_path / "m.json")
    assert message in str(info.value)


def _broken(tmp_path, edit):
    data = coco_dict(degenerate=False)
    edit(data)
    return write_coco_set(tmp_path / "coco", data=data)


BAD_INPUT = {
    "not JSON": (lambda p: p.write_text("{\"images\": ["), ["instances.json", "not valid JSON", "line 1"]),
    "a results list": (lambda p: p.write_text("[]"), ["instances.json", "JSON list, not a COCO annotation file"]),
    "no images": (lambda p: p.write_text("{\"annotations\": [], \"categories\": []}"),
                  ["instances.json", "no \"images\" list"]),
}
BAD_DATA = {
    "unknown image": (lambda d: d["annotations"][0].update(image_id=5),
                      ["instances.json, annotation 1 (image 5): image id 5 is not in \"images\""]),
    "missing category": (lambda d: d["annotations"][1].update(category_id=44),
                         ["annotation 2 (image 397133): category id 44 is not in \"categories\""]),
    "same name twice": (lambda d: d["categories"].append({"id": 7, "name": "dog"}),
                        ["categories 18 and 7 are both named 'dog'"]),
    "far outside": (lambda d: d["annotations"][4].update(bbox=[70, 10, 30, 30]),
                    ["annotation 6 (image 1000)", "lies 20 px outside the 80x80 image"]),
    "negative width": (lambda d: d["annotations"][4].update(bbox=[10, 10, -3, 30]),
                       ["annotation 6 (image 1000)", "negative width or height"]),
    "bbox not 4 numbers": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
                           ["instances.json, annotation 1: bbox [1, 2, 3]", "is not [x, y, width, height]"]),
    "annotation without an id": (lambda d: (d["annotations"][2].pop("id"), d["annotations"][2].update(bbox=[1, 2])),
                                 ["the annotation at position 2 of \"annotations\" (it has no \"id\")"]),
    "image without a width": (lambda d: d["images"][3].pop("width"),
                              ["instances.json, image 1000: has no \"width\" (its width in pixels); fix the entry"]),
    "image without an id": (lambda d: d["images"][2].pop("id"),
                            ["the image at position 2 of \"images\" (it has no integer \"id\")"]),
    "a size that disagrees with the file": (
        lambda d: d["images"][0].update(width=50, height=40),
        ["instances.json, image 397133: width/height say 50x40 but", "a.jpg is 100x80", "fix the entry"]),
    "two entries of one file": (
        lambda d: d["images"].append({"id": 99, "file_name": "./sub/b.jpg", "width": 60, "height": 50}),
        ["image 99: names the same file './sub/b.jpg' as image 7", "delete one entry"]),
    "one annotation id twice": (lambda d: d["annotations"][5].update(id=2),
                                ["annotation id 2 appears 2 times (images 397133, 1000)", "its own id"]),
    "a background category": (lambda d: d["categories"].append({"id": 0, "name": "Background"}),
                              ["category 0 is named 'Background'", "frcnn adds the background class itself"]),
    "a __background__ category": (lambda d: d["categories"].append({"id": 0, "name": "__background__"}),
                                   ["category 0 is named '__background__'"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT) + list(BAD_DATA))
def test_bad_coco_input_is_one_clean_error_naming_the_file_and_the_item(tmp_path, assert_clean_error, case):
    """Images and annotations are named by their id (by their position only when they have none)."""
    if case in BAD_DATA:
        ann, images = _broken(tmp_path, BAD_DATA[case][0])
        needles = BAD_DATA[case][1]
    else:
        ann, images = write_coco_set(tmp_path / "coco")
        BAD_INPUT[case][0](ann)
        needles = BAD_INPUT[case][1]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", ann, "--images", images,
                                      "--out", out / "m.json"])
    assert_clean_error(result, *needles, out_dir=out)


def test_a_missing_image_file_is_an_error_naming_the_file_and_its_id(tmp_path, assert_clean_error):
    ann, images = write_coco_set(tmp_path / "coco")
    (images / "sub" / "b.jpg").unlink()
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", ann, "--images", images,
                                      "--out", tmp_path / "m.json"])
    assert_clean_error(result, str(images / "sub" / "b.jpg"), "id 7", "missing")
    assert not (tmp_path / "m.json").exists()


def test_an_image_file_that_is_not_an_image_is_an_error_naming_it(tmp_path, assert_clean_error):
    ann, images = write_coco_set(tmp_path / "coco")
    (images / "c.jpg").write_bytes(b"not an image")
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", ann, "--images", images,
                                      "--out", tmp_path / "m.json"])
    assert_clean_error(result, str(images / "c.jpg"), "not a readable image", "replace the file")
    assert not (tmp_path / "m.json").exists()


def test_a_wrong_size_is_refused_so_training_never_loops_on_re_running_prepare(tmp_path, assert_clean_error):
    """A 50x40 entry for a 100x80 file once prepared (exit 0) and training then said "re-run prepare"."""
    ann, images = _broken(tmp_path, lambda d: d["images"][0].update(width=50, height=40))
    with pytest.raises(DataError, match="image 397133: width/height say 50x40 but .*a.jpg is 100x80"):
        prepare_coco(ann, images)


def test_the_wrong_image_folder_is_one_problem_not_one_per_image(tmp_path, assert_clean_error):
    ann, images = write_coco_set(tmp_path / "coco")
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", ann, "--images", tmp_path,
                                      "--out", tmp_path / "m.json"])
    message = assert_clean_error(result, "none of the 4 images", "give --images the folder")
    assert "problems" not in message


def test_file_names_with_windows_separators_are_read_with_slashes_never_out_of_the_folder(tmp_path):
    """A Windows exporter's `sub\\b.jpg` was "none of the images is in DIR … give --images the folder their
    file_name is relative to" (with one image: "missing"): advice that did not fit."""
    data = coco_dict()
    data["images"][1]["file_name"] = "sub\\b.jpg"
    ann, images = write_coco_set(tmp_path / "coco", data=data)
    manifest, _ = _prepare(ann, images)
    assert sorted(rec.path for rec in manifest.images) == ["a.jpg", "c.jpg", "d.jpg", "sub/b.jpg"]
    data["images"][1]["file_name"] = "..\\images\\sub\\b.jpg"  # a file there, but '..' is not read
    ann.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=r"the image \(id 7 .*\) is missing"):
        _prepare(ann, images)


def test_a_missing_annotation_file_says_what_to_give(tmp_path, assert_clean_error):
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", tmp_path / "nope.json",
                                      "--images", tmp_path / "images", "--out", tmp_path / "m.json"])
    assert_clean_error(result, "nope.json does not exist", "--annotations")


def test_drop_empty_and_name_from_the_command_line(coco_set, tmp_path):
    ann, images = coco_set
    out = tmp_path / "m.json"
    result = CliRunner().invoke(cli, ["prepare", "coco", "--annotations", ann, "--images", images, "--out", out,
                                      "--drop-empty", "--name", "coco-mini"])
    assert result.exit_code == 0, result.output
    back = read_manifest(out)
    assert back.name == "coco-mini" and [rec.id for rec in back.images] == ["397133", "7", "1000"]
    assert "images without objects left out (--drop-empty): 1" in result.stderr
