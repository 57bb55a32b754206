"""TIDE-style error kinds and their AP cost, on a hand-built case whose answers are worked out below."""

from __future__ import annotations

import numpy as np
import pytest

from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.evaluate.error_analysis import FP_KINDS, classify_detections, confusion_table, kind_counts
from frcnn_cli.evaluate.error_fixes import delta_ap
from frcnn_cli.evaluate.voc import evaluate_detections


def _rec(image_id, boxes=(), labels=(), difficult=None):
    return ImageRecord(image_id, f"{image_id}.png", 100, 100, [list(map(float, b)) for b in boxes], list(labels),
                       difficult if difficult is not None else [False] * len(boxes))


CAT, DOG = 0, 1
MANIFEST = Manifest("case", ["cat", "dog"], "/", [
    _rec("0", [[0, 0, 10, 10], [50, 50, 70, 70]], [CAT, DOG]),  # A (cat), B (dog)
    _rec("1", [[0, 0, 20, 20], [60, 60, 80, 80]], [CAT, CAT], [False, True]),  # C, and E: difficult
    _rec("2", [[10, 10, 30, 30]], [DOG]),  # D: no detection comes near it
    _rec("3"),  # no objects
    _rec("4", [[0, 0, 10, 10]], [CAT]),  # F
    _rec("5", [[0, 0, 10, 10]], [DOG]),  # G
])
#  cat detections, by score:                             devkit     kind
#  c1 .90 img0 [0,0,10,10]   IoU 1 with A                TP
#  c2 .80 img0 [0,0,10,9]    IoU .9 with A (taken)       FP         duplicate
#  c3 .70 img1 [0,0,20,8]    IoU .4 with C               FP         localisation -> C
#  c4 .60 img0 [50,50,70,70] IoU 1 with dog B            FP         confusion -> B
#  c5 .50 img3 [0,0,10,10]   image without objects       FP         background
#  c6 .40 img1 [60,60,80,80] IoU 1 with difficult E      ignored
#  c7 .30 img0 [50,50,70,58] IoU .4 with dog B only      FP         both
#  c9 .25 img4 [0,0,10,10]   IoU 1 with F                TP
#  c8 .20 img1 [0,0,20,4]    IoU .2 with C               FP         localisation -> C (c3 scores higher)
#  dog: d1 .95 img2 [60,60,90,90] (background), d2 .50 img5 = G (TP); B found by no dog; D missed.
CAT_DETS = [(0, .9, [0, 0, 10, 10]), (0, .8, [0, 0, 10, 9]), (1, .7, [0, 0, 20, 8]), (0, .6, [50, 50, 70, 70]),
            (3, .5, [0, 0, 10, 10]), (1, .4, [60, 60, 80, 80]), (0, .3, [50, 50, 70, 58]),
            (4, .25, [0, 0, 10, 10]), (1, .2, [0, 0, 20, 4])]
DOG_DETS = [(2, .95, [60, 60, 90, 90]), (5, .5, [0, 0, 10, 10])]


def _class_dets(rows, shuffle=None):
    rows = [rows[i] for i in shuffle] if shuffle is not None else rows
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows], float))


DETS = {CAT: _class_dets(CAT_DETS, shuffle=[3, 8, 0, 5, 1, 7, 2, 6, 4]), DOG: _class_dets(DOG_DETS)}


@pytest.fixture(scope="module")
def classified():
    return classify_detections(DETS, MANIFEST)


def test_each_false_positive_gets_tides_kind_and_target(classified):
    fps = classified.false_positives
    cat = np.nonzero(fps.cls == CAT)[0]  # in descending score: c2 c3 c4 c5 c7 c8
    assert fps.score[cat].tolist() == [.8, .7, .6, .5, .3, .2]
    assert [FP_KINDS[k] for k in fps.kind[cat]] == ["duplicate", "localisation", "confusion", "background",
                                                   "both", "localisation"]
    targets = classified.objects.boxes[fps.target[cat[[1, 2, 5]]]].tolist()
    assert targets == [[0, 0, 20, 20], [50, 50, 70, 70], [0, 0, 20, 20]]  # C, B, C
    assert (fps.target[cat[[0, 3, 4]]] == -1).all()
    assert fps.iou[cat] == pytest.approx([.9, .4, 1.0, 0.0, .4, .2])
    dog = np.nonzero(fps.cls == DOG)[0]
    assert [FP_KINDS[k] for k in fps.kind[dog]] == ["background"]


def test_counts_per_class_and_missed_objects(classified):
    counts = kind_counts(classified)
    assert counts["cat"] == {"detections": 9, "tp": 2, "fp": 6, "ignored": 1, "npos": 3, "localisation": 2,
                             "confusion": 1, "duplicate": 1, "background": 1, "both": 1, "missed": 0}
    # B is not found but a confusion error aims at it ("usable"), so only D is missed
    assert counts["dog"] == {"detections": 2, "tp": 1, "fp": 1, "ignored": 0, "npos": 3, "localisation": 0,
                             "confusion": 0, "duplicate": 0, "background": 1, "both": 0, "missed": 1}


def test_confusion_table_rows_are_objects_columns_detections(classified):
    #                 cat dog missed
    assert confusion_table(classified).tolist() == [[2, 0, 0],  # cat: c1, c9
                                                    [1, 1, 1],  # dog: B detected as cat (c4), G, D missed
                                                    [1, 1, 0]]  # background: c5 (cat), d1 (dog)


def test_unfixed_ap_is_the_evaluations(classified):
    fixes = delta_ap(classified)
    voc = evaluate_detections(DETS, MANIFEST)
    assert fixes["ap"] == pytest.approx(voc["ap"]) and fixes["map"] == pytest.approx(voc["map"])
    # cat: rec 1/3 up to c9, then 2/3 at precision 2/7: (4 * 1 + 3 * 2/7) / 11; dog: 4 points at 1/2
    assert fixes["ap"] == pytest.approx({"cat": 34 / 77, "dog": 2 / 11})


def test_fixing_each_kind_rescoring_as_tide(classified):
    d = delta_ap(classified)["delta_ap"]
    # localisation: c3 becomes a TP for C (c8 aims at C too, scores lower: removed):
    #   precision 1, 2/3 at recall 2/3, 3/7 at 1 -> (4 + 3 * 2/3 + 4 * 3/7) / 11 = 54/77
    assert d["localisation"] == pytest.approx({"cat": 54 / 77 - 34 / 77, "dog": 0.0})
    # confusion: c4 leaves cat (one FP fewer before c9: 2/6) and becomes a dog TP at .6, before d2:
    #   dog precision 1/2 at recall 1/3, 2/3 at 2/3 -> 7 * (2/3) / 11
    assert d["confusion"] == pytest.approx({"cat": 1 / 77, "dog": 14 / 33 - 2 / 11})
    assert d["duplicate"] == pytest.approx({"cat": 1 / 77, "dog": 0.0})  # c2 gone: c9 at 2/6
    assert d["both"] == pytest.approx({"cat": 1 / 77, "dog": 0.0})  # c7 gone
    assert d["background"] == pytest.approx({"cat": 1 / 77, "dog": 4 / 11 - 2 / 11})  # c5 and d1 gone
    # missed: D leaves the dog positives (3 -> 2): d2 at recall 1/2, precision 1/2 -> 6 * (1/2) / 11
    assert d["missed"] == pytest.approx({"cat": 0.0, "dog": 3 / 11 - 2 / 11})
    # every FP removed: cat precision 1 to recall 2/3 (7 points), dog 1 at 1/3 (4 points)
    assert d["false_positives"] == pytest.approx({"cat": 7 / 11 - 34 / 77, "dog": 4 / 11 - 2 / 11})
    # every unfound object removed: cat 2 positives (6 points at 1, 5 at 2/7), dog 1 (all 11 at 1/2)
    assert d["false_negatives"] == pytest.approx({"cat": 52 / 77 - 34 / 77, "dog": 0.5 - 2 / 11})


def test_map_gain_is_the_mean_of_the_class_gains(classified):
    fixes = delta_ap(classified)
    for fix, gain in fixes["delta_map"].items():
        assert gain == pytest.approx(sum(fixes["delta_ap"][fix].values()) / 2), fix
    assert fixes["delta_map"]["confusion"] == pytest.approx((1 / 77 + 14 / 33 - 2 / 11) / 2)


def test_no_detections_at_all_every_object_missed():
    classified = classify_detections({}, MANIFEST)
    counts = kind_counts(classified)
    assert counts["cat"]["missed"] == 3 and counts["dog"]["missed"] == 3
    assert confusion_table(classified)[:, 2].tolist() == [3, 3, 0]
    fixes = delta_ap(classified)
    assert fixes["map"] == 0.0 and fixes["delta_map"]["missed"] == 0.0  # no positives left: AP 0 (tidecv)


def test_area_metric_and_a_class_without_positives():
    manifest = Manifest("m", ["cat", "dog"], "/", [_rec("0", [[0, 0, 10, 10]], [CAT])])
    dets = {CAT: _class_dets([(0, .9, [0, 0, 10, 10])]), DOG: _class_dets([(0, .8, [0, 0, 10, 10])])}
    classified = classify_detections(dets, manifest)
    assert [FP_KINDS[k] for k in classified.false_positives.kind] == ["confusion"]
    fixes = delta_ap(classified, metric="area")
    assert fixes["ap"]["cat"] == 1.0 and np.isnan(fixes["ap"]["dog"]) and fixes["map"] == 1.0
    assert fixes["delta_map"]["confusion"] == 0.0  # the cat was found already: the dog detection is removed
