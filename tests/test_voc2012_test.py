"""The paper's Table 3: 07++12 from merged manifests (``prepare merge``, data/merge.py), VOC2012 test as an
images-only manifest (``prepare voc --year 2012 --split test``, data/voc_images.py) and the evaluation server's
result files (``eval --results-only``, evaluate/submission.py)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import ImageRecord, Manifest, manifest_hash, read_manifest, write_manifest
from frcnn_cli.data.voc import VOC_CLASSES
from frcnn_cli.evaluate.submission import submission_year, write_submission

pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIME = ["--set", "runtime.num_workers=0", "--device", "cpu"]
TEST_IDS = ["2008_000001", "2008_000004", "2009_000010"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def voc2012_test(tmp_path_factory) -> Path:
    """A VOCdevkit with VOC2012 test as the server's tarball has it: images and the image set, no annotations."""
    devkit = tmp_path_factory.mktemp("voc") / "VOCdevkit"
    year = devkit / "VOC2012"
    (year / "JPEGImages").mkdir(parents=True)
    (year / "ImageSets" / "Main").mkdir(parents=True)
    for k, image_id in enumerate(TEST_IDS):
        Image.new("RGB", (64 + 8 * k, 48), (40 * k, 90, 160)).save(year / "JPEGImages" / f"{image_id}.jpg")
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(TEST_IDS) + "\n")
    return devkit


@pytest.fixture(scope="module")
def test_manifest(voc2012_test, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m") / "voc12-test.json"
    result = _run("prepare", "voc", "--root", voc2012_test, "--year", "2012", "--split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_voc2012_test_goes_alone(voc2012_test, tmp_path, assert_clean_error):
    out = tmp_path / "out"
    result = _run("prepare", "voc", "--root", voc2012_test, "--year", "2007,2012", "--split", "test", "--out",
                  out / "m.json")
    assert_clean_error(result, "VOC2012 test has no public annotations", out_dir=out)


def test_voc2012_test_is_an_images_only_manifest(test_manifest):
    manifest = read_manifest(test_manifest)
    assert manifest.name == "voc2012-test" and not manifest.annotated
    assert [r.id for r in manifest.images] == TEST_IDS
    assert [(r.width, r.height, r.boxes) for r in manifest.images] == [(64, 48, []), (72, 48, []), (80, 48, [])]
    assert json.loads(test_manifest.read_text())["annotated"] is False
    annotated = Manifest(manifest.name, manifest.classes, manifest.root, manifest.images)
    assert manifest_hash(manifest) != manifest_hash(annotated)  # the flag is part of its identity


@pytest.mark.parametrize("args, needle", [
    (["eval", "--model", "M", "--data", "D"], "write the evaluation server's files with"),
    (["eval", "--proposals", "P.h5", "--data", "D"], "AP and recall need them"),
    (["train-rpn", "--data", "D", "--out", "OUT/rpn.pt", "--config", "tiny"], "there is nothing to train on"),
    (["train", "--data", "D", "--workdir", "OUT/run", "--config", "tiny"], "there is nothing to train on"),
])
def test_commands_that_need_ground_truth_refuse_it(test_manifest, tmp_path, tiny_checkpoint, assert_clean_error,
                                                   args, needle):
    values = {"M": tiny_checkpoint(classes=VOC_CLASSES), "D": test_manifest, "P.h5": tmp_path / "p.h5"}
    args = [str(values.get(a, a)).replace("OUT", str(tmp_path / "out")) for a in args]
    result = _run(*args)
    assert_clean_error(result, "holds images without annotations", needle, out_dir=tmp_path / "out")


def test_detect_and_dump_proposals_take_it(test_manifest, tmp_path, tiny_checkpoint):
    model = tiny_checkpoint(classes=VOC_CLASSES)
    result = _run("detect", test_manifest, "--model", model, "--json", "--score-thresh", 0.0, *RUNTIME)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [Path(r["image"]).stem for r in found] == TEST_IDS
    result = _run("dump-proposals", "--model", model, "--data", test_manifest, "--out", tmp_path / "p.h5", *RUNTIME)
    assert result.exit_code == 0, result.output


def _devkit_lines(path: Path) -> list[tuple]:
    """The devkit's reader: ``textread(file, '%s %f %f %f %f %f')``: six blank-separated fields a line."""
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        assert len(fields) == 6, line
        rows.append((fields[0], *map(float, fields[1:])))
    return rows


def test_the_submission_is_the_servers_layout_with_1_based_boxes(test_manifest, tmp_path):
    manifest = read_manifest(test_manifest)
    # one detection of class 14 ("person") on the second image: frcnn's box [9.5, 19, 30, 40] (0-based continuous)
    detections = {14: (torch.tensor([1]).numpy(), torch.tensor([0.875]).numpy(),
                       torch.tensor([[9.5, 19.0, 30.0, 40.0]]).double().numpy())}
    paths, archive = write_submission(tmp_path / "sub", detections, manifest, split="test")
    main = tmp_path / "sub" / "results" / "VOC2012" / "Main"
    assert [p.name for p in paths] == [f"comp4_det_test_{c}.txt" for c in VOC_CLASSES]
    assert all(p.parent == main for p in paths)
    assert _devkit_lines(main / "comp4_det_test_person.txt") == [("2008_000004", 0.875, 10.5, 20.0, 30.0, 40.0)]
    assert (main / "comp4_det_test_cat.txt").read_text() == ""
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        person = tar.extractfile("results/VOC2012/Main/comp4_det_test_person.txt").read()
    assert names == sorted(f"results/VOC2012/Main/comp4_det_test_{c}.txt" for c in VOC_CLASSES)
    assert person == (main / "comp4_det_test_person.txt").read_bytes()
    assert submission_year("voc2007-test") == 2007 and submission_year("mine") == 2012


def test_eval_results_only_writes_every_images_detections(test_manifest, tmp_path, tiny_checkpoint):
    model = tiny_checkpoint(classes=VOC_CLASSES)
    out = tmp_path / "sub"
    result = _run("eval", "--model", model, "--data", test_manifest, "--results-only", "--out", out, "--json",
                  *RUNTIME)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["year"] == 2012 and summary["split"] == "test" and summary["archive"] == str(out / "results.tar.gz")
    lines = [row for name in VOC_CLASSES
             for row in _devkit_lines(out / "results" / "VOC2012" / "Main" / f"comp4_det_test_{name}.txt")]
    assert len(lines) == summary["detections"] > 0
    assert {row[0] for row in lines} <= set(TEST_IDS)
    for _, score, xmin, ymin, xmax, ymax in lines:  # 1-based pixels inside the 80 x 48 images at most
        assert 0.05 < score <= 1 and 1 <= xmin <= xmax <= 80 and 1 <= ymin <= ymax <= 48


def test_results_only_needs_a_model_and_an_out_folder(test_manifest, assert_clean_error):
    result = _run("eval", "--proposals", "p.h5", "--data", test_manifest, "--results-only")
    assert_clean_error(result, "--results-only writes a detector's (--model) detections")


# --------------------------------------------------------------------------------------------------
# prepare merge


def _part(folder: Path, name: str, ids, *, classes=("cat", "dog"), annotated=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = [ImageRecord(i, f"JPEGImages/{i}.jpg", 64, 48, [[1.0, 2, 30, 40]] if annotated else [],
                           [1] if annotated else [], [False] if annotated else []) for i in ids]
    path = folder / f"{name}.json"
    write_manifest(path, Manifest(name, list(classes), str(folder), records, annotated=annotated))
    return path


def test_merging_keeps_every_image_its_file_and_records_the_parts(tmp_path):
    a = _part(tmp_path / "VOC2007", "voc2007-trainval", ["000005", "000007"])
    b = _part(tmp_path / "VOC2012", "voc2012-trainval", ["2008_000002", "000005"])  # 000005: another file
    out = tmp_path / "merged" / "voc07+12.json"
    result = _run("prepare", "merge", a, b, "--out", out)
    assert result.exit_code == 0, result.output
    merged = read_manifest(out)
    assert [r.id for r in merged.images] == ["000005", "000007", "2008_000002", "voc2012-trainval/000005"]
    assert merged.root == str(tmp_path) and merged.name == "voc07+12"
    files = [merged.image_path(r) for r in merged.images]
    assert files == [tmp_path / "VOC2007/JPEGImages/000005.jpg", tmp_path / "VOC2007/JPEGImages/000007.jpg",
                     tmp_path / "VOC2012/JPEGImages/2008_000002.jpg", tmp_path / "VOC2012/JPEGImages/000005.jpg"]
    assert [(p["name"], p["first"], p["images"], p["renamed"]) for p in merged.parts] == [
        ("voc2007-trainval", 0, 2, 0), ("voc2012-trainval", 2, 2, 1)]
    assert merged.parts[1]["hash"] == manifest_hash(read_manifest(b)) and merged.parts[0]["file"] == str(a)


@pytest.mark.parametrize("case, needle", [
    ("overlap", "is in both"),
    ("classes", "give manifests of the same classes in the same order"),
    ("images-only", "holds images without annotations but"),
])
def test_parts_that_cannot_be_merged_are_clean_errors(tmp_path, assert_clean_error, case, needle):
    a = _part(tmp_path / "VOC2007", "voc2007-trainval", ["000005", "000007"])
    if case == "overlap":
        b = _part(tmp_path / "VOC2007", "voc2007-trainval-again", ["000007"])
    elif case == "classes":
        b = _part(tmp_path / "VOC2012", "other", ["x"], classes=("dog", "cat"))
    else:
        b = _part(tmp_path / "VOC2012", "voc2012-test", ["y"], annotated=False)
    out = tmp_path / "out"
    assert_clean_error(_run("prepare", "merge", a, b, "--out", out / "m.json"), needle, out_dir=out)
