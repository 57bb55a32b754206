"""Proposal recall against IoU on constructed proposals with known overlaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frcnn_cli.data.manifest import ImageRecord, Manifest, manifest_hash
from frcnn_cli.data.proposal_store import ProposalStore, ProposalWriter
from frcnn_cli.evaluate.recall import proposal_recall


def _rec(image_id, boxes, difficult=None):
    return ImageRecord(id=image_id, path=f"{image_id}.jpg", width=100, height=100,
                       boxes=[list(map(float, b)) for b in boxes], labels=[0] * len(boxes),
                       difficult=difficult if difficult is not None else [False] * len(boxes))


MANIFEST = Manifest("m", ["thing"], "/", [
    _rec("a", [[0, 0, 10, 10], [20, 0, 30, 10]], [False, True]),  # A, and a difficult one (not counted)
    _rec("b", [[0, 0, 10, 10], [50, 50, 70, 70]]),  # C, D
    _rec("c", []),  # no objects
])
PROPOSALS = {  # sorted by score; IoUs: A 0.8 then 1.0; C 0.6; D 0 (first), 0.5, then 0.9
    0: torch.tensor([[0, 0, 10, 8], [0, 0, 10, 10]], dtype=torch.float32),
    1: torch.tensor([[0, 0, 10, 6], [50, 50, 70, 60], [50, 50, 70, 68]], dtype=torch.float32),
    2: torch.tensor([[5, 5, 20, 20]], dtype=torch.float32),
}
# best IoU of (A, C, D):  N=1: (.8, .6, 0)   N=2: (1, .6, .5)   N=3 and more: (1, .6, .9)
# thresholds .5 .55 .6 .65 .7 .75 .8 .85 .9 .95
EXPECTED = {
    1: [2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0],
    2: [1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3],
    3: [1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1 / 3],
}


def test_recall_per_n_and_threshold_on_constructed_proposals():
    result = proposal_recall(PROPOSALS, MANIFEST, top_ns=(1, 2, 3, 2000))
    assert result["iou_thresholds"] == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert result["num_objects"] == 3 and result["num_images"] == 3
    assert result["mean_proposals"] == pytest.approx(2.0)  # (2 + 3 + 1) / 3
    for n in (1, 2, 3):
        assert result["recall"][n] == pytest.approx(EXPECTED[n])
    assert result["recall"][2000] == pytest.approx(EXPECTED[3])  # fewer proposals than N: all of them
    # average recall = mean over the 10 thresholds: 10/3 / 10, 14/3 / 10, 22/3 / 10
    assert result["average_recall"][1] == pytest.approx(1 / 3)
    assert result["average_recall"][2] == pytest.approx(14 / 30)
    assert result["average_recall"][3] == pytest.approx(22 / 30)


def test_a_threshold_equal_to_the_iou_counts_as_recalled():
    # IoU 0.6 and 0.9 exactly: recalled at t = 0.6 and 0.9 (np.arange gives 0.6000000000000001).
    result = proposal_recall(PROPOSALS, MANIFEST, iou_thresholds=np.arange(0.6, 0.91, 0.3), top_ns=(3,))
    assert result["recall"][3] == pytest.approx([1.0, 2 / 3])


def test_one_proposal_may_recall_several_objects():
    manifest = Manifest("m", ["t"], "/", [_rec("x", [[0, 0, 10, 10], [0, 0, 10, 9]])])
    result = proposal_recall({0: (torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]))}, manifest,
                             iou_thresholds=[0.5, 0.95], top_ns=(1,))
    assert result["recall"][1] == [1.0, 0.5]  # IoUs 1.0 and 0.9


def test_images_without_proposals_and_without_objects():
    result = proposal_recall({}, MANIFEST, top_ns=(100,))
    assert result["recall"][100] == [0.0] * 10 and result["mean_proposals"] == 0.0
    empty = proposal_recall({}, Manifest("m", ["t"], "/", [_rec("x", [])]), top_ns=(100,))
    assert empty["num_objects"] == 0 and math.isnan(empty["average_recall"][100])
    with pytest.raises(ValueError):
        proposal_recall({}, MANIFEST, top_ns=(0,))


def test_the_store_gives_the_same_recall_as_the_dict(tmp_path):
    path = tmp_path / "p.h5"
    attrs = {"checkpoint_hash": "x", "nms_thresh": 0.7, "pre_nms_top_n": 0, "post_nms_top_n": 2000,
             "min_size": 16.0, "scale": 600, "max_size": 1000, "config": {}}
    writer = ProposalWriter(path, manifest_hash=manifest_hash(MANIFEST), attrs=attrs, manifest=MANIFEST)
    for i, boxes in PROPOSALS.items():
        writer.write(i, boxes, torch.linspace(1.0, 0.5, len(boxes)))
    writer.finish()
    with ProposalStore(path) as store:
        assert proposal_recall(store, MANIFEST, top_ns=(1, 2, 3)) == proposal_recall(PROPOSALS, MANIFEST,
                                                                                     top_ns=(1, 2, 3))
