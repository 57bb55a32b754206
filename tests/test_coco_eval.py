"""COCO evaluation (evaluate/coco.py) against pycocotools' COCOeval run on the original COCO file."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from coco_data import write_coco_set
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_cli.data.coco import prepare_coco
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.errors import ConfigError, DataError
from frcnn_cli.evaluate.coco import (
    EVALUATORS,
    SUMMARY,
    coco_ground_truth,
    coco_results,
    evaluate_coco,
    evaluate_coco_results,
    write_coco_results,
)

CAR, DOG, TOOTHBRUSH = 1, 2, 3  # labels: 1 + index into the manifest's classes (car, dog, toothbrush)


def _det(rows):
    """``[(label, score, x1, y1, x2, y2), ...]`` -> frcnn's detections of one image (tensors)."""
    rows = list(rows)
    return {"labels": torch.tensor([r[0] for r in rows], dtype=torch.int64),
            "scores": torch.tensor([r[1] for r in rows], dtype=torch.float32),
            "boxes": torch.tensor([r[2:] for r in rows], dtype=torch.float32).reshape(-1, 4)}


# per image in manifest order (397133, 7, 42, 1000): true positives at several IoUs, a duplicate, a
# detection on the crowd region (neither TP nor FP), false positives (one on the image without objects)
DETECTIONS = [
    _det([(DOG, 0.9, 10.5, 10, 30, 40), (CAR, 0.8, 50, 20, 90.5, 70), (CAR, 0.85, 52, 22, 88, 68),
          (CAR, 0.7, 5, 5, 45, 35), (TOOTHBRUSH, 0.3, 60, 60, 70, 70)]),
    _det([(TOOTHBRUSH, 0.6, 30, 21, 59, 50), (DOG, 0.95, 0, 0, 10, 10)]),
    _det([(CAR, 0.5, 0, 0, 20, 20)]),
    _det([(CAR, 0.9, 10, 10, 40, 40), (DOG, 0.75, 42, 41, 80, 70), (CAR, 0.4, 6, 51, 24, 69),
          (CAR, 0.65, 30, 30, 60, 60)]),
]


@pytest.fixture()
def coco_file(tmp_path):
    """The test set without degenerate boxes (so that the manifest holds the file's ground truth exactly)."""
    return write_coco_set(tmp_path / "coco", degenerate=False)


def _reference(ann_path, results_path, cat_ids=None) -> np.ndarray:
    """pycocotools' 12 summary numbers on the original file and a results file (-1 -> NaN)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        ev = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.where(ev.stats[:12] > -1, ev.stats[:12], np.nan)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-4


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_coco_metrics_equal_pycocotools_on_the_original_file(coco_file, tmp_path, evaluator):
    ann, images = coco_file
    manifest = prepare_coco(ann, images)
    results_path = tmp_path / "results.json"
    write_coco_results(results_path, coco_results(manifest, DETECTIONS))
    ours = evaluate_coco(manifest, DETECTIONS, evaluator=evaluator)
    reference = _reference(ann, results_path)
    assert [ours["stats"][key] for key in SUMMARY] == pytest.approx(reference.tolist(), abs=1e-4, nan_ok=True)
    assert ours["map"] == ours["stats"]["AP"]
    assert 0.3 < ours["map"] < 0.9 and not math.isnan(ours["stats"]["APs"])  # a case with something to get wrong
    for name, cat in zip(manifest.classes, manifest.category_ids):
        per_class = _reference(ann, results_path, cat_ids=[cat])
        assert _close(ours["ap"][name], per_class[0]) and _close(ours["ap50"][name], per_class[1]), name


def test_the_crowd_region_and_the_mask_areas_change_the_numbers(coco_file, tmp_path):
    """Guards the test above: a detection on the crowd region ignored, sizes from COCO's area."""
    ann, images = coco_file
    manifest = prepare_coco(ann, images)
    ours = evaluate_coco(manifest, DETECTIONS)
    manifest.images[0].difficult[2] = manifest.images[0].crowd[2] = False
    assert evaluate_coco(manifest, DETECTIONS)["ap"]["car"] < ours["ap"]["car"] - 0.05
    manifest = prepare_coco(ann, images)
    for rec in manifest.images:
        rec.area = None  # box areas: the dog of image 1000 (box 1200 px, mask 900 px) becomes medium
    assert evaluate_coco(manifest, DETECTIONS)["stats"]["APs"] != pytest.approx(ours["stats"]["APs"], abs=1e-3)


def test_results_carry_the_original_ids_and_load_with_loadres(coco_file, tmp_path):
    manifest = prepare_coco(*coco_file)
    results = coco_results(manifest, DETECTIONS)
    assert len(results) == 12
    assert results[0] == {"image_id": 397133, "category_id": 18, "bbox": [10.5, 10.0, 19.5, 30.0],
                          "score": pytest.approx(0.9)}
    assert [r["score"] for r in results[:5]] == sorted((r["score"] for r in results[:5]), reverse=True)
    assert {r["category_id"] for r in results} == {3, 18, 90}
    path = tmp_path / "out" / "coco_results.json"
    write_coco_results(path, results)
    assert json.loads(path.read_text()) == results
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(coco_file[0])).loadRes(str(path))
    assert len(loaded.getAnnIds()) == 12
    assert sorted({a["image_id"] for a in loaded.loadAnns(loaded.getAnnIds())}) == [7, 42, 1000, 397133]


def test_at_most_100_detections_per_image_the_best_ones(coco_file):
    manifest = prepare_coco(*coco_file)
    many = _det((CAR, (i % 150) / 150 + 0.001, 0, 0, 10 + i % 7, 10) for i in range(150))
    results = coco_results(manifest, [many, _det([]), _det([]), _det([])])
    assert len(results) == 100
    assert min(r["score"] for r in results) == pytest.approx(50 / 150 + 0.001)


def _voc_manifest() -> Manifest:
    return Manifest("voc-like", ["cat", "dog"], "/data", [
        ImageRecord("000005", "a.jpg", 40, 40, [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0, 0],
                    [False, True]),
        ImageRecord("000007", "b.jpg", 40, 40, [], [], [])])


def test_voc_manifest_gets_made_up_ids_and_difficult_boxes_as_crowd_regions():
    gt = coco_ground_truth(_voc_manifest())
    assert [img["id"] for img in gt["images"]] == [1, 2]
    assert gt["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                {"id": 2, "name": "dog", "supercategory": ""}]
    assert gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20.0, 20.0, 10.0, 10.0], "area": 100.0, "iscrowd": 1}]


def test_voc_manifest_ap_by_hand_iou_078_matches_six_of_ten_thresholds():
    # IoU 0.78 with the cat: a TP at thresholds .50 .. .75, a FP above; the higher-scored detection on the
    # difficult cat is neither; so AP = 6/10, AP50 = 1; dog has no objects: NaN
    detections = [_det([(1, 0.9, 0, 0, 10, 7.8), (1, 0.95, 21, 21, 29, 29)]), _det([])]
    result = evaluate_coco(_voc_manifest(), detections)
    assert result["ap"]["cat"] == pytest.approx(0.6, abs=1e-12) and result["ap50"]["cat"] == pytest.approx(1.0)
    assert math.isnan(result["ap"]["dog"]) and result["map"] == pytest.approx(0.6)
    # AR1 looks at the best detection only: the one on the difficult cat, which finds nothing
    assert result["stats"]["AR1"] == 0.0 and result["stats"]["AR10"] == pytest.approx(0.6)
    assert math.isnan(result["stats"]["APl"])  # no large object: COCOeval's -1


def test_no_detections_at_all_give_zero_ap():
    result = evaluate_coco(_voc_manifest(), [_det([]), _det([])])
    assert result["ap"]["cat"] == 0.0 and result["map"] == 0.0


def test_the_evaluator_prints_nothing(coco_file, capsys):
    evaluate_coco(prepare_coco(*coco_file), DETECTIONS)
    assert capsys.readouterr().out == ""


def test_without_an_evaluator_the_error_says_how_to_install_one(monkeypatch):
    for module in ("faster_coco_eval", "pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r'pip install "frcnn\[coco\]"'):
        evaluate_coco(_voc_manifest(), [_det([]), _det([])])


def test_results_for_another_manifest_are_refused():
    with pytest.raises(DataError, match="image id 99"):
        evaluate_coco_results(_voc_manifest(), [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                 "score": 0.5}])


def test_a_coco_id_beside_made_up_ids_that_collide_is_an_error():
    manifest = _voc_manifest()
    manifest.images[1].coco_id = 1  # image 0 gets the made-up id 1 too
    with pytest.raises(DataError, match="000005 and 000007 would both have COCO image id 1"):
        coco_ground_truth(manifest)
