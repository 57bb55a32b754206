"""Hostile files: pickle payloads in checkpoints, HDF5 files that claim absurd shapes, manifests with odd
sizes, boxes and paths, XML entity bombs, and names that try to leave the output folder.

Each is refused with one clean ``Error:`` line before anything runs or is allocated.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_proposal_store
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.data.voc_xml import parse_voc_xml
from frcnn_cli.errors import CheckpointError, DataError
from frcnn_cli.model.backbones import build_backbone
from frcnn_cli.model.weights import init_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # faster on a busy 2-core machine

TINY = ["--config", "tiny", "--set", "input.train_scales=64", "--set", "input.test_scale=64",
        "--set", "input.max_size=96", "--set", "solver.num_workers=0", "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------------------------------
# pickle payloads


class _Payload:
    """Unpickling this creates ``marker``: proof that code in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_checkpoint(good: Path, path: Path, marker: Path) -> Path:
    """A genuine checkpoint with a payload tucked into its provenance."""
    ckpt = torch.load(good, weights_only=True)
    ckpt["provenance"] = {"note": _Payload(marker)}
    torch.save(ckpt, path)
    return path


@pytest.fixture()
def evil(tmp_path, tiny_checkpoint) -> tuple[Path, Path]:
    good = tiny_checkpoint("good.pt")
    control = _evil_checkpoint(good, tmp_path / "control.pt", tmp_path / "control-ran")
    torch.load(control, weights_only=False)  # the payload is live: unpickled without the guard, it runs
    assert (tmp_path / "control-ran").exists()
    marker = tmp_path / "payload-ran"
    return _evil_checkpoint(good, tmp_path / "evil.pt", marker), marker


def test_a_pickle_payload_is_refused_by_every_command_and_never_runs(evil, synth_set, tmp_path,
                                                                     assert_clean_error):
    path, marker = evil
    image = Path(read_manifest(synth_set[1]).root) / "JPEGImages" / "000008.jpg"
    out = tmp_path / "out"
    commands = [
        ["eval", "--model", path, "--data", synth_set[1], "--out", out / "res"],
        ["detect", image, "--model", path, "--out", out / "det"],
        ["dump-proposals", "--model", path, "--data", synth_set[1], "--out", out / "p.h5"],
        ["train-rpn", "--data", synth_set[0], "--out", out / "rpn.pt", *TINY, "--init", path],
        ["train-rpn", "--data", synth_set[0], "--out", out / "rpn.pt", "--init", path, "--freeze-shared",
         "--device", "cpu"],
        ["train-detector", "--data", synth_set[0], "--proposals", out / "p.h5", "--out", out / "det.pt", *TINY,
         "--init", path],
    ]
    for args in commands:
        assert_clean_error(_run(*args), "evil.pt holds Python objects besides tensors", "refused unread",
                           out_dir=out)
        assert not marker.exists(), args


def test_a_pickle_payload_in_a_weights_file_is_refused(evil):
    path, marker = evil
    with pytest.raises(CheckpointError, match="refused unread"):
        init_backbone(build_backbone("tiny"), "tiny", str(path))
    assert not marker.exists()


@pytest.mark.parametrize("key, value, needle", [
    (("input", "test_scale"), 10**6, "'input.test_scale' is 1000000; give a value from 1 to 8192"),
    (("rpn", "conv_channels"), 10**9, "'rpn.conv_channels' is 1000000000"),
    (("input", "size_divisor"), 0, "'input.size_divisor' is 0"),
])
def test_a_checkpoint_config_asking_for_absurd_sizes_is_refused_before_allocation(tmp_path, tiny_checkpoint,
                                                                                  key, value, needle,
                                                                                  assert_clean_error):
    path = tiny_checkpoint("bomb.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"][key[0]][key[1]] = value
    if key[1] == "test_scale":
        ckpt["config"]["input"]["max_size"] = value  # a 1000000 x 1333333 input: 16 TB of floats
    torch.save(ckpt, path)
    image = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(image)
    before = _peak_rss_mb()
    result = _run("detect", image, "--model", path, "--out", tmp_path / "out")
    assert_clean_error(result, "bomb.pt holds a config this frcnn cannot read", needle, out_dir=tmp_path / "out")
    assert _peak_rss_mb() - before < 300


# --------------------------------------------------------------------------------------------------
# HDF5 that lies about its sizes


def _store(path: Path, manifest_path: Path) -> Path:
    boxes, scores = np.array([[1, 1, 20, 20]], np.float32), np.array([0.9], np.float32)
    return write_proposal_store(path, manifest_path, boxes, scores)


def _huge_boxes(f: h5py.File) -> None:
    del f["images/1/boxes"]
    f["images/1"].create_dataset("boxes", shape=(10**9, 4), dtype="f4", chunks=(4096, 4), compression="gzip")


def _huge_scores(f: h5py.File) -> None:
    del f["images/0/scores"]
    f["images/0"].create_dataset("scores", shape=(10**10,), dtype="f4", chunks=(4096,), compression="gzip")


def _huge_id_list(f: h5py.File) -> None:
    del f["image_ids"]
    f.create_dataset("image_ids", shape=(10**9,), dtype=h5py.string_dtype("utf-8"), chunks=(4096,))


def _wide_boxes(f: h5py.File) -> None:
    del f["images/2/boxes"]
    f["images/2"].create_dataset("boxes", shape=(2, 10**9), dtype="f8", chunks=(1, 4096), compression="gzip")


@pytest.mark.parametrize("tamper, needle", [
    (_huge_boxes, "invalid boxes dataset for image '000009' (shape (1000000000, 4))"),
    (_huge_scores, "invalid scores dataset for image '000008' (shape (10000000000,))"),
    (_huge_id_list, "has no valid /image_ids list"),
    (_wide_boxes, "invalid boxes dataset for image '000010'"),
])
def test_hdf5_with_absurd_shapes_is_refused_before_allocation(synth_set, tmp_path, tamper, needle,
                                                              assert_clean_error):
    props = _store(tmp_path / "props.h5", synth_set[1])
    with h5py.File(props, "a") as f:
        tamper(f)
    assert props.stat().st_size < 10**6
    before = _peak_rss_mb()
    result = _run("eval", "--proposals", props, "--data", synth_set[1], "--out", tmp_path / "out")
    assert_clean_error(result, "props.h5", needle, out_dir=tmp_path / "out")
    assert _peak_rss_mb() - before < 300  # a 4 GB read would show here (if it did not kill the process)


def test_train_detector_refuses_absurd_proposal_shapes(synth_set, tmp_path, assert_clean_error):
    props = _store(tmp_path / "props.h5", synth_set[0])
    with h5py.File(props, "a") as f:
        for i in range(8):  # every image, whichever the first batch draws
            del f[f"images/{i}/boxes"]
            f[f"images/{i}"].create_dataset("boxes", shape=(10**9, 4), dtype="f4", chunks=(4096, 4),
                                            compression="gzip")
    before = _peak_rss_mb()
    out = tmp_path / "out"
    result = _run("train-detector", "--data", synth_set[0], "--proposals", props, "--out", out / "det.pt", *TINY,
                  "--init", "none", "--iters", "1")
    assert_clean_error(result, "props.h5 has an invalid boxes dataset for image", out_dir=out)
    assert _peak_rss_mb() - before < 300


# --------------------------------------------------------------------------------------------------
# manifests


def _image_edit(**changes):
    def edit(data):
        data["images"][0].update(changes)
        data["images"][0].pop("truncated", None)
        return data
    return edit


MANIFESTS = {
    "huge_width": (_image_edit(width=10**12), "width/height 1000000000000x"),
    "huge_height": (_image_edit(height=70_000), "must be positive integers of at most 65535 pixels"),
    "negative_height": (_image_edit(height=-1), "x-1 must be positive integers"),
    "float_width": (_image_edit(width=64.5), "64.5x"),
    "string_width": (_image_edit(width="64"), "'64'x"),
    "boxes_not_a_list": (_image_edit(boxes={"x1": 1}), "\"boxes\", \"labels\" and \"difficult\" must be lists"),
    "box_of_five": (_image_edit(boxes=[[1, 2, 3, 4, 5]], labels=[0], difficult=[False]), "box 0: [1, 2, 3, 4, 5]"),
    "nested_box": (_image_edit(boxes=[[[1, 2], [3, 4]]], labels=[0], difficult=[False]), "box 0: [[1, 2]"),
    "nan_box": (_image_edit(boxes=[[float("nan"), 2, 3, 4]], labels=[0], difficult=[False]), "finite numbers"),
    "huge_box": (_image_edit(boxes=[[0, 0, 1e300, 4]], labels=[0], difficult=[False]), "outside the"),
    "bool_label": (_image_edit(boxes=[[1, 2, 3, 4]], labels=[True], difficult=[False]), "label True is not"),
    "more_labels_than_boxes": (_image_edit(boxes=[], labels=[0], difficult=[]), "0 boxes but 1 labels"),
    "path_escapes_root": (_image_edit(path="../../../../etc/passwd"), "leaves the manifest root with '..'"),
    "sneaky_escape": (_image_edit(path="JPEGImages/../../secret.jpg"), "leaves the manifest root"),
    "nul_in_path": (_image_edit(path="JPEGImages/a\x00.jpg"), "NUL character"),
    "classes_not_names": (lambda d: {**d, "classes": [1, 2, 3, 4, 5]}, "distinct non-empty names"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_hostile_manifests_are_refused_on_reading(synth_set, tmp_path, tiny_checkpoint, case, assert_clean_error):
    edit, needle = MANIFESTS[case]
    data = edit(json.loads(Path(synth_set[0]).read_text()))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    out = tmp_path / "out"
    result = _run("dump-proposals", "--model", tiny_checkpoint(), "--data", bad, "--out", out / "p.h5")
    message = assert_clean_error(result, needle, out_dir=out)
    assert str(bad) in message and ("image 0 (000000)" in message or case == "classes_not_names")


def test_an_absolute_image_path_outside_the_root_is_allowed(synth_set, tmp_path, tiny_checkpoint):
    data = json.loads(Path(synth_set[1]).read_text())
    elsewhere = tmp_path / "elsewhere" / "photo.jpg"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes((Path(data["root"]) / data["images"][0]["path"]).read_bytes())
    data["images"][0]["path"] = str(elsewhere)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(data))
    assert read_manifest(manifest).image_path(read_manifest(manifest).images[0]) == elsewhere
    result = _run("dump-proposals", "--model", tiny_checkpoint(), "--data", manifest, "--out", tmp_path / "p.h5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.h5").is_file()


# --------------------------------------------------------------------------------------------------
# XML


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><object><name>&lol9;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>
</bndbox></object></annotation>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<annotation><object><name>&secret;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>
</bndbox></object></annotation>
"""
PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>
<annotation/>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY],
                         ids=["billion_laughs", "external_entity", "parameter_entity"])
def test_xml_with_doctype_or_entities_is_refused_quickly(tmp_path, text, assert_clean_error):
    images, xml = tmp_path / "imgs", tmp_path / "xml"
    images.mkdir()
    xml.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    (xml / "a.xml").write_text(text)
    start, before = time.perf_counter(), _peak_rss_mb()
    out = tmp_path / "out"
    result = _run("prepare", "folder", "--images", images, "--annotations", xml, "--out", out / "m.json")
    assert_clean_error(result, "a.xml: has a DOCTYPE or ENTITY declaration", "remove the declaration", out_dir=out)
    assert time.perf_counter() - start < 20 and _peak_rss_mb() - before < 100
    with pytest.raises(DataError, match="DOCTYPE or ENTITY"):
        parse_voc_xml(xml / "a.xml")


# --------------------------------------------------------------------------------------------------
# names that would leave the output folder


def test_class_and_split_names_never_leave_the_eval_output_folder(synth_set, tmp_path, tiny_checkpoint):
    data = json.loads(Path(synth_set[1]).read_text())
    classes = ["circle", "../../../escaped", "/abs/olute", "tri\\angle", ".."]
    data.update(classes=classes, name="synth-../../../../split")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(data))
    model = tiny_checkpoint("odd.pt", classes)
    out = tmp_path / "a" / "b" / "out"
    result = _run("eval", "--model", model, "--data", manifest, "--out", out)
    assert result.exit_code == 0, result.output
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {manifest, model}
    assert written and all(out in p.parents for p in written), sorted(written)
    assert all(p.parent == out for p in written)
    names = sorted(p.name for p in written if p.suffix == ".txt")
    assert names == sorted(["comp4_det_.._.._.._.._split_.._.._.._escaped.txt", "comp4_det_.._.._.._.._split_...txt",
                     "comp4_det_.._.._.._.._split__abs_olute.txt", "comp4_det_.._.._.._.._split_circle.txt",
                     "comp4_det_.._.._.._.._split_tri_angle.txt"])
