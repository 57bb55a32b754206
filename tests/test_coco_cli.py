"""COCO data from the command line: prepare coco, train on the manifest, eval --coco equal to pycocotools on
the original file, the results file, and the errors."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import single_thread
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_cli.data.manifest import read_manifest

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RUNTIME = ("--set", "runtime.num_workers=0")


def _coco_file_of(synth: Path, out: Path) -> tuple[Path, Path]:
    """A COCO file for the synthetic images of ``synth`` (a manifest): non-contiguous category ids listed out
    of order, COCO image ids, one crowd region, one image without objects, one zero-area box."""
    manifest = read_manifest(synth)
    cat_ids = [90, 3, 18, 44, 7][:len(manifest.classes)]
    categories = [{"id": c, "name": n} for c, n in sorted(zip(cat_ids, manifest.classes), reverse=True)]
    images, annotations = [], []
    for i, rec in enumerate(manifest.images):
        images.append({"id": 1000 + 7 * i, "file_name": rec.path, "width": rec.width, "height": rec.height})
        if i == 1:
            continue  # an image without objects
        for box, label in zip(rec.boxes, rec.labels):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": 1000 + 7 * i,
                                "category_id": cat_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    annotations[0]["iscrowd"] = 1  # a crowd region
    annotations.append({"id": len(annotations) + 1, "image_id": 1000, "category_id": cat_ids[0],
                        "bbox": [3.0, 3.0, 0.0, 5.0], "area": 0.0, "iscrowd": 0})  # zero width: dropped
    path = out / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, Path(manifest.root)


@pytest.fixture(scope="module")
def coco_run(synth_set, frcnn, tmp_path_factory):
    """``prepare coco`` of the synthetic training images, a short ``frcnn train``, ``eval --coco --out``."""
    work = tmp_path_factory.mktemp("coco")
    ann, images = _coco_file_of(synth_set[0], work)
    manifest = work / "coco.json"
    prepared = frcnn("prepare", "coco", "--annotations", ann, "--images", images, "--out", manifest)
    with single_thread():
        frcnn("train", "--data", manifest, "--workdir", work / "run", "--config", "tiny", "--iters", 2,
              "--set", "input.train_scales=64", "--set", "input.test_scale=64", "--set", "input.max_size=96",
              *RUNTIME, "--device", "cpu")
        result = frcnn("eval", "--model", work / "run" / "final.pt", "--data", manifest, "--coco", "--json",
                       "--out", work / "out", *RUNTIME, "--device", "cpu")
    return {"ann": ann, "manifest": manifest, "prepare": prepared, "summary": json.loads(result.stdout),
            "out": work / "out", "model": work / "run" / "final.pt", "stderr": result.stderr}


def test_prepare_keeps_the_original_ids_and_marks_the_crowd_region(coco_run):
    manifest = read_manifest(coco_run["manifest"])
    assert manifest.category_ids == sorted(manifest.category_ids) and set(manifest.category_ids) <= {90, 3, 18, 44, 7}
    assert [rec.coco_id for rec in manifest.images[:3]] == [1000, 1007, 1014]
    assert manifest.images[1].boxes == []  # kept as a negative
    first = json.loads(coco_run["ann"].read_text())["annotations"][0]  # the crowd region
    rec = next(r for r in manifest.images if r.coco_id == first["image_id"])
    assert rec.crowd[0] and rec.difficult[0] and not any(rec.crowd[1:])
    assert "zero width or height, dropped: 1" in " ".join(coco_run["prepare"].stderr.split())


def test_eval_coco_equals_pycocotools_on_the_original_file(coco_run):
    results = coco_run["out"] / "coco_results.json"
    original = json.loads(coco_run["ann"].read_text())
    original["annotations"] = [a for a in original["annotations"] if a["area"] > 0]  # prepare drops it too
    clean = coco_run["ann"].with_name("clean.json")
    clean.write_text(json.dumps(original))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(clean))
        dt = gt.loadRes(str(results))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    reference = [None if v < 0 else float(v) for v in ev.stats[:12]]
    ours = coco_run["summary"]["coco"]["stats"]
    assert list(ours) == list(SUMMARY)
    for key, want in zip(SUMMARY, reference):
        assert (ours[key] is None) == (want is None) and (want is None or abs(ours[key] - want) <= 1e-4), key
    assert len(dt.getAnnIds()) > 0
    assert {a["image_id"] for a in dt.loadAnns(dt.getAnnIds())} <= {img["id"] for img in original["images"]}
    assert {a["category_id"] for a in dt.loadAnns(dt.getAnnIds())} <= {c["id"] for c in original["categories"]}


def test_one_inference_gives_both_metrics_and_every_file(coco_run):
    summary = coco_run["summary"]
    assert summary["metric"] == "11point" and set(summary["ap"]) == set(summary["coco"]["ap"])
    assert summary["coco"]["map"] == summary["coco"]["stats"]["AP"]
    files = {p.name for p in coco_run["out"].iterdir()}
    assert "coco_results.json" in files and any(name.startswith("comp4_det_") for name in files)
    assert "COCO AP" in coco_run["stderr"] and "VOC AP" in coco_run["stderr"]
    per_image = np.bincount([r["image_id"] for r in json.loads((coco_run["out"] / "coco_results.json").read_text())])
    assert per_image.max() <= 100


def test_eval_coco_works_on_a_voc_manifest_with_made_up_ids(synth_set, tiny_checkpoint, frcnn):
    result = frcnn("eval", "--model", tiny_checkpoint(), "--data", synth_set[1], "--coco", "--json", *RUNTIME,
                   "--device", "cpu")
    coco = json.loads(result.stdout)["coco"]
    assert set(coco["ap"]) == set(read_manifest(synth_set[1]).classes)
    assert all(v is None or 0.0 <= v <= 1.0 for v in coco["stats"].values())


def test_without_an_evaluator_eval_coco_is_one_error_before_any_inference(synth_set, tiny_checkpoint, frcnn,
                                                                        monkeypatch, assert_clean_error):
    for module in ("faster_coco_eval", "pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, module, None)
    result = frcnn("eval", "--model", tiny_checkpoint(), "--data", synth_set[1], "--coco", ok=False)
    assert_clean_error(result, 'pip install "frcnn[coco]"')
    assert result.exit_code == 2 and "detect" not in result.stderr


def test_coco_goes_with_a_model_only(synth_set, frcnn, tmp_path, assert_clean_error):
    result = frcnn("eval", "--proposals", tmp_path / "p.h5", "--data", synth_set[1], "--coco", ok=False)
    assert_clean_error(result, "--coco", "--model only")
