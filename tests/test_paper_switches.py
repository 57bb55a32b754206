"""py-faster-rcnn's alt-opt details that the paper presets follow (issue #16): biases at twice the learning rate,
box targets normalised by per-class statistics of the training proposals and folded into the saved model,
RPN steps without the images that hold no object."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from frcnn_cli.boxes import BoxCoder
from frcnn_cli.config import get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.model.detector import FasterRCNN, ForwardOutput
from frcnn_cli.train.loop import build_optimizer
from frcnn_cli.train.stage_setup import training_images
from frcnn_cli.train.steps import freeze_for_stage, stage_spec
from frcnn_cli.train.target_stats import TargetNormaliser, TargetStats, compute_target_stats, folded

FIXED = BoxCoder(means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))


def _groups(preset: str) -> dict[float, set[str]]:
    model = FasterRCNN(replace(get_preset(preset), backbone="tiny", anchors=get_preset("tiny").anchors,
                               rpn=get_preset("tiny").rpn), ["a", "b"])
    freeze_for_stage(model, stage_spec("rpn"))
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, model.cfg.solver)
    return {g["lr_factor"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}


def test_the_paper_presets_train_every_bias_at_twice_the_lr_and_tiny_at_once():
    groups = _groups("vgg16")
    assert set(groups) == {1.0, 2.0}
    assert "rpn.conv.bias" in groups[2.0] and all(n.endswith(".bias") for n in groups[2.0])
    assert "rpn.conv.weight" in groups[1.0] and not any(n.endswith(".bias") for n in groups[1.0])
    assert set(_groups("tiny")) == {1.0}
    assert get_preset("zf").solver.bias_lr_factor == 2.0 and get_preset("tiny").solver.bias_lr_factor == 1.0


def test_the_paper_presets_normalise_box_targets_from_the_data_and_drop_empty_images_in_rpn_steps():
    for name in ("vgg16", "zf"):
        cfg = get_preset(name)
        assert (cfg.roi_head.box_target_norm, cfg.solver.rpn_drop_empty, cfg.anchors.auto) == ("dataset", True, False)
    tiny = get_preset("tiny")
    assert (tiny.roi_head.box_target_norm, tiny.solver.rpn_drop_empty) == ("fixed", False)


class _Store:
    """A proposal store held in memory: ``get(i)`` -> (boxes, scores)."""

    def __init__(self, boxes: list[list[list[float]]]) -> None:
        self.boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]

    def get(self, index: int):
        return self.boxes[index], torch.zeros(len(self.boxes[index]))


def _manifest(images: list[tuple[list, list, list]], classes=("a", "b")) -> Manifest:
    return Manifest(name="hand", classes=list(classes), root="/nowhere", images=[
        ImageRecord(id=str(i), path=f"{i}.jpg", width=100, height=100, boxes=boxes, labels=labels, difficult=hard)
        for i, (boxes, labels, hard) in enumerate(images)])


def _deltas(p, g):
    """py-faster-rcnn's bbox_transform in continuous coordinates, by hand."""
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    return [((g[0] + g[2]) - (p[0] + p[2])) / 2 / pw, ((g[1] + g[3]) - (p[1] + p[3])) / 2 / ph,
            math.log(gw / pw), math.log(gh / ph)]


def test_per_class_statistics_of_a_known_set_of_targets():
    gt = [0.0, 0.0, 10.0, 10.0]
    proposals = [[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 10.0, 12.0],
                 [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 30.0, 30.0]]  # the last two: IoU 0 and 0.11, not foreground
    manifest = _manifest([([gt, [70.0, 70.0, 80.0, 80.0]], [0, 1], [False, True])])  # class b only difficult
    cfg = apply_overrides(get_preset("tiny"), ["input.flip=false"])
    stats = compute_target_stats(_Store([proposals]), manifest, cfg)
    targets = torch.tensor([_deltas(p, gt) for p in proposals[:3]] + [[0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert stats.counts.tolist() == [0, 4, 0]  # three proposals and the gt box itself (its targets are 0)
    assert torch.allclose(stats.means[1], targets.mean(0))
    assert torch.allclose(stats.stds[1], targets.std(0, unbiased=False))
    fixed = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.2, 0.2]], dtype=torch.float64)
    assert torch.equal(torch.stack((stats.means[2], stats.stds[2])), fixed)  # no targets: the fixed numbers
    assert torch.equal(torch.stack((stats.means[0], stats.stds[0])), fixed)  # background
    mirrored = compute_target_stats(_Store([proposals]), manifest, get_preset("tiny"))
    both = torch.cat((targets, targets * torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)))
    assert mirrored.counts[1] == 8 and mirrored.means[1, 0] == pytest.approx(0.0, abs=1e-15)
    assert torch.allclose(mirrored.stds[1], both.std(0, unbiased=False))


def _stats() -> TargetStats:
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.02, -0.01, 0.1, -0.05], [0.0, 0.03, -0.2, 0.1]],
                         dtype=torch.float64)
    stds = torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.12, 0.09, 0.25, 0.3], [0.05, 0.2, 0.15, 0.18]],
                        dtype=torch.float64)
    return TargetStats(means, stds, torch.tensor([0, 10, 10]))


def test_training_targets_are_renormalised_per_class_and_the_saved_layer_predicts_the_decoders_deltas():
    stats = _stats()
    raw = torch.tensor([[0.1, -0.2, 0.3, 0.05], [0.5, 0.5, 0.5, 0.5], [-0.1, 0.0, 0.2, -0.3]])
    labels = torch.tensor([1, 0, 2])
    # the sampler's targets: the raw deltas encoded with the fixed numbers (means 0, stds 0.1, 0.1, 0.2, 0.2)
    out = ForwardOutput(roi_targets=raw / torch.tensor([0.1, 0.1, 0.2, 0.2]), roi_labels=labels)
    TargetNormaliser(stats, FIXED, torch.device("cpu"))(out)
    expected = (raw.double() - stats.means[labels]) / stats.stds[labels]
    assert torch.allclose(out.roi_targets[[0, 2]].double(), expected[[0, 2]], atol=1e-6)
    assert torch.equal(out.roi_targets[1], torch.zeros(4))  # background: no target
    layer = torch.nn.Linear(5, 12)
    x = torch.randn(7, 5)
    normalised = layer(x).view(7, 3, 4).double()  # what training teaches: per-class normalised deltas
    wanted = normalised * stats.stds + stats.means  # the raw deltas it means
    weight, bias = layer.weight, layer.bias
    with folded(layer, stats, FIXED):
        decoded = layer(x).view(7, 3, 4).double() * torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64)
    assert torch.allclose(decoded[:, 1:], wanted[:, 1:], atol=1e-5)
    assert layer.weight is weight and layer.bias is bias  # after: the training weights, untouched


def test_rpn_steps_leave_out_images_without_an_object_when_asked_detector_steps_keep_them():
    manifest = _manifest([([[0.0, 0.0, 10.0, 10.0]], [0], [False]), ([], [], []),
                          ([[5.0, 5.0, 9.0, 9.0]], [1], [True]), ([[1.0, 1.0, 50.0, 50.0]], [1], [False])])
    paper = get_preset("vgg16")
    kept = training_images(manifest, stage_spec("rpn"), paper, "m.json")
    assert [rec.id for rec in kept.images] == ["0", "3"]
    assert [rec.id for rec in training_images(manifest, stage_spec("joint"), paper, "m.json").images] == ["0", "3"]
    assert training_images(manifest, stage_spec("detector"), paper, "m.json") is manifest
    assert training_images(manifest, stage_spec("rpn"), get_preset("tiny"), "m.json") is manifest


def test_an_rpn_step_on_images_without_objects_only_is_refused():
    from frcnn_cli.errors import DataError

    empty = _manifest([([], [], []), ([[5.0, 5.0, 9.0, 9.0]], [0], [True])])
    with pytest.raises(DataError, match="rpn_drop_empty=false"):
        training_images(empty, stage_spec("rpn"), get_preset("vgg16"), "m.json")


def test_a_detector_step_with_dataset_statistics_saves_bbox_pred_folded_and_resumes_unfolded(
        four_steps, frcnn, train_options, train_set, kill_after_saving, monkeypatch, tmp_path):
    from frcnn_cli.model.checkpoint import read_checkpoint
    from frcnn_cli.train import validation
    from frcnn_cli.train.target_stats import folded_bbox_pred

    monkeypatch.setattr(validation.Validator, "measure", lambda self, model: (0.5, {"val_map": 0.5, "val_seconds": 0}))
    out = tmp_path / "det.pt"
    kill_after_saving(6)  # just after the validation (and best checkpoint) of epoch 1 and the resumable state
    with pytest.raises(BaseException, match="killed after writing"):
        frcnn("train-detector", "--data", four_steps["data"], "--proposals", four_steps["props1"], "--init", "none",
              "--epochs", 2, "--val", train_set[1], "--checkpoint-every", 6, "--out", out,
              *train_options("roi_head.box_target_norm=dataset"))
    best, state = read_checkpoint(tmp_path / "det.best.pt"), read_checkpoint(f"{out}.resume.pt")
    record = best["provenance"]["box_target_stats"]
    assert record["counts"][0] == 0 and sum(record["counts"]) > 0
    stats = TargetStats(torch.tensor(record["means"], dtype=torch.float64),
                        torch.tensor(record["stds"], dtype=torch.float64), torch.tensor(record["counts"]))
    head = state["parts"]["roi_head"]
    weight, bias = folded_bbox_pred(head["bbox_pred.weight"], head["bbox_pred.bias"], stats, FIXED)
    assert torch.allclose(best["parts"]["roi_head"]["bbox_pred.weight"], weight, rtol=1e-4, atol=1e-6)  # 6 digits
    assert torch.allclose(best["parts"]["roi_head"]["bbox_pred.bias"], bias, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(best["parts"]["roi_head"]["bbox_pred.weight"], head["bbox_pred.weight"])
