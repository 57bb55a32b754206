from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.data.synthetic import CLASSES, make_synthetic_set, render_image


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_set(out, n_train=60, n_test=20, seed=5)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".json"}


def test_same_seed_writes_the_same_bytes(synth, tmp_path):
    make_synthetic_set(tmp_path / "again", n_train=60, n_test=20, seed=5)
    assert _files(synth) == _files(tmp_path / "again")
    first, again = read_manifest(synth / "test.json"), read_manifest(tmp_path / "again" / "test.json")
    assert first.images == again.images and first.classes == again.classes
    make_synthetic_set(tmp_path / "other", n_train=3, n_test=0, seed=6)
    other = (tmp_path / "other" / "JPEGImages" / "000000.jpg").read_bytes()
    assert other != (synth / "JPEGImages" / "000000.jpg").read_bytes()


def test_voc_layout_and_splits(synth):
    assert (synth / "classes.txt").read_text().split() == list(CLASSES)
    trainval = (synth / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    test = (synth / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(trainval) == 60 and len(test) == 20 and not set(trainval) & set(test)
    assert [r.id for r in read_manifest(synth / "trainval.json").images] == trainval
    assert [r.id for r in read_manifest(synth / "test.json").images] == test
    for image_id in trainval + test:
        assert (synth / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (synth / "Annotations" / f"{image_id}.xml").is_file()


def test_xml_is_one_based_inclusive_and_matches_the_manifest(synth):
    manifest = read_manifest(synth / "trainval.json")
    for rec in manifest.images:
        root = ET.parse(synth / "Annotations" / f"{rec.id}.xml").getroot()
        size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
        assert size == (rec.width, rec.height)
        with Image.open(manifest.image_path(rec)) as img:
            assert img.size == (rec.width, rec.height)
        objects = root.findall("object")
        assert len(objects) == len(rec.boxes)
        for obj, box, label, difficult in zip(objects, rec.boxes, rec.labels, rec.difficult):
            corners = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert [corners[0] - 1, corners[1] - 1, corners[2], corners[3]] == box
            assert obj.findtext("name") == CLASSES[label]
            assert obj.findtext("difficult") == str(int(difficult))


def test_promised_variety(synth):
    images = read_manifest(synth / "trainval.json").images + read_manifest(synth / "test.json").images
    labels = {lab for rec in images for lab, hard in zip(rec.labels, rec.difficult) if not hard}
    assert len(labels) >= 4
    assert sum(not rec.boxes for rec in images) >= 1
    assert sum(any(rec.difficult) for rec in images) >= 5
    assert sum(any(rec.truncated) for rec in images) >= 1
    assert len({(rec.width, rec.height) for rec in images}) > 10
    assert any(rec.height > rec.width for rec in images)
    sides = np.array([[b[2] - b[0], b[3] - b[1], hard] for rec in images
                      for b, hard in zip(rec.boxes, rec.difficult)])
    easy, hard = sides[sides[:, 2] == 0], sides[sides[:, 2] == 1]
    assert hard[:, :2].max() <= 12 and easy[:, :2].max(1).min() >= 20
    assert 24 <= np.median(easy[:, :2].max(1)) <= 90
    aspect = easy[:, 0] / easy[:, 1]
    assert (aspect < 0.5).any() and (aspect > 1.7).any()  # tall bottles and wide cars
    for rec in images:
        for x1, y1, x2, y2 in rec.boxes:
            assert 0 <= x1 < x2 <= rec.width and 0 <= y1 < y2 <= rec.height


def test_boxes_are_the_extents_of_the_objects_pixels():
    image, objects = render_image(np.random.default_rng([1, 2, 3]), 256, 192)
    assert image.shape == (192, 256, 3) and image.dtype == np.uint8
    assert objects
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        crop = image[y1:y2, x1:x2].astype(np.float32)
        assert crop.shape[:2] == (y2 - y1, x2 - x1)
        # a class colour is saturated: the object's pixels reach far from grey inside its box
        spread = crop.max(axis=2) - crop.min(axis=2)
        assert spread.max() > 80
