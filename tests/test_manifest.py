from __future__ import annotations

import json
from pathlib import Path

import pytest

from frcnn_cli.data.manifest import (
    ImageRecord,
    Manifest,
    PrepareReport,
    manifest_hash,
    read_manifest,
    split_manifest,
    write_manifest,
)
from frcnn_cli.errors import DataError


def _manifest(root: str = "/data/voc") -> Manifest:
    return Manifest(
        name="toy", classes=["cat", "dog"], root=root,
        images=[
            ImageRecord("000005", "JPEGImages/000005.jpg", 40, 30,
                        boxes=[[9.0, 4.0, 20.0, 25.0], [0.0, 0.0, 40.0, 30.0]],
                        labels=[1, 0], difficult=[False, True], truncated=[True, False]),
            ImageRecord("000007", "JPEGImages/000007.jpg", 50, 20, [], [], [], None),
            ImageRecord("000009", "JPEGImages/000009.jpg", 20, 60, [[1.5, 2.5, 3.5, 4.5]], [1], [False]),
        ],
    )


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_write_then_read_gives_the_same_manifest_and_hash(tmp_path):
    m = _manifest()
    write_manifest(tmp_path / "m.json", m)
    back = read_manifest(tmp_path / "m.json")
    assert back == m
    assert back.images[1].truncated is None and back.images[0].truncated == [True, False]
    assert manifest_hash(back) == manifest_hash(m)
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["format"] == "frcnn-manifest" and data["version"] == 1
    assert data["images"][0]["boxes"][0] == [9.0, 4.0, 20.0, 25.0]


def test_hash_is_stable_and_follows_the_content_only():
    h = manifest_hash(_manifest())
    assert len(h) == 64 and h == manifest_hash(_manifest())
    assert manifest_hash(_manifest(root="/elsewhere")) == h  # moving the dataset keeps its identity
    moved_box = _manifest()
    moved_box.images[0].boxes[0][0] = 10.0
    assert manifest_hash(moved_box) != h
    relabelled = _manifest()
    relabelled.images[2].labels = [0]
    assert manifest_hash(relabelled) != h
    int_boxes = _manifest()
    int_boxes.images[0].boxes[0] = [9, 4, 20, 25]  # ints and floats of the same value hash the same
    assert manifest_hash(int_boxes) == h


def test_future_version_is_refused_with_a_clear_message(tmp_path):
    data = _manifest().to_dict() | {"version": 2}
    with pytest.raises(DataError, match=r"version 2, newer than this frcnn reads \(version 1\); upgrade"):
        read_manifest(_write_json(tmp_path / "future.json", data))


@pytest.mark.parametrize("text, message", [
    ('{"format": "frcnn-manifest", "version": 1, "images": [', "not valid JSON"),
    ('{"format": "something-else", "version": 1}', "is not a frcnn manifest"),
    ('[1, 2, 3]', "is not a frcnn manifest"),
    ('{"format": "frcnn-manifest", "version": "one"}', "invalid version"),
])
def test_corrupt_manifests_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="does not exist; create it with `frcnn prepare`"):
        read_manifest(tmp_path / "nope.json")


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(labels=[2, 0]), r"box 0: label 2 is not an index into the 2 classes"),
    (lambda r: r.update(labels=[1]), "2 boxes but 1 labels"),
    (lambda r: r["boxes"].__setitem__(0, [9, 4, 41, 25]), "outside the 40x30 image"),
    (lambda r: r["boxes"].__setitem__(0, [20, 4, 9, 25]), "is empty or outside"),
    (lambda r: r["boxes"].__setitem__(0, [9, 4, 20]), "is not \\[x1, y1, x2, y2\\]"),
    (lambda r: r.update(width=0), "must be positive integers"),
    (lambda r: r.update(id="000009"), "the id appears twice"),
    (lambda r: r.update(truncated=[True]), "one flag per box"),
])
def test_bad_image_entries_name_the_image(tmp_path, change, message):
    data = _manifest().to_dict()
    change(data["images"][0])
    with pytest.raises(DataError, match=message) as info:
        read_manifest(_write_json(tmp_path / "m.json", data))
    assert "image 0 (000005)" in str(info.value) or "image 2 (000009)" in str(info.value)  # (the duplicate)
    assert str(tmp_path / "m.json") in str(info.value)


def test_invalid_manifest_is_never_written(tmp_path):
    m = _manifest()
    m.images[0].labels[0] = 5
    with pytest.raises(DataError, match="label 5"):
        write_manifest(tmp_path / "m.json", m)
    assert list(tmp_path.iterdir()) == []


def test_image_paths_resolve_inside_the_root_and_never_escape(tmp_path):
    m = _manifest(root=str(tmp_path / "voc"))
    assert m.image_path(m.images[0]) == tmp_path / "voc" / "JPEGImages" / "000005.jpg"
    m.images[0].path = "../secret.jpg"
    with pytest.raises(DataError, match="leaves the manifest root"):
        m.image_path(m.images[0])
    m.images[0].path = str(tmp_path / "abs.jpg")
    assert m.image_path(m.images[0]) == tmp_path / "abs.jpg"


def test_relative_root_is_relative_to_the_manifest_folder(tmp_path):
    write_manifest(tmp_path / "sub" / "m.json", _manifest(root="../voc"))
    back = read_manifest(tmp_path / "sub" / "m.json")
    assert back.root == str(tmp_path / "voc")


def test_split_manifest_is_disjoint_complete_and_deterministic():
    m = _manifest()
    m.images = [ImageRecord(f"{i:06d}", f"{i}.jpg", 10, 10, [], [], []) for i in range(20)]
    train, val = split_manifest(m, 0.25, seed=3)
    assert len(val.images) == 5 and len(train.images) == 15
    assert {r.id for r in train.images}.isdisjoint({r.id for r in val.images})
    assert {r.id for r in train.images} | {r.id for r in val.images} == {r.id for r in m.images}
    again_train, again_val = split_manifest(m, 0.25, seed=3)
    assert [r.id for r in again_val.images] == [r.id for r in val.images]
    assert [r.id for r in train.images] == sorted(r.id for r in train.images)  # manifest order kept
    assert val.name == "toy.val" and train.name == "toy"
    other = {tuple(r.id for r in split_manifest(m, 0.25, seed=s)[1].images) for s in range(5)}
    assert len(other) > 1
    assert len(split_manifest(m, 0.01, seed=0)[1].images) == 1  # at least one validation image


def test_prepare_report_counts():
    report = PrepareReport.from_manifest(_manifest(), warnings=["w"])
    assert report.images == 3 and report.objects == 3 and report.difficult == 1 and report.empty_images == 1
    assert report.per_class == {"cat": (1, 1, 1), "dog": (2, 0, 2)}
    assert report.min_size == (20, 20) and report.max_size == (50, 60)
    assert report.warnings == ["w"]
