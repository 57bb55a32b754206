"""FasterRCNN: parts, what forward computes in each mode, losses, detections, freezing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from frcnn_cli.config import get_preset
from frcnn_cli.errors import ConfigError
from frcnn_cli.model.detector import FasterRCNN, Targets
from frcnn_cli.model.postprocess import DetectionSettings
from frcnn_cli.model.rpn import ProposalSettings, RPNProposer

CLASSES = ["cat", "dog"]
SIZES = torch.tensor([[96, 128], [80, 112]])
SCALES = torch.tensor([1.0, 0.875])


def _tiny(**roi_head):
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    if roi_head:
        cfg = replace(cfg, roi_head=replace(cfg.roi_head, **roi_head))
    return FasterRCNN(cfg, CLASSES)


def _proposer(model, mode="test"):
    return RPNProposer(ProposalSettings.from_config(model.cfg.rpn, mode))


def _rules(model):
    return DetectionSettings.from_config(model.cfg.roi_head)


def _images(n=2, height=96, width=128):
    torch.manual_seed(1)
    return torch.randn(n, 3, height, width)


def _targets():
    return Targets(boxes=[torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]]),
                          torch.tensor([[30.0, 30.0, 90.0, 75.0]])],
                   labels=[torch.tensor([1, 2]), torch.tensor([2])])


def _zero(*layers):
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()


def test_parts_are_backbone_rpn_roi_head_with_head_top_inside():
    model = _tiny()
    prefixes = {key.split(".")[0] for key in model.state_dict()}
    assert prefixes == {"backbone", "rpn", "roi_head"} == set(model.part_names)
    assert "roi_head.head_top.fc6.weight" in model.state_dict()
    assert model.rpn.conv.out_channels == 128 and model.rpn.cls_logits.out_channels == 9 * 2
    assert model.roi_head.cls_score.out_features == 3 and model.roi_head.bbox_pred.out_features == 12
    assert model.roi_head.spatial_scale == 1 / 16 and model.roi_head.pool_size == 7
    assert model.box_coder.stds == (0.1, 0.1, 0.2, 0.2)


@pytest.mark.parametrize("name", ["vgg16", "zf", "resnet50", "resnet101", "tiny"])
def test_every_preset_builds_and_detects_on_a_small_image(name):
    torch.manual_seed(0)
    model = FasterRCNN(get_preset(name), CLASSES).eval()
    with torch.no_grad():
        out = model(_images(1, 64, 80), torch.tensor([[64, 80]]), torch.tensor([1.0]), proposer=_proposer(model))
        dets = model.detect(out, torch.tensor([[64, 80]]), torch.tensor([1.0]), settings=_rules(model))
    grid = (5, 6) if name == "zf" else (4, 5)
    assert tuple(out.features.shape[-2:]) == grid
    assert tuple(out.anchors.shape) == (grid[0] * grid[1] * 9, 4)
    assert tuple(out.rpn_cls_logits.shape) == (1, grid[0] * grid[1] * 9, 2)
    s = out.proposals[0].shape[0]
    assert tuple(out.rois.shape) == (s, 5) and tuple(out.class_logits.shape) == (s, 3)
    assert tuple(out.box_deltas.shape) == (s, 12)
    assert len(dets) == 1 and set(dets[0]) == {"boxes", "scores", "labels"}


def test_proposal_settings_pick_the_config_top_n_values():
    rpn = get_preset("tiny").rpn
    assert ProposalSettings.from_config(rpn, "train") == ProposalSettings(2000, 300, 0.7, 4.0)
    assert ProposalSettings.from_config(rpn, "test") == ProposalSettings(1000, 100, 0.7, 4.0)
    assert ProposalSettings.from_config(rpn, "dump") == ProposalSettings(0, 300, 0.7, 4.0)
    with pytest.raises(ValueError, match="mode"):
        ProposalSettings.from_config(rpn, "val")


def test_the_model_makes_no_proposals_unless_given_a_proposer():
    model = _tiny().eval()
    with torch.no_grad():
        out = model(_images(), SIZES, SCALES, run_roi_head=False)
        fewer = model(_images(), SIZES, SCALES, run_roi_head=False,
                      proposer=RPNProposer(ProposalSettings(1000, 7, 0.7, 4.0)))
    assert out.proposals is None and out.rpn_cls_logits is not None
    assert [len(p) for p in fewer.proposals] == [7, 7]


def test_rpn_only_forward_gives_only_rpn_losses_ln2_with_zero_logits():
    model = _tiny().train()
    _zero(model.rpn.cls_logits)
    out = model(_images(), SIZES, SCALES, targets=_targets(), run_roi_head=False)
    assert out.proposals is None and out.rois is None and out.class_logits is None
    losses = model.losses(out, _targets(), SIZES)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert losses["loss_rpn_box"].item() > 0


def test_detector_losses_with_zero_predictors_are_ln3_and_the_smooth_l1_of_the_targets():
    model = _tiny().train()
    _zero(model.roi_head.cls_score, model.roi_head.bbox_pred)
    proposals = [torch.tensor([[12.0, 10.0, 58.0, 72.0], [0.0, 0.0, 30.0, 30.0]]),
                 torch.tensor([[28.0, 33.0, 88.0, 70.0], [50.0, 0.0, 100.0, 20.0]])]
    out = model(_images(), SIZES, SCALES, targets=_targets(), proposals=proposals, run_rpn=False)
    assert out.rpn_cls_logits is None
    losses = model.losses(out, _targets(), SIZES)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert losses["loss_cls"].item() == pytest.approx(math.log(3), abs=1e-6)
    fg = out.roi_labels > 0
    t = out.roi_targets[fg].abs()  # prediction 0: smooth-L1 (sigma 1) of the targets
    expected = torch.where(t < 1, 0.5 * t * t, t - 0.5).sum() / out.rois.shape[0]
    assert fg.sum() == 5  # 3 gt boxes (added as proposals) + 2 proposals with IoU >= 0.5
    assert losses["loss_box"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_joint_forward_trains_all_parts_from_four_losses():
    model = _tiny().train()
    out = model(_images(), SIZES, SCALES, targets=_targets(), proposer=_proposer(model, "train"))
    assert all(p.shape[0] <= 300 for p in out.proposals)
    assert out.rois.shape[0] <= 2 * 64 and out.roi_labels.shape[0] == out.rois.shape[0]
    losses = model.losses(out, _targets(), SIZES)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    sum(losses.values()).backward()
    for param in (model.backbone.conv1.weight, model.rpn.conv.weight, model.roi_head.head_top.fc6.weight,
                  model.roi_head.cls_score.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_rpn_proposals_are_clipped_sorted_capped_and_at_least_min_size():
    model = _tiny().eval()
    with torch.no_grad():
        out = model(_images(), SIZES, SCALES, run_roi_head=False, proposer=_proposer(model))
    for boxes, scores, (h, w), scale in zip(out.proposals, out.proposal_scores, SIZES.tolist(), SCALES):
        assert 0 < boxes.shape[0] <= 100
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2] - boxes[:, 0]) >= 4.0 * scale).all()
        assert torch.equal(scores, scores.sort(descending=True).values)


def test_external_proposals_are_the_rois():
    model = _tiny().eval()
    given = [torch.tensor([[1.0, 2.0, 40.0, 50.0], [5.0, 5.0, 90.0, 60.0], [0.0, 0.0, 128.0, 96.0]]),
             torch.tensor([[10.0, 20.0, 30.0, 40.0], [3.0, 3.0, 50.0, 70.0]])]
    with torch.no_grad():
        out = model(_images(), SIZES, SCALES, proposals=given, run_rpn=False)
        both = model(_images(), SIZES, SCALES, proposals=given)  # RPN outputs too, proposals still given
    expected = torch.tensor([[0.0, 1, 2, 40, 50], [0, 5, 5, 90, 60], [0, 0, 0, 128, 96],
                             [1, 10, 20, 30, 40], [1, 3, 3, 50, 70]])
    assert torch.equal(out.rois, expected) and torch.equal(both.rois, expected)
    assert out.rpn_cls_logits is None and out.proposal_scores is None
    assert both.rpn_cls_logits is not None and both.proposal_scores is None
    assert torch.allclose(out.class_logits, both.class_logits)


def test_sampled_rois_are_proposals_or_gt_of_their_image():
    model = _tiny().train()
    given = [torch.tensor([[12.0, 10.0, 58.0, 72.0], [0.0, 0.0, 30.0, 30.0]]),
             torch.tensor([[28.0, 33.0, 88.0, 70.0]])]
    out = model(_images(), SIZES, SCALES, targets=_targets(), proposals=given, run_rpn=False)
    for image in (0, 1):
        rows = out.rois[out.rois[:, 0] == image, 1:]
        pool = torch.cat((given[image], _targets().boxes[image]))
        assert rows.shape[0] == pool.shape[0]  # fewer than 64 candidates: all are taken
        assert all((pool == row).all(1).any() for row in rows)


def test_validation_forward_gives_losses_and_the_test_time_detections():
    model = _tiny(detections_per_image=0).eval()
    with torch.no_grad():
        val = model(_images(), SIZES, SCALES, targets=_targets(), sample_rois=False, proposer=_proposer(model))
        test = model(_images(), SIZES, SCALES, proposer=_proposer(model))
        val_dets = model.detect(val, SIZES, SCALES, settings=_rules(model))
        test_dets = model.detect(test, SIZES, SCALES, settings=_rules(model))
    # no gt added, nothing sampled: the RoIs are exactly the test-time proposals, labelled
    assert val.rois.shape[0] == test.rois.shape[0] == sum(p.shape[0] for p in test.proposals)
    assert torch.equal(val.rois[:, 0], test.rois[:, 0])
    assert set(map(tuple, val.rois.tolist())) == set(map(tuple, test.rois.tolist()))
    assert set(model.losses(val, _targets(), SIZES)) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    for a, b in zip(val_dets, test_dets):
        assert a["boxes"].shape[0] == b["boxes"].shape[0] > 0
        ka, kb = a["scores"].argsort(), b["scores"].argsort()
        assert torch.allclose(a["scores"][ka], b["scores"][kb], atol=1e-6)
        assert torch.allclose(a["boxes"][ka], b["boxes"][kb], atol=1e-4)


def test_detections_are_in_original_image_pixels():
    model = _tiny().eval()
    scales = torch.tensor([0.5, 0.25])
    with torch.no_grad():
        out = model(_images(), SIZES, scales, proposer=_proposer(model))
        dets = model.detect(out, SIZES, scales, settings=_rules(model))
    for det, (h, w), s in zip(dets, SIZES.tolist(), scales.tolist()):
        assert (det["boxes"][:, 2] <= w / s).all() and (det["boxes"][:, 3] <= h / s).all()
        assert det["boxes"][:, 2].max() > w  # scaled back up, not left in scaled pixels
        assert ((det["labels"] >= 1) & (det["labels"] <= 2)).all() and (det["scores"] > 0.05).all()


def test_images_without_proposals_give_empty_detections_and_finite_losses():
    model = _tiny().train()
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    no_gt = Targets([torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)] * 2)
    out = model(_images(), SIZES, SCALES, targets=no_gt, proposals=empty, run_rpn=False)
    assert tuple(out.class_logits.shape) == (0, 3)
    losses = model.losses(out, no_gt, SIZES)
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in losses.values())
    dets = model.eval().detect(out, SIZES, SCALES, settings=_rules(model))
    assert [d["boxes"].shape[0] for d in dets] == [0, 0]


def test_the_roi_head_needs_proposals():
    with pytest.raises(ValueError, match="needs proposals"):
        _tiny()(_images(), SIZES, SCALES, run_rpn=False)


def test_a_frozen_part_is_bit_identical_after_an_sgd_step_and_the_others_change():
    model = _tiny().train()
    model.freeze("backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    out = model(_images(), SIZES, SCALES, targets=_targets(), proposer=_proposer(model, "train"))
    sum(model.losses(out, _targets(), SIZES).values()).backward()
    opt.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("backbone."):
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["rpn.conv.weight"], before["rpn.conv.weight"])
    assert not torch.equal(after["roi_head.head_top.fc6.weight"], before["roi_head.head_top.fc6.weight"])
    model.unfreeze("backbone")
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_by_prefix_and_unknown_names():
    model = _tiny()
    model.freeze(["roi_head.head_top", "rpn.conv"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"roi_head.head_top.fc6.weight", "roi_head.head_top.fc6.bias",
                      "roi_head.head_top.fc7.weight", "roi_head.head_top.fc7.bias",
                      "rpn.conv.weight", "rpn.conv.bias"}
    assert sum(p.requires_grad for p in model.parameters()) == len(list(model.parameters())) - 6
    with pytest.raises(ValueError, match="roi_heads"):
        model.freeze("roi_heads")


def test_vgg16_paper_freezing_is_conv1_and_conv2():
    with torch.device("meta"):
        model = FasterRCNN(get_preset("vgg16"), CLASSES)
    model.apply_paper_freezing()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == [f"backbone.features.{i}.{w}" for i in (0, 2, 5, 7) for w in ("weight", "bias")]


def test_resnet_paper_freezing_keeps_conv1_layer1_and_batchnorm_fixed_through_sgd():
    torch.manual_seed(0)
    cfg = get_preset("resnet50")
    cfg = replace(cfg, roi_head=replace(cfg.roi_head, batch_size_per_image=4))  # res5 is costly on a CPU
    model = FasterRCNN(cfg, CLASSES).train()
    model.apply_paper_freezing()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    targets = Targets([torch.tensor([[5.0, 5.0, 60.0, 50.0]])], [torch.tensor([1])])
    sizes = torch.tensor([[64, 80]])
    out = model(_images(1, 64, 80), sizes, torch.tensor([1.0]), targets=targets, proposer=_proposer(model, "train"))
    sum(model.losses(out, targets, sizes).values()).backward()
    opt.step()
    after = model.state_dict()
    fixed = [k for k in before if k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))
             or "running_" in k or k.endswith(("bn1.weight", "bn2.weight", "bn3.weight"))]
    assert len(fixed) > 50 and all(torch.equal(after[k], before[k]) for k in fixed)
    assert not torch.equal(after["backbone.layer2.0.conv1.weight"], before["backbone.layer2.0.conv1.weight"])


def test_anchor_stride_must_match_the_backbone():
    cfg = get_preset("tiny")
    cfg = replace(cfg, anchors=replace(cfg.anchors, stride=8))
    with pytest.raises(ConfigError, match="anchors.stride=16"):
        FasterRCNN(cfg, CLASSES)
