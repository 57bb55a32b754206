from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from frcnn_cli.data.folder import prepare_folder
from frcnn_cli.data.manifest import read_manifest, write_manifest
from frcnn_cli.data.name_lists import read_class_file
from frcnn_cli.data.voc import VOC_CLASSES, prepare_voc
from frcnn_cli.data.voc_xml import parse_voc_xml
from frcnn_cli.errors import DataError

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<annotation><object><name>&lol2;</name></object></annotation>"""


def voc_xml(objects=(), size=(40, 30)) -> str:
    """``objects``: (name, (xmin, ymin, xmax, ymax), {tag: value}) tuples, the flags dict optional."""
    parts = ["<annotation><folder>VOC2007</folder><filename>x.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box, *flags in objects:
        tags = "".join(f"<{k}>{v}</{k}>" for k, v in (flags[0] if flags else {}).items())
        corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{tags}<bndbox>{corners}</bndbox></object>")
    return "".join(parts) + "</annotation>"


def save_image(path: Path, size=(40, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 90).save(path)
    return path


def make_year(devkit: Path, year: int, annotations: dict[str, str], split: str = "trainval") -> Path:
    """A VOC<year> folder with one 40x30 JPEG per annotation, listed in ImageSets/Main/<split>.txt."""
    year_dir = devkit / f"VOC{year}"
    (year_dir / "Annotations").mkdir(parents=True)
    (year_dir / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, xml in annotations.items():
        (year_dir / "Annotations" / f"{image_id}.xml").write_text(xml)
        save_image(year_dir / "JPEGImages" / f"{image_id}.jpg")
    (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in annotations))
    return year_dir


def test_voc_xml_one_based_inclusive_becomes_zero_based_continuous_exactly(tmp_path):
    xml = voc_xml([("dog", (10, 5, 20, 25)), ("person", (1, 1, 40, 30), {"difficult": 1, "truncated": 1}),
                   ("cat", (10.5, 2.25, 12.5, 3.75), {"difficult": 0})])
    year_dir = make_year(tmp_path, 2007, {"000007": voc_xml([]), "000005": xml})
    m = prepare_voc(tmp_path, [2007], "trainval")
    assert m.name == "voc2007-trainval" and m.classes == list(VOC_CLASSES) and m.root == str(year_dir)
    assert [r.id for r in m.images] == ["000007", "000005"]  # the order of the image set
    empty, rec = m.images
    assert empty.boxes == [] and empty.labels == []  # an image without objects is valid
    assert (rec.path, rec.width, rec.height) == ("JPEGImages/000005.jpg", 40, 30)
    assert rec.boxes == [[9.0, 4.0, 20.0, 25.0], [0.0, 0.0, 40.0, 30.0], [9.5, 1.25, 12.5, 3.75]]
    assert rec.labels == [11, 14, 7]  # dog, person, cat in the VOC order
    assert rec.difficult == [False, True, False] and rec.truncated == [False, True, False]
    write_manifest(tmp_path / "m.json", m)
    assert read_manifest(tmp_path / "m.json") == m
    assert m.image_path(rec) == year_dir / "JPEGImages" / "000005.jpg"


def test_07_plus_12_is_the_union_rooted_at_the_devkit(tmp_path):
    make_year(tmp_path, 2007, {"000005": voc_xml([("cat", (1, 2, 3, 4))])})
    make_year(tmp_path, 2012, {"2008_000002": voc_xml([("tvmonitor", (5, 6, 7, 8))])})
    m = prepare_voc(tmp_path, [2007, 2012], "trainval")
    assert m.name == "voc2007+2012-trainval" and m.root == str(tmp_path)
    assert [(r.id, r.path, r.labels) for r in m.images] == [
        ("000005", "VOC2007/JPEGImages/000005.jpg", [7]),
        ("2008_000002", "VOC2012/JPEGImages/2008_000002.jpg", [19]),
    ]
    assert all(m.image_path(r).is_file() for r in m.images)


def test_root_may_be_the_year_folder_itself(tmp_path):
    year_dir = make_year(tmp_path, 2007, {"000005": voc_xml([("cat", (1, 2, 3, 4))])}, split="test")
    m = prepare_voc(year_dir, [2007], "test")
    assert m.root == str(year_dir) and m.images[0].path == "JPEGImages/000005.jpg"


def test_zero_based_box_is_clipped_to_zero_with_a_warning_never_wrapped(tmp_path):
    make_year(tmp_path, 2007, {"000005": voc_xml([("dog", (0, 0, 10, 12))])})
    warnings: list[str] = []
    m = prepare_voc(tmp_path, [2007], "trainval", on_warning=warnings.append)
    assert m.images[0].boxes == [[0.0, 0.0, 10.0, 12.0]]
    assert len(warnings) == 1 and "000005.xml, object 1 (dog)" in warnings[0] and "0-based" in warnings[0]


def test_box_a_few_pixels_outside_is_clipped_with_a_warning(tmp_path):
    make_year(tmp_path, 2007, {"000005": voc_xml([("dog", (30, 1, 43, 32))])})
    warnings: list[str] = []
    m = prepare_voc(tmp_path, [2007], "trainval", on_warning=warnings.append)
    assert m.images[0].boxes == [[29.0, 0.0, 40.0, 30.0]]
    assert "reaches 3 px outside the 40x30 image; clipped" in warnings[0]


def test_one_pixel_box_is_valid(tmp_path):
    make_year(tmp_path, 2007, {"000005": voc_xml([("dog", (7, 8, 7, 8))])})
    assert prepare_voc(tmp_path, [2007], "trainval").images[0].boxes == [[6.0, 7.0, 7.0, 8.0]]


def _replace_xml(text):
    return lambda year_dir: (year_dir / "Annotations" / "000005.xml").write_text(text)


def _truncate_image(year_dir):
    path = year_dir / "JPEGImages" / "000005.jpg"
    Image.effect_noise((40, 30), 60).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:400])


def _objects(*objects, **kw):
    return _replace_xml(voc_xml(objects, **kw))


def _unlink(sub, name):
    return lambda year_dir: (year_dir / sub / name).unlink()


BAD_INPUTS = {
    "x2 <= x1": (_objects(("cat", (1, 1, 5, 5)), ("dog", (30, 5, 20, 10))),
                 r"000005.xml, object 2 \(dog\): xmax 20 < xmin 30; fix the box or delete the object"),
    "absurd box": (_objects(("dog", (10, 5, 60, 25))),
                   r"object 1 \(dog\): box \(10, 5, 60, 25\) lies 20 px outside the 40x30 image"),
    "box beside the image": (_objects(("dog", (42, 5, 43, 25))), r"lies 3 px outside"),
    "unknown class": (_objects(("unicorn", (1, 1, 5, 5))), r"object 1 \(unicorn\): unknown class"),
    "size mismatch": (_objects(size=(50, 30)), r"<size> says 50x30 but .*000005.jpg is 40x30"),
    "no bndbox": (_replace_xml("<annotation><object><name>cat</name></object></annotation>"),
                  r"object 1 \(cat\): has no <bndbox>"),
    "not a number": (_objects(("cat", ("ten", 1, 5, 5))), r"xmin 'ten' is not a number"),
    "nan": (_objects(("cat", (1, "nan", 5, 5))), r"ymin 'nan' is not a number"),
    "missing corner": (_objects(("cat", (1, 1, 5))), r"<bndbox> ymax is missing"),
    "no name": (_replace_xml("<annotation><object><bndbox/></object></annotation>"),
                r"object 1: has no <name>"),
    "bad flag": (_objects(("cat", (1, 1, 5, 5), {"difficult": "maybe"})), r"<difficult> 'maybe'"),
    "malformed": (_replace_xml("<annotation><object>"), r"000005.xml: malformed XML"),
    "empty xml": (_replace_xml(""), r"000005.xml: malformed XML"),
    "not voc": (_replace_xml("<html></html>"), r"root element is <html>, not <annotation>"),
    "billion laughs": (_replace_xml(BILLION_LAUGHS), r"DOCTYPE or ENTITY declaration, which frcnn refuses"),
    "missing image": (_unlink("JPEGImages", "000005.jpg"), r"000005.jpg: the image is missing"),
    "missing xml": (_unlink("Annotations", "000005.xml"), r"000005.xml: the annotation is missing"),
    "truncated image": (_truncate_image, r"000005.jpg: unreadable or truncated image"),
    "not an image": (lambda d: (d / "JPEGImages" / "000005.jpg").write_text("hi"), r"unreadable or trunc"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_each_bad_input_is_a_data_error_naming_the_file(tmp_path, case):
    damage, message = BAD_INPUTS[case]
    year_dir = make_year(tmp_path, 2007, {"000005": voc_xml([("cat", (1, 1, 5, 5))])})
    damage(year_dir)
    with pytest.raises(DataError, match=message):
        prepare_voc(tmp_path, [2007], "trainval")


def test_all_problems_are_collected_into_one_error(tmp_path):
    bad = voc_xml([("cat", (9, 1, 5, 5))])
    good = voc_xml([("cat", (1, 1, 5, 5))])
    make_year(tmp_path, 2007, {f"{i:06d}": bad for i in range(12)} | {"000099": good})
    with pytest.raises(DataError) as info:
        prepare_voc(tmp_path, [2007], "trainval")
    text = str(info.value)
    assert text.startswith("12 problems in the data; fix them and run prepare again:")
    assert "000000.xml, object 1 (cat): xmax 5 < xmin 9" in text and "... and 2 more" in text


def test_missing_split_and_year_folders_say_what_exists(tmp_path):
    make_year(tmp_path, 2007, {"000005": voc_xml()})
    with pytest.raises(DataError, match=r"test.txt does not exist \(splits found: trainval\)"):
        prepare_voc(tmp_path, [2007], "test")
    with pytest.raises(DataError, match=r"no folder .*VOC2012; give --root the VOCdevkit folder"):
        prepare_voc(tmp_path, [2007, 2012], "trainval")


def test_parse_voc_xml_defaults_and_floats(tmp_path):
    path = tmp_path / "a.xml"
    objects = [("cat", (1.5, 2, 3.25, 4)), ("dog", (1, 1, 2, 2), {"truncated": "1"})]
    path.write_text(voc_xml(objects, size=None))
    ann = parse_voc_xml(path)
    assert (ann.width, ann.height) == (None, None)
    assert [(o.name, o.box, o.difficult, o.truncated) for o in ann.objects] == [
        ("cat", (1.5, 2.0, 3.25, 4.0), False, False), ("dog", (1.0, 1.0, 2.0, 2.0), False, True)]


def make_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Nested images (JPEG, grayscale PNG, BMP), flat annotations; x3 has no objects, x1 a 0-based box."""
    images, xml = tmp_path / "images", tmp_path / "xml"
    save_image(images / "a" / "x1.jpg")
    save_image(images / "b" / "c" / "x2.png", size=(20, 10), mode="L")
    save_image(images / "x3.bmp", size=(8, 8))
    xml.mkdir()
    (xml / "x1.xml").write_text(voc_xml([("zebra", (0, 3, 10, 12)), ("bird", (2, 2, 4, 4))]))
    (xml / "x2.xml").write_text(voc_xml([("bird", (1, 1, 20, 10), {"difficult": 1})], size=(20, 10)))
    (xml / "x3.xml").write_text(voc_xml([], size=None))
    return images, xml


def test_folder_nested_png_grayscale_bmp_empty_images_and_discovered_classes(tmp_path):
    images, xml = make_folder(tmp_path)
    warnings: list[str] = []
    m = prepare_folder(images, xml, on_warning=warnings.append)
    assert m.classes == ["bird", "zebra"] and m.name == "images" and m.root == str(images)
    assert [(r.id, r.path, r.width, r.height) for r in m.images] == [
        ("x1", "a/x1.jpg", 40, 30), ("x2", "b/c/x2.png", 20, 10), ("x3", "x3.bmp", 8, 8)]
    assert m.images[0].boxes == [[0.0, 2.0, 10.0, 12.0], [1.0, 1.0, 4.0, 4.0]]
    assert m.images[0].labels == [1, 0]
    assert m.images[1].boxes == [[0.0, 0.0, 20.0, 10.0]] and m.images[1].difficult == [True]
    assert m.images[2].boxes == []
    assert len(warnings) == 1 and "x1.xml, object 1 (zebra)" in warnings[0]
    assert all(m.image_path(r).is_file() for r in m.images)


def test_folder_given_classes_set_the_order_and_reject_unknown_names(tmp_path):
    images, xml = make_folder(tmp_path)
    m = prepare_folder(images, xml, classes=["zebra", "bird", "cow"], name="mine")
    assert m.name == "mine" and m.images[0].labels == [0, 1]
    with pytest.raises(DataError, match=r"x1.xml, object 1 \(zebra\): unknown class 'zebra'"):
        prepare_folder(images, xml, classes=["bird"])


def test_folder_matching_problems(tmp_path):
    images, xml = make_folder(tmp_path)
    save_image(images / "orphan.jpg")
    warnings: list[str] = []
    m = prepare_folder(images, xml, on_warning=warnings.append)
    assert "orphan" not in [r.id for r in m.images] and "1 image(s) have no XML" in warnings[0]
    (xml / "lonely.xml").write_text(voc_xml([]))
    with pytest.raises(DataError, match=r"lonely.xml: no image lonely.jpg/.jpeg/.png/.bmp in"):
        prepare_folder(images, xml)
    (xml / "lonely.xml").unlink()
    save_image(images / "b" / "x1.png")
    with pytest.raises(DataError, match=r"have the same name 'x1'; .* so rename one"):
        prepare_folder(images, xml)


def test_folder_empty_or_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    images, xml = make_folder(tmp_path)
    with pytest.raises(DataError, match=r"no images \(.jpg/.jpeg/.png/.bmp\) in .*empty"):
        prepare_folder(tmp_path / "empty", xml)
    with pytest.raises(DataError, match=r"no VOC XML annotations \(.xml\) in .*empty"):
        prepare_folder(images, tmp_path / "empty")
    with pytest.raises(DataError, match=r"nowhere is not a folder"):
        prepare_folder(tmp_path / "nowhere", xml)
    for f in xml.iterdir():
        f.write_text(voc_xml([]))
    with pytest.raises(DataError, match=r"no <object> in any of the 3 annotations"):
        prepare_folder(images, xml)


def test_folder_split_file_keeps_the_listed_stems(tmp_path):
    images, xml = make_folder(tmp_path)
    (tmp_path / "keep.txt").write_text("x3\n\nx1.jpg\n")
    m = prepare_folder(images, xml, split_file=tmp_path / "keep.txt")
    assert [r.id for r in m.images] == ["x1", "x3"]
    (tmp_path / "keep.txt").write_text("x1\nghost\n")
    with pytest.raises(DataError, match=r"names 1 image\(s\) without both an image and an XML \(first: 'gh"):
        prepare_folder(images, xml, split_file=tmp_path / "keep.txt")


def test_folder_val_fraction_is_disjoint_and_deterministic(tmp_path):
    images, xml = tmp_path / "images", tmp_path / "xml"
    xml.mkdir()
    for i in range(10):
        save_image(images / f"{i:03d}.jpg", size=(8, 8))
        (xml / f"{i:03d}.xml").write_text(voc_xml([("cat", (1, 1, 4, 4))], size=(8, 8)))
    train, val = prepare_folder(images, xml, val_fraction=0.3, seed=1, name="toy")
    again = prepare_folder(images, xml, val_fraction=0.3, seed=1, name="toy")
    assert (train, val) == again
    assert len(val.images) == 3 and len(train.images) == 7 and val.name == "toy.val"
    assert {r.id for r in train.images}.isdisjoint({r.id for r in val.images})
    draws = [prepare_folder(images, xml, val_fraction=0.3, seed=s)[1] for s in range(4)]
    assert len({tuple(r.id for r in val.images) for val in draws}) > 1


def test_class_file_rules(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\n dog \n")
    assert read_class_file(path) == ["cat", "dog"]
    path.write_text("__background__\ncat\n")
    with pytest.raises(DataError, match="background class '__background__'; frcnn adds .*: leave it out"):
        read_class_file(path)
    path.write_text("cat\ncat\n")
    with pytest.raises(DataError, match="lists cat more than once"):
        read_class_file(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        read_class_file(path)
