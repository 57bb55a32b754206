"""frcnn eval --report: one self-contained page with every class and the evaluation's AP; its parts on
hand-built cases (cap on the pictures, proposals, COCO numbers, escaping, the thumbnail's crop)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli.data.manifest import ImageRecord, Manifest, read_manifest
from frcnn_cli.evaluate.charts import thin
from frcnn_cli.evaluate.report import ReportMeta, build_report, write_report
from frcnn_cli.evaluate.thumbnails import Box, _window, thumbnail
from frcnn_cli.evaluate.voc import detections_by_class, evaluate_detections


def _offline(html: str) -> None:
    """Nothing on the page is fetched: no URL in a src, href or CSS url(), no external script or style."""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.IGNORECASE)
    assert not re.search(r"url\(|@import|<link[^>]+stylesheet|<script[^>]+src", html, re.IGNORECASE)
    assert all(src.startswith("data:") for src in re.findall(r'<img src="([^"]*)"', html))


def _table_ap(html: str) -> dict[str, float]:
    """class -> AP as the per-class table holds it (its sort value)."""
    table = html[html.index('id="class-table"'):]
    table = table[: table.index("</tbody>")]
    rows = re.findall(r'<tr><th scope="row" data-v="([^"]*)">[^<]*</th><td class="num" data-v="([^"]*)">', table)
    return {name: float(v) for name, v in rows}


def test_report_of_the_tiny_model_is_one_offline_file_with_every_class_and_evals_ap(
        synth_set, tiny_checkpoint, frcnn, tmp_path):
    data = synth_set[1]
    ckpt = tiny_checkpoint()
    report = tmp_path / "new" / "report.html"
    result = frcnn("eval", "--model", ckpt, "--data", data, "--report", report, "--json", "--device", "cpu")
    summary = json.loads(result.stdout)
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # one file, nothing beside it
    html = report.read_text(encoding="utf-8")
    _offline(html)
    assert _table_ap(html) == pytest.approx({k: -1.0 if v is None else v for k, v in summary["ap"].items()},
                                            rel=1e-5, abs=1e-6)
    assert list(_table_ap(html)) == read_manifest(data).classes
    for section in ("summary", "classes", "curves", "proposals", "errors", "confusion", "examples"):
        assert f'<section id="{section}">' in html
    # a curve per class, the error chart, and the recall of the same forward's test proposals against IoU
    assert html.count("<svg") == len(summary["ap"]) + 2
    assert str(ckpt) in html and "model sha256" in html and "manifest hash" in html


def test_report_goes_with_model_evaluation_only(synth_set, frcnn, tmp_path, assert_clean_error):
    result = frcnn("eval", "--proposals", tmp_path / "p.h5", "--data", synth_set[1], "--report",
                   tmp_path / "r.html", ok=False)
    assert_clean_error(result, "--report", "--proposals", out_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
# a hand-built case: two classes, images of flat colours


def _case(tmp_path, n_images=4, classes=("cat", "dog")):
    records = []
    for i in range(n_images):
        Image.new("RGB", (100, 80), (40 * i % 255, 120, 200)).save(tmp_path / f"{i}.png")
        records.append(ImageRecord(f"im{i}", f"{i}.png", 100, 80, [[10.0, 10.0, 50.0, 50.0]], [i % 2], [False]))
    manifest = Manifest("case-test", list(classes), str(tmp_path), records)
    # per image: a hit on its object (score .9) and a background false positive (score .8) of the same class
    detections = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 40.0, 90.0, 70.0]]),
                   "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([i % 2 + 1, i % 2 + 1])}
                  for i in range(n_images)]
    voc = evaluate_detections(detections_by_class(detections, len(classes)), manifest)
    return manifest, detections, voc


def test_pictures_are_capped_and_the_page_says_how_many_exist(tmp_path):
    manifest, detections, voc = _case(tmp_path, n_images=6)  # 3 background FPs per class, nothing missed
    full = build_report(manifest=manifest, detections=detections, voc_result=voc)
    assert full.count("<img ") == 6 and "6 pictures of 6 false positives and 0 missed objects" in full
    # 2 per kind for 2 classes would need 8 pictures: 1 per kind, so 2
    html = build_report(manifest=manifest, detections=detections, voc_result=voc, per_class=2, max_examples=3)
    assert html.count("<img ") == 2 and "2 pictures of 6 false positives" in html
    assert "at most 3 pictures in all" in html
    assert html.count("<figcaption>background: cat 0.80") == html.count("<figcaption>background: dog 0.80") == 1
    one = build_report(manifest=manifest, detections=detections, voc_result=voc, max_examples=1)
    assert one.count("<img ") == 1 and one.count("<figcaption>background: cat 0.80") == 1
    assert "not shown: the cap on pictures was reached" in one


def test_proposals_coco_and_meta_are_shown(tmp_path):
    manifest, detections, voc = _case(tmp_path)
    # one proposal per image at IoU 1 with its object, one elsewhere: recall 1 at every IoU for N >= 1
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 5.0, 5.0]])] * 4
    coco = {"AP": 0.4321, "AP50": 0.75, "per_class": {"cat": 0.5, "dog": 0.25}}
    meta = ReportMeta(model="m.pt", model_sha256="ab" * 32, data="d.json", manifest_hash="cd" * 32,
                      settings={"metric": "11point", "device": "cpu"}, date="2025-01-02T03:04:05", seconds=12.34)
    path = write_report(tmp_path / "r.html", manifest=manifest, detections=detections, voc_result=voc,
                        proposals=proposals, coco=coco, meta=meta)
    html = path.read_text(encoding="utf-8")
    assert "recall vs IoU" in html and '<tr><th scope="row">100</th><td class="num">100.0</td></tr>' in html
    assert "43.2<small>COCO AP" in html and "<th>AP50</th>" in html and ">COCO AP</th>" in html
    assert '<td class="num" data-v="0.25">25.0</td>' in html  # dog's COCO AP in its row
    for text in ("ab" * 32, "cd" * 32, "metric = 11point, device = cpu", "2025-01-02T03:04:05", "12.3 s"):
        assert text in html
    # AP: each class has a hit then a background FP per image: precision 1 up to recall 1 -> AP 1
    assert voc["map"] == pytest.approx(1.0) and _table_ap(html) == {"cat": 1.0, "dog": 1.0}


def test_detections_that_are_not_the_evaluations_are_refused(tmp_path):
    manifest, detections, voc = _case(tmp_path)
    other = dict(voc, ap={"cat": 0.5, "dog": 1.0})
    with pytest.raises(ValueError, match="'cat': AP 0.5 in the VOC result but 1.0"):
        build_report(manifest=manifest, detections=detections, voc_result=other)


def test_names_from_the_manifest_are_escaped(tmp_path):
    hostile = '<img src=x onerror="alert(1)">'
    manifest, detections, voc = _case(tmp_path, classes=("cat", hostile))
    html = build_report(manifest=manifest, detections=detections, voc_result=voc)
    assert hostile not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    _offline(html)


def test_thumbnail_crops_around_the_box_and_draws_it(tmp_path):
    # box 20x20 in a 100x100 image: grown to 96 (MIN_CONTEXT) around its centre, kept inside the image
    assert _window((40, 40, 60, 60), 100, 100) == (2, 2, 98, 98)
    assert _window((0, 0, 10, 10), 300, 200) == (0, 0, 96, 96)  # at a corner: shifted inside
    assert _window((0, 0, 300, 200), 300, 200) == (0, 0, 300, 200)  # a large box: the whole image
    Image.new("RGB", (100, 100), (255, 255, 255)).save(tmp_path / "white.png")
    uri = thumbnail(tmp_path / "white.png", Box((40.0, 40.0, 60.0, 60.0), "cat", 0.9), classes=["cat"])
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    assert image.size == (200, 200)  # 96 px scaled by 200/96
    scale = 200 / 96
    left = round((40 - 2) * scale)  # the box's left edge, 3 px wide, in the class colour (230, 25, 75)
    pixel = np.asarray(image)[round((50 - 2) * scale), left + 1]
    assert np.abs(pixel.astype(int) - [230, 25, 75]).max() < 40


def test_long_curves_are_thinned_keeping_both_ends():
    x, y = thin(np.linspace(0, 1, 10_001), np.linspace(1, 0, 10_001), max_points=300)
    assert len(x) == 300 and x[0] == 0.0 and x[-1] == 1.0 and y[-1] == 0.0
    x, y = thin([0.0, np.nan, 1.0], [1.0, 0.5, 0.0])
    assert x.tolist() == [0.0, 1.0]


def test_recall_of_proposals_in_memory_is_the_stores():
    from test_recall import MANIFEST, PROPOSALS

    from frcnn_cli.evaluate.recall import proposal_recall, proposal_recall_of_boxes

    boxes = [PROPOSALS[i] for i in range(3)]
    assert proposal_recall_of_boxes(boxes, MANIFEST, top_ns=(1, 2, 3)) == \
        proposal_recall(PROPOSALS, MANIFEST, top_ns=(1, 2, 3))
    assert proposal_recall_of_boxes(boxes, MANIFEST, top_ns=(2,))["average_recall"][2] == pytest.approx(14 / 30)
    with pytest.raises(ValueError, match="2 images of proposals for a manifest of 3 images"):
        proposal_recall_of_boxes(boxes[:2], MANIFEST)
