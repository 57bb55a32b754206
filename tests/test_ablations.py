"""The paper's Table 1 test-time proposal ablations: no NMS, no cls scores, no reg deltas, N proposals."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from frcnn_cli.ablations import AblatedProposer, ProposalAblation
from frcnn_cli.boxes import BoxCoder, box_iou, clip_boxes, small_box_mask
from frcnn_cli.config import RuntimeConfig, get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.inference import InferenceSettings, Predictor, detect_manifest
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.postprocess import DetectionSettings
from frcnn_cli.model.rpn import ProposalSettings, RPNProposer, objectness_scores, select_proposals

SIZES = torch.tensor([[64, 96], [48, 80]])
SCALES = torch.tensor([1.0, 1.0])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("tiny"), ["input.test_scale=64", "input.max_size=96"])
    return FasterRCNN(cfg, ["cat", "dog"]).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 96)


@pytest.fixture(scope="module")
def rpn_out(model, images):
    with torch.no_grad():
        return model(images, SIZES, SCALES, run_roi_head=False)


def _test_settings(model) -> ProposalSettings:
    return ProposalSettings.from_config(model.cfg.rpn, "test")


def _proposals(model, rpn_out, keys=None, **switches):
    proposer = ProposalAblation(**switches).proposer(_test_settings(model))
    return proposer(rpn_out.anchors, rpn_out.rpn_cls_logits, rpn_out.rpn_deltas, SIZES, SCALES, keys=keys)


def _decoded(model, rpn_out):
    """Every anchor's decoded, clipped box [N, M, 4] and whether it passes the min-size filter [N, M]."""
    n, m, _ = rpn_out.rpn_deltas.shape
    boxes = BoxCoder().decode(rpn_out.rpn_deltas.reshape(n * m, 4), rpn_out.anchors.repeat(n, 1))
    boxes = clip_boxes(boxes.view(n, m, 4), SIZES[:, :1].float(), SIZES[:, 1:].float())
    return boxes, small_box_mask(boxes, model.cfg.rpn.min_size)


def _max_pair_iou(boxes):
    iou = box_iou(boxes, boxes)
    iou.fill_diagonal_(0)
    return float(iou.max())


# --------------------------------------------------------------------------------------------------
# the proposal selection, on boxes made by hand


def test_select_proposals_nms_suppresses_the_overlapping_box_and_no_nms_keeps_it():
    # boxes 0 and 1 overlap with IoU 90/110 = 0.818 > 0.7; box 3 has the best score but is not valid
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 2, 2]]] * 2)
    priority = torch.tensor([[0.9, 0.8, 0.7, 0.95], [0.1, 0.2, 0.3, 0.4]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    with_nms = select_proposals(boxes, priority, valid, pre_nms_top_n=0, post_nms_top_n=0, nms_thresh=0.7)
    assert with_nms[0][0].tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]
    assert with_nms[0][1].tolist() == pytest.approx([0.9, 0.7])
    # image 1, all valid: box 0 (0.1) is suppressed by box 1 (0.2), which nothing better overlaps
    assert with_nms[1][0].tolist() == [[0, 0, 2, 2], [20, 20, 30, 30], [1, 0, 11, 10]]
    without = select_proposals(boxes, priority, valid, pre_nms_top_n=2, post_nms_top_n=2, nms_thresh=None)
    assert without[0][0].tolist() == [[0, 0, 10, 10], [1, 0, 11, 10]]
    assert without[1][1].tolist() == pytest.approx([0.4, 0.3])


def test_select_proposals_pre_nms_cut_comes_before_nms():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]]])
    priority = torch.tensor([[0.9, 0.8, 0.7]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    kept = select_proposals(boxes, priority, valid, pre_nms_top_n=2, post_nms_top_n=0, nms_thresh=0.7)
    assert kept[0][0].tolist() == [[0, 0, 10, 10]]


# --------------------------------------------------------------------------------------------------
# the switches on a model


def test_every_switch_on_is_the_models_own_proposal_layer(model, images):
    settings = _test_settings(model)
    assert ProposalAblation().proposer(settings) == RPNProposer(settings)
    with torch.no_grad():
        plain = model(images, SIZES, SCALES, proposer=RPNProposer(settings))
        # the ablation's own code path with every switch on gives the same proposals, RoIs and detections
        ablated = model(images, SIZES, SCALES, proposer=AblatedProposer(ProposalAblation(), settings))
    for a, b in zip(plain.proposals, ablated.proposals):
        assert torch.equal(a, b)
    assert torch.equal(plain.rois, ablated.rois)
    assert torch.allclose(plain.class_logits, ablated.class_logits, atol=1e-6)
    rules = DetectionSettings.from_config(model.cfg.roi_head)
    dets_a = model.detect(plain, SIZES, SCALES, settings=rules)
    dets_b = model.detect(ablated, SIZES, SCALES, settings=rules)
    assert [d["labels"].tolist() for d in dets_a] == [d["labels"].tolist() for d in dets_b]


def test_the_backbone_runs_once(model, images):
    calls = []
    handle = model.backbone.register_forward_hook(lambda *args: calls.append(1))
    proposer = ProposalAblation(use_regression=False, top_n=10).proposer(_test_settings(model))
    try:
        with torch.no_grad():
            out = model(images, SIZES, SCALES, proposer=proposer)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert out.class_logits.shape == (out.rois.shape[0], 3)
    assert out.rois.shape[0] == sum(len(p) for p in out.proposals) <= 20


def test_top_n_keeps_the_first_n_of_the_nms_ranking(model, rpn_out):
    full = _proposals(model, rpn_out)
    assert [len(b) for b, _ in full] == [min(len(b), model.cfg.rpn.test_post_nms_top_n) for b, _ in full]
    seven = _proposals(model, rpn_out, top_n=7)
    for (b7, s7), (b, s) in zip(seven, full):
        assert len(b7) == 7
        assert torch.equal(b7, b[:7]) and torch.equal(s7, s[:7])


def test_no_reg_proposals_are_anchors_clipped_to_the_image(model, rpn_out):
    found = _proposals(model, rpn_out, use_regression=False, top_n=50)
    anchors = rpn_out.anchors
    scores = objectness_scores(rpn_out.rpn_cls_logits)
    for i, (boxes, s) in enumerate(found):
        h, w = SIZES[i].tolist()
        clipped = clip_boxes(anchors, h, w)
        match = (boxes[:, None, :] == clipped[None]).all(-1)  # [R, M]
        assert 0 < len(boxes) <= 50 and match.any(1).all()
        inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w) & (boxes[:, 3] < h)
        assert inside.any()
        assert (boxes[inside][:, None, :] == anchors[None]).all(-1).any(1).all()  # exactly anchors
        # the score of a proposal is the objectness of (one of) its anchor(s)
        assert (match & torch.isclose(scores[i][None], s[:, None])).any(1).all()
        assert _max_pair_iou(boxes) <= model.cfg.rpn.nms_thresh + 1e-6


def test_no_nms_keeps_overlapping_boxes_that_nms_removes(model, rpn_out):
    boxes_all, valid = _decoded(model, rpn_out)
    scores = objectness_scores(rpn_out.rpn_cls_logits)
    with_nms = _proposals(model, rpn_out, top_n=1000)
    without = _proposals(model, rpn_out, nms=False, top_n=1000)
    for i in range(2):
        assert len(without[i][0]) == int(valid[i].sum())  # N exceeds the anchors: every valid box
        assert len(with_nms[i][0]) < len(without[i][0])
        assert _max_pair_iou(with_nms[i][0]) <= 0.7 + 1e-6 < _max_pair_iou(without[i][0])
    ten = _proposals(model, rpn_out, nms=False, top_n=10)
    for i in range(2):
        best = scores[i][valid[i]].topk(10).values
        assert torch.allclose(ten[i][1], best)


def test_no_scores_draws_n_random_valid_boxes_reproducibly(model, rpn_out):
    boxes_all, valid = _decoded(model, rpn_out)
    a = _proposals(model, rpn_out, use_scores=False, top_n=20)
    b = _proposals(model, rpn_out, use_scores=False, top_n=20)
    c = _proposals(model, rpn_out, use_scores=False, top_n=20, seed=1)
    ranked = _proposals(model, rpn_out, nms=False, top_n=20)
    for i in range(2):
        assert len(a[i][0]) == 20 and torch.equal(a[i][0], b[i][0])
        assert not torch.equal(a[i][0], c[i][0]) and not torch.equal(a[i][0], ranked[i][0])
        pool = boxes_all[i][valid[i]]
        assert torch.isclose(a[i][0][:, None, :], pool[None], atol=1e-5).all(-1).any(1).all()


def test_no_scores_draw_depends_on_the_image_key_not_the_batch(model, rpn_out):
    draw = {tuple(keys): _proposals(model, rpn_out, keys=keys, use_scores=False, top_n=15)
            for keys in ([7, 8], [7, 0], [8, 7])}
    assert torch.equal(draw[7, 8][0][1], draw[7, 0][0][1])  # image 0 with key 7, whatever the other key
    assert not torch.equal(draw[7, 8][0][1], draw[8, 7][0][1])


def test_ablation_settings_and_names():
    assert ProposalAblation().is_default
    assert not ProposalAblation(top_n=300).is_default
    assert ProposalAblation(nms=False, top_n=6000).describe() == "RPN proposals (no NMS, N=6000)"
    assert ProposalAblation(use_scores=False, nms=False).describe() == "RPN proposals (no cls scores)"
    assert ProposalAblation(use_regression=False).describe() == "RPN proposals (no reg)"
    with pytest.raises(ValueError, match="top_n"):
        ProposalAblation(top_n=0)


def test_detect_manifest_takes_an_ablation(model, tmp_path):
    for name, colour in (("a", (200, 30, 30)), ("b", (20, 90, 200))):
        Image.new("RGB", (64, 48), colour).save(tmp_path / f"{name}.png")
    records = [ImageRecord(n, f"{n}.png", 64, 48, [[4.0, 4.0, 30.0, 30.0]], [0], [False]) for n in "ab"]
    manifest = Manifest("t-test", ["cat", "dog"], str(tmp_path), records)

    def run(ablation=None):
        settings = InferenceSettings.from_config(model.cfg, ablation=ablation)
        return detect_manifest(Predictor(model, "cpu", settings, RuntimeConfig(num_workers=0)), manifest, batch_size=2)

    plain, same, one = run(), run(ProposalAblation()), run(ProposalAblation(top_n=1))
    for p, s, o in zip(plain, same, one):
        assert torch.equal(p["boxes"], s["boxes"]) and torch.equal(p["scores"], s["scores"])
        assert len(o["labels"]) <= 2 < len(p["labels"])  # one proposal: at most one box per class
