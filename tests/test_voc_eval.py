"""VOC AP: the devkit's rules on hand-computed cases, a devkit-style reference loop, result files, speed."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.errors import DataError
from frcnn_cli.evaluate.voc import (
    detections_by_class,
    evaluate_detections,
    pair_iou,
    precision_recall,
    read_result_files,
    voc_ap,
    write_result_files,
)


def _rec(image_id, boxes=(), labels=(), difficult=None):
    boxes = [list(map(float, b)) for b in boxes]
    difficult = list(difficult) if difficult is not None else [False] * len(boxes)
    return ImageRecord(id=image_id, path=f"{image_id}.jpg", width=100, height=100, boxes=boxes,
                       labels=list(labels), difficult=difficult)


def _dets(rows):
    """rows of (image index, score, box) -> (image[D], scores[D], boxes[D, 4])."""
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64),
            np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4))


@pytest.fixture
def hand_case():
    # cat (0): img0 has A (normal) and B (difficult), img1 has C, img2 has no objects.
    # bird (1): one object in img1, never detected. fish (2): no objects, no detections.
    manifest = Manifest(name="hand", classes=["cat", "bird", "fish"], root="/data", images=[
        _rec("img0", [[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0], [False, True]),
        _rec("img1", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1]),
        _rec("img2"),
    ])
    cat = _dets([
        (0, 0.9, [0, 0, 10, 10]),  # TP on A
        (0, 0.8, [0, 0, 10, 10]),  # duplicate of A -> FP
        (0, 0.7, [20, 0, 30, 10]),  # on the difficult B -> ignored
        (2, 0.6, [0, 0, 10, 10]),  # image without objects -> FP
        (1, 0.5, [0, 0, 10, 10]),  # TP on C
    ])
    return manifest, {0: cat}


def test_duplicate_difficult_and_empty_image_give_the_devkit_curve(hand_case):
    manifest, dets = hand_case
    rec, prec, npos = precision_recall(dets, manifest)["cat"]
    # npos = 2 (B is difficult). cum tp 1,1,1,1,2; cum fp 0,1,1,2,2 (the ignored row adds to neither).
    assert npos == 2
    np.testing.assert_allclose(rec, [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 0.5, 1 / 3, 0.5])


def test_11point_and_area_metrics_on_the_same_case(hand_case):
    manifest, dets = hand_case
    r11 = evaluate_detections(dets, manifest, metric="11point")
    # 11-point: t = 0..0.5 (6 points) max precision 1; t = 0.6..1.0 (5 points) 0.5 -> 8.5 / 11.
    assert r11["ap"]["cat"] == pytest.approx(8.5 / 11)
    # area: envelope [1, 1, .5, .5, .5, .5, 0]; recall steps 0->.5 at precision 1, .5->1 at .5 -> 0.75.
    area = evaluate_detections(dets, manifest, metric="area")
    assert area["ap"]["cat"] == pytest.approx(0.75)
    # bird: a class with positives but no detections -> AP 0; fish: no positives -> NaN, not in mAP.
    assert r11["ap"]["bird"] == 0.0 and area["ap"]["bird"] == 0.0
    assert math.isnan(r11["ap"]["fish"]) and r11["npos"] == {"cat": 2, "bird": 1, "fish": 0}
    assert r11["map"] == pytest.approx((8.5 / 11 + 0.0) / 2)
    assert area["map"] == pytest.approx(0.375)


def test_a_duplicate_does_not_fall_back_to_the_second_best_object():
    # g1 = [0,0,10,10], g2 = [0,0,10,12] (IoU 100/120 with g1). Both detections' best is g1 (IoU 1 > .83):
    # the first is TP, the second a duplicate FP although g2 is free.
    manifest = Manifest("m", ["a"], "/", [_rec("i", [[0, 0, 10, 10], [0, 0, 10, 12]], [0, 0])])
    dets = {0: _dets([(0, 0.9, [0, 0, 10, 10]), (0, 0.8, [0, 0, 10, 10])])}
    rec, prec, _ = precision_recall(dets, manifest)["a"]
    np.testing.assert_allclose(rec, [0.5, 0.5])
    np.testing.assert_allclose(prec, [1.0, 0.5])


def test_iou_exactly_half_is_a_false_positive():
    # [0,0,10,10] vs [0,0,20,10]: 100 / 200 = 0.5, not > 0.5.
    manifest = Manifest("m", ["a"], "/", [_rec("i", [[0, 0, 20, 10]], [0])])
    dets = {0: _dets([(0, 0.9, [0, 0, 10, 10]), (0, 0.8, [0, 0, 10.5, 10])])}  # second: 105/200 > .5
    rec, prec, _ = precision_recall(dets, manifest)["a"]
    np.testing.assert_allclose(rec, [0.0, 1.0])
    np.testing.assert_allclose(prec, [0.0, 0.5])


def test_ties_in_score_keep_the_input_order():
    # Same score 0.5: a miss then a hit -> prec [0, .5]: area AP 0.5, 11-point 0.5.
    manifest = Manifest("m", ["a"], "/", [_rec("i", [[0, 0, 10, 10]], [0])])
    miss, hit = (0, 0.5, [50, 50, 60, 60]), (0, 0.5, [0, 0, 10, 10])
    first_miss = {0: _dets([miss, hit])}
    np.testing.assert_allclose(precision_recall(first_miss, manifest)["a"][1], [0.0, 0.5])
    assert evaluate_detections(first_miss, manifest, metric="area")["ap"]["a"] == pytest.approx(0.5)
    assert evaluate_detections(first_miss, manifest, metric="11point")["ap"]["a"] == pytest.approx(0.5)
    # The other input order: the hit comes first -> prec [1, .5] -> AP 1.
    assert evaluate_detections({0: _dets([hit, miss])}, manifest, metric="area")["ap"]["a"] == 1.0


def test_voc_ap_by_hand():
    rec, prec = np.array([0.25, 0.45, 0.45, 0.85]), np.array([1.0, 0.5, 2 / 3, 0.5])
    # 11-point: t=0,.1,.2 -> 1; t=.3,.4 -> 2/3; t=.5..0.8 -> .5; t=.9, 1 -> 0  => (3 + 4/3 + 2) / 11 = 19/33
    assert voc_ap(rec, prec, "11point") == pytest.approx(19 / 33)
    # area: envelope at recalls .25, .45, .85 is 1, 2/3, .5 -> .25*1 + .2*(2/3) + .4*.5 = 0.58333...
    assert voc_ap(rec, prec, "area") == pytest.approx(0.25 + 0.2 * 2 / 3 + 0.2)
    assert voc_ap(np.zeros(0), np.zeros(0), "area") == 0.0
    with pytest.raises(ValueError):
        voc_ap(rec, prec, "101point")


def _devkit_iou(bb, bbgt):
    """voc_eval.py's overlap on 1-based inclusive boxes: one detection against [G, 4]."""
    ixmin, iymin = np.maximum(bbgt[:, 0], bb[0]), np.maximum(bbgt[:, 1], bb[1])
    ixmax, iymax = np.minimum(bbgt[:, 2], bb[2]), np.minimum(bbgt[:, 3], bb[3])
    iw, ih = np.maximum(ixmax - ixmin + 1.0, 0.0), np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + \
        (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0) - inters
    return inters / uni


def _to_voc(boxes):
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def test_plain_iou_equals_the_devkit_plus_one_iou_in_voc_pixels():
    ours = np.array([[0, 0, 10, 10], [4, 2, 17, 9], [100, 100, 101, 101], [5, 5, 50, 40], [0, 0, 3, 3]],
                    dtype=np.float64)
    gt = np.array([[2, 3, 12, 14], [0, 0, 10, 10], [100, 100, 102, 101], [60, 5, 80, 40], [3, 3, 9, 9]],
                  dtype=np.float64)
    got = pair_iou(ours, gt)
    want = np.array([_devkit_iou(b, g[None])[0] for b, g in zip(_to_voc(ours), _to_voc(gt))])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # [4,2,17,9] vs [0,0,10,10]: 6*7 / (13*7 + 100 - 42); the pixel-wide pair 1 / 2; disjoint and touching 0.
    assert got[1] == pytest.approx(42 / 149) and got[2] == 0.5 and got[3] == 0.0 and got[4] == 0.0


def _devkit_ap(dets_k, manifest, k, metric):
    """voc_eval.py's loop, in VOC pixels, with a stable sort."""
    recs = {}
    npos = 0
    for i, r in enumerate(manifest.images):
        sel = [j for j, lab in enumerate(r.labels) if lab == k]
        bbox = _to_voc([r.boxes[j] for j in sel]).reshape(-1, 4)
        diff = np.array([r.difficult[j] for j in sel], dtype=bool)
        npos += int((~diff).sum())
        recs[i] = {"bbox": bbox, "difficult": diff, "det": [False] * len(sel)}
    image_ids, confidence, bb_all = dets_k
    sorted_ind = np.argsort(-confidence, kind="stable")
    bb_all, image_ids = _to_voc(bb_all)[sorted_ind], image_ids[sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        r = recs[int(image_ids[d])]
        bb, ovmax, bbgt = bb_all[d], -np.inf, r["bbox"]
        if bbgt.size > 0:
            overlaps = _devkit_iou(bb, bbgt)
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, metric)


def _random_case(rng, n_images, n_classes):
    images = []
    for i in range(n_images):
        g = int(rng.integers(0, 5))
        xy = rng.integers(0, 60, (g, 2))
        wh = rng.integers(5, 40, (g, 2))
        images.append(_rec(f"{i:06d}", np.concatenate([xy, xy + wh], 1).tolist(),
                           rng.integers(0, n_classes, g).tolist(), (rng.random(g) < 0.2).tolist()))
    manifest = Manifest("rand", [f"c{k}" for k in range(n_classes)], "/", images)
    dets = {}
    for k in range(n_classes):
        rows = []
        for i, r in enumerate(images):
            for b, lab in zip(r.boxes, r.labels):
                if lab == k:  # 0..2 jittered copies of each object (duplicates and near misses)
                    for _ in range(int(rng.integers(0, 3))):
                        rows.append((i, rng.random(), (np.array(b) + rng.integers(-4, 5, 4)).tolist()))
            for _ in range(int(rng.integers(0, 3))):  # background false positives
                xy = rng.integers(0, 60, 2)
                rows.append((i, rng.random(), np.concatenate([xy, xy + rng.integers(5, 40, 2)]).tolist()))
        image, scores, boxes = _dets(rows)
        dets[k] = (image, np.round(scores, 1), boxes)  # rounded scores: many ties
    return manifest, dets


@pytest.mark.parametrize("metric", ["11point", "area"])
def test_vectorised_evaluator_equals_a_devkit_style_loop(metric):
    rng = np.random.default_rng(7)
    manifest, dets = _random_case(rng, 50, 3)
    result = evaluate_detections(dets, manifest, metric=metric)
    for k, name in enumerate(manifest.classes):
        assert result["ap"][name] == pytest.approx(_devkit_ap(dets[k], manifest, k, metric), abs=1e-12)
    assert 0.1 < result["map"] < 0.9


def test_result_files_round_trip(tmp_path, hand_case):
    manifest, dets = hand_case
    manifest.images[2].id = "name with spaces"
    paths = write_result_files(tmp_path, dets, manifest, "test")
    assert [p.name for p in paths] == ["comp4_det_test_cat.txt", "comp4_det_test_bird.txt",
                                       "comp4_det_test_fish.txt"]
    lines = paths[0].read_text().splitlines()
    # ours [0, 0, 10, 10] is VOC xmin=1, ymin=1, xmax=10, ymax=10
    assert lines[0] == "img0 0.900000 1.000 1.000 10.000 10.000"
    assert lines[3] == "name%20with%20spaces 0.600000 1.000 1.000 10.000 10.000"
    assert paths[1].read_text() == ""
    back = read_result_files(tmp_path, manifest, "test")
    for a, b in zip(back[0], dets[0]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(back[1][0]) == 0
    expected = evaluate_detections(dets, manifest)["ap"]
    assert evaluate_detections(back, manifest)["ap"] == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("image_id, written", [
    ("IMG 0001", "IMG%200001"), ("tab\there", "tab%09here"), ("two\nlines", "two%0Alines"),
    ("50% off", "50%25%20off"), ("ideographic\u3000space", "ideographic%E3%80%80space"), ("2008_000002", None)])
def test_ids_with_whitespace_are_written_escaped_as_six_fields_and_read_back(tmp_path, hand_case, image_id, written):
    """The devkit reads ``%s %f %f %f %f %f``: a raw space made 7 fields, a newline split the line."""
    manifest, dets = hand_case
    manifest.images[0].id = image_id
    path = write_result_files(tmp_path, dets, manifest, "test")[0]
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split()) == 6 for line in lines)
    assert lines[0].split()[0] == (written or image_id)
    back = read_result_files(tmp_path, manifest, "test")
    np.testing.assert_array_equal(back[0][0], dets[0][0])


def test_a_class_name_too_long_for_a_file_name_gets_result_and_plot_files_that_fit(tmp_path, hand_case):
    """A class of 251 bytes (legal in a manifest) made `eval --out` fail after the whole inference with
    "File name too long; free some space or choose another output": its comp4_det_test_<class>.txt is 270 bytes."""
    from frcnn_cli.evaluate.plots import plot_file_name
    from frcnn_cli.output_paths import name_bytes

    manifest, dets = hand_case
    long_names = ["é" * 125 + "x", "é" * 125 + "y"]  # 251 bytes each, the first 250 shared
    manifest.classes[:2] = long_names
    paths = write_result_files(tmp_path, dets, manifest, "test")
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert all(name_bytes(p.name) <= limit for p in paths) and len({p.name for p in paths}) == 3
    assert paths[2].name == "comp4_det_test_fish.txt"  # names that fit are the devkit's, unchanged
    back = read_result_files(tmp_path, manifest, "test")
    np.testing.assert_array_equal(back[0][0], dets[0][0])
    plots = [plot_file_name(name, tmp_path) for name in long_names]
    assert all(name_bytes(n) <= limit and n.endswith(".png") for n in plots) and plots[0] != plots[1]


def test_ap_is_never_above_one_and_exact_where_the_devkit_sum_is_not():
    """The devkit's running sum of p / 11 gives 1.0000000000000002 and 0.20000000000000004."""
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 1.0])
    assert voc_ap(rec, prec, "11point") == 1.0 and voc_ap(rec, prec, "area") == 1.0
    assert voc_ap(np.array([1.0]), np.array([0.2]), "11point") == 0.2


def test_bad_result_files_name_file_and_line(tmp_path, hand_case):
    manifest, dets = hand_case
    paths = write_result_files(tmp_path, dets, manifest, "test")
    paths[0].write_text("img0 0.9 1 1 10 10\nimg9 0.5 1 1 10 10\n")
    with pytest.raises(DataError, match=r"comp4_det_test_cat\.txt, line 2: image 'img9'"):
        read_result_files(tmp_path, manifest, "test")
    paths[0].write_text("img0 0.9 1 1 ten 10\n")
    with pytest.raises(DataError, match="line 1: expected"):
        read_result_files(tmp_path, manifest, "test")
    paths[0].write_text("img0 0.9 1 1 10 10\n")
    paths[1].unlink()
    with pytest.raises(DataError, match="comp4_det_test_bird.txt for class 'bird' is missing"):
        read_result_files(tmp_path, manifest, "test")


def test_a_large_crowded_case_equals_the_devkit_loop_class_by_class():
    """Many images, 100 detections each near random objects (the speed of this size is measured in
    benchmarks/eval_speed.py, not asserted here): the vectorised matching equals voc_eval.py's loop."""
    rng = np.random.default_rng(0)
    n, k = 400, 4
    g = 3 * n
    img_of = np.repeat(np.arange(n), 3)
    xy = rng.uniform(0, 300, (g, 2))
    gt = np.concatenate([xy, xy + rng.uniform(20, 200, (g, 2))], 1)
    lab = rng.integers(0, k, g)
    images = [_rec(str(i), gt[3 * i:3 * i + 3].tolist(), lab[3 * i:3 * i + 3].tolist()) for i in range(n)]
    manifest = Manifest("big", [f"c{c}" for c in range(k)], "/", images)
    d = 100 * n
    src = rng.integers(0, g, d)  # each detection near a random object (same image), random class
    boxes = gt[src] + rng.normal(0, 8, (d, 4))
    cls, scores = rng.integers(0, k, d), rng.random(d).round(3)
    dets = {c: (img_of[src][cls == c], scores[cls == c], boxes[cls == c]) for c in range(k)}
    result = evaluate_detections(dets, manifest)
    for c, name in enumerate(manifest.classes):
        assert result["ap"][name] == pytest.approx(_devkit_ap(dets[c], manifest, c, "11point"), abs=1e-12)
    assert 0.0 < result["map"] < 1.0


def test_detector_outputs_are_grouped_by_class(hand_case):
    manifest, dets = hand_case
    results = [  # labels 1..K as the model gives them; manifest order
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10]]),
         "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])},
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 5, 5]]), "scores": torch.tensor([0.5, 0.3]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.6]),
         "labels": torch.tensor([1])},
    ]
    grouped = detections_by_class(results, 3)
    assert grouped[0][0].tolist() == [0, 0, 0, 1, 2] and grouped[1][0].tolist() == []
    assert grouped[2][0].tolist() == [1] and grouped[2][2].tolist() == [[1, 1, 5, 5]]
    # the same detections as the hand case (in another input order, no ties): the same AP
    assert evaluate_detections(grouped, manifest)["ap"]["cat"] == pytest.approx(8.5 / 11)
    assert detections_by_class([], 2)[1][2].shape == (0, 4)
