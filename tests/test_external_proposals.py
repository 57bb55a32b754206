"""External proposals (Selective Search, EdgeBoxes, any tool) into the proposal store: ``frcnn prepare proposals``
(data/proposal_files.py, data/external_proposals.py), and Fast R-CNN trained on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_CLI
from mat_files import Cell, write_v5, write_v73

from frcnn_cli.cli.main import cli
from frcnn_cli.data.external_proposals import clean_boxes, convert_boxes, rank_scores
from frcnn_cli.data.manifest import ImageRecord, Manifest, read_manifest, write_manifest
from frcnn_cli.data.proposal_store import ProposalStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# conversion, by hand


def test_rcnn_boxes_are_1_based_inclusive_y1_x1_y2_x2():
    # R-CNN's [y1 x1 y2 x2] = [21 11 40 30]: pixels 11..30 across, 21..40 down -> frcnn's [10, 20, 30, 40]
    np.testing.assert_array_equal(convert_boxes(np.array([[21.0, 11, 40, 30]]), "yxyx1"), [[10, 20, 30, 40]])
    np.testing.assert_array_equal(convert_boxes(np.array([[11.0, 21, 30, 40]]), "xyxy1"), [[10, 20, 30, 40]])
    np.testing.assert_array_equal(convert_boxes(np.array([[10.0, 20, 30, 40]]), "xyxy"), [[10, 20, 30, 40]])
    np.testing.assert_array_equal(convert_boxes(np.array([[10.0, 20, 20, 20]]), "xywh"), [[10, 20, 30, 40]])
    np.testing.assert_array_equal(convert_boxes(np.array([[11.0, 21, 20, 20]]), "xywh1"), [[10, 20, 30, 40]])


def test_rank_scores_keep_the_files_order():
    np.testing.assert_array_equal(rank_scores(4), np.array([1.0, 0.75, 0.5, 0.25], dtype=np.float32))


def test_cleaning_clips_drops_empty_and_duplicate_boxes_keeps_the_order_and_cuts_to_top_n():
    rcnn = np.array([[21.0, 11, 40, 30],   # [10, 20, 30, 40]
                     [1, 1, 80, 100],      # the whole 100 x 80 image
                     [21, 11, 40, 30],     # a duplicate of the first: dropped
                     [1, 90, 80, 120],     # [89, 0, 120, 80]: 20 px out, clipped to [89, 0, 100, 80]
                     [10, 101, 20, 110]])  # [100, 9, 110, 20]: nothing left inside: dropped
    boxes, scores, counts = clean_boxes(convert_boxes(rcnn, "yxyx1"), None, 100, 80, top_n=None)
    np.testing.assert_array_equal(boxes, [[10, 20, 30, 40], [0, 0, 100, 80], [89, 0, 100, 80]])
    np.testing.assert_allclose(scores, [1, 2 / 3, 1 / 3], rtol=1e-6)
    assert (counts.read, counts.far_outside, counts.empty, counts.duplicates, counts.kept) == (5, 2, 1, 1, 3)
    boxes, scores, counts = clean_boxes(convert_boxes(rcnn, "yxyx1"), None, 100, 80, top_n=2)
    np.testing.assert_array_equal(boxes, [[10, 20, 30, 40], [0, 0, 100, 80]])
    np.testing.assert_array_equal(scores, [1.0, 0.5])  # rank scores of the boxes kept
    assert counts.over_top_n == 1


def test_a_files_own_scores_order_the_boxes_ties_in_file_order():
    boxes = np.array([[0.0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 12, 12], [3, 3, 13, 13]])
    out, scores, _ = clean_boxes(boxes, np.array([0.2, 0.9, 0.2, 0.5]), 50, 50, top_n=3)
    np.testing.assert_array_equal(out[:, 0], [1, 3, 0])
    np.testing.assert_allclose(scores, [0.9, 0.5, 0.2])


# --------------------------------------------------------------------------------------------------
# prepare proposals, from every kind of file

IDS = ["000001", "000002", "000003"]
SIZES = [(100, 80), (60, 60), (50, 40)]  # width, height
RCNN_ROWS = [np.array([[21.0, 11, 40, 30], [1, 1, 80, 100], [2, 3, 20, 30]]),  # [10 20 30 40], [0 0 100 80], ...
             np.array([[5.0, 5, 50, 50]]),
             np.zeros((0, 4))]
EXPECTED = [np.array([[10.0, 20, 30, 40], [0, 0, 100, 80], [2, 1, 30, 20]]),
            np.array([[4.0, 4, 50, 50]]),
            np.zeros((0, 4))]


@pytest.fixture()
def manifest(tmp_path):
    records = [ImageRecord(i, f"JPEGImages/{i}.jpg", w, h, [], [], []) for i, (w, h) in zip(IDS, SIZES)]
    path = tmp_path / "voc07-test.json"
    write_manifest(path, Manifest("voc2007-test", ["cat", "dog"], str(tmp_path), records))
    return path


def _check_store(path, expected=EXPECTED, top_n=None):
    with ProposalStore(path) as store:
        for i, want in enumerate(expected):
            boxes, scores = store.get(i)
            want = want[:top_n]
            np.testing.assert_array_equal(boxes.numpy(), want.astype(np.float32).reshape(-1, 4))
            np.testing.assert_allclose(scores.numpy(), rank_scores(len(want)))
        return dict(store.attrs)


def _file(tmp_path, kind):
    """The same proposals as each kind of file; a few images more than the manifest has."""
    ids, rows = [*IDS, "999999"], [*RCNN_ROWS, np.array([[1.0, 1, 2, 2]])]
    if kind.startswith("mat"):
        variables = {"images": Cell(ids), "boxes": Cell(rows, row=True)}
        if kind == "mat-v73":
            return write_v73(tmp_path / "ss.mat", variables)
        return write_v5(tmp_path / "ss.mat", variables, compressed=kind == "mat-v7")
    xyxy = [convert_boxes(r, "yxyx1") if r.size else r for r in rows]
    if kind == "json-object":
        path = tmp_path / "ss.json"
        path.write_text(json.dumps({i: b.tolist() for i, b in zip(ids, xyxy)}))
    elif kind == "json-list":
        path = tmp_path / "ss.json"
        path.write_text(json.dumps([{"id": i, "boxes": b.tolist()} for i, b in zip(ids, xyxy)]))
    else:
        path = tmp_path / "ss.csv"
        lines = ["image_id,x1,y1,x2,y2"] + [f"{i},{','.join(f'{v:g}' for v in box)}"
                                            for i, b in zip(ids, xyxy) for box in b]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["mat-v7", "mat-v6", "mat-v73", "json-object", "json-list"])
def test_every_kind_of_file_becomes_the_same_proposal_store(tmp_path, manifest, kind):
    out = tmp_path / "ss.h5"
    result = _run("prepare", "proposals", "--from", _file(tmp_path, kind), "--data", manifest, "--out", out)
    assert result.exit_code == 0, result.output
    attrs = _check_store(out)
    assert (attrs["source"], attrs["scores"]) == ("external", "rank")
    assert attrs["box_format"] == ("yxyx1" if kind.startswith("mat") else "xyxy")
    assert "1 images of the file are not in the manifest" in result.output


def test_a_csv_file_and_the_top_n_cap(tmp_path, manifest):
    path = _file(tmp_path, "csv")
    text = path.read_text() + "000003,1,1,5,5\n"  # the CSV has a row for every image
    path.write_text(text)
    out = tmp_path / "ss.h5"
    result = _run("prepare", "proposals", "--from", path, "--data", manifest, "--out", out, "--top-n", 2)
    assert result.exit_code == 0, result.output
    _check_store(out, [*EXPECTED[:2], np.array([[1.0, 1, 5, 5]])], top_n=2)


def test_images_missing_from_the_file_are_a_clean_error(tmp_path, manifest, assert_clean_error):
    source = write_v5(tmp_path / "ss.mat", {"images": Cell(IDS[:1]), "boxes": Cell(RCNN_ROWS[:1])})
    out = tmp_path / "out"
    result = _run("prepare", "proposals", "--from", source, "--data", manifest, "--out", out / "ss.h5")
    assert_clean_error(result, "has no proposals for 2 of the 3 images", "'000002'", out_dir=out)


def test_boxes_read_in_the_wrong_layout_are_a_clean_error(tmp_path, manifest, assert_clean_error):
    # x1 y1 x2 y2 boxes of wide images read as R-CNN's y1 x1 y2 x2: their y reaches far below the image
    source = tmp_path / "eb.json"
    source.write_text(json.dumps({i: [[2, 2, w - 2, h - 2], [w / 2, 3, w - 1, h - 1]] for i, (w, h) in
                                  zip(IDS, SIZES)}))
    out = tmp_path / "out"
    result = _run("prepare", "proposals", "--from", source, "--data", manifest, "--out", out / "eb.h5",
                  "--box-format", "yxyx1")
    assert_clean_error(result, "reach more than 1 px outside their image", "--box-format", out_dir=out)


def test_a_mat_file_without_boxes_is_a_clean_error(tmp_path, manifest, assert_clean_error):
    source = write_v5(tmp_path / "ss.mat", {"images": Cell(IDS)})
    out = tmp_path / "out"
    result = _run("prepare", "proposals", "--from", source, "--data", manifest, "--out", out / "ss.h5")
    assert_clean_error(result, "has no variable 'boxes'", out_dir=out)


# --------------------------------------------------------------------------------------------------
# Fast R-CNN on Selective-Search-like proposals, and the "SS at train / RPN at test" ablation


def _jittered_proposals(manifest_path, tmp_path, name):
    """An R-CNN-style .mat of each image's boxes jittered (1-based y1 x1 y2 x2) and a few random ones."""
    manifest = read_manifest(manifest_path)
    rng = np.random.default_rng(0)
    rows = []
    for rec in manifest.images:
        boxes = np.array(rec.boxes, dtype=np.float64).reshape(-1, 4)
        jitter = boxes + rng.uniform(-3, 3, size=boxes.shape)
        random = np.sort(rng.uniform(0, [rec.width, rec.height, rec.width, rec.height], size=(6, 4)).reshape(6, 2, 2),
                         axis=1).reshape(6, 4)[:, [0, 2, 1, 3]]
        xyxy = np.clip(np.concatenate([jitter, random]), 0, [rec.width, rec.height] * 2)
        rows.append(np.round(xyxy[:, [1, 0, 3, 2]] + [1, 1, 0, 0]))  # to R-CNN's 1-based [y1 x1 y2 x2]
    return write_v5(tmp_path / name, {"images": Cell([r.id for r in manifest.images]), "boxes": Cell(rows)})


def test_fast_rcnn_trains_on_external_proposals_and_is_tested_on_an_rpns(synth_set, tmp_path, tiny_checkpoint):
    train, test = synth_set
    ss_train = tmp_path / "ss-train.h5"
    _run("prepare", "proposals", "--from", _jittered_proposals(train, tmp_path, "train.mat"), "--data", train,
         "--out", ss_train)
    det = tmp_path / "det-ss.pt"
    result = _run("train-detector", "--data", train, "--proposals", ss_train, "--out", det, "--iters", 2,
                  "--init", "none", *TINY_CLI)
    assert result.exit_code == 0, result.output
    rpn = tiny_checkpoint("rpn1.pt", parts=("backbone", "rpn"), stage="rpn")
    result = _run("eval", "--model", det, "--data", test, "--test-proposals", rpn, "--proposals-n", 50,
                  "--json", "--set", "runtime.num_workers=0", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "RPN proposals (N=50) of" in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= summary["map"] <= 1.0


def test_the_commands_box_formats_are_the_librarys():
    from frcnn_cli.cli.prepare_proposals import proposals
    from frcnn_cli.data.external_proposals import BOX_FORMATS

    option = next(p for p in proposals.params if p.name == "box_format")
    assert tuple(option.type.choices) == BOX_FORMATS


def test_several_files_make_one_store_for_a_merged_set(tmp_path, manifest, assert_clean_error):
    # 07+12: VOC2007's file and VOC2012's, each of part of the images; one v5 and one v7.3 MAT-file
    first = write_v5(tmp_path / "voc_2007.mat", {"images": Cell(IDS[:1]), "boxes": Cell(RCNN_ROWS[:1])})
    second = write_v73(tmp_path / "voc_2012.mat", {"images": Cell(IDS[1:]), "boxes": Cell(RCNN_ROWS[1:])})
    out = tmp_path / "ss.h5"
    result = _run("prepare", "proposals", "--from", first, "--from", second, "--data", manifest, "--out", out)
    assert result.exit_code == 0, result.output
    assert _check_store(out)["source_file"] == f"{first}, {second}"
    again = _run("prepare", "proposals", "--from", first, "--from", first, "--data", manifest, "--out",
                 tmp_path / "out" / "x.h5")
    assert_clean_error(again, "image '000001' is in", "disjoint image sets", out_dir=tmp_path / "out")
