"""The paper's 4-step alternating training (Sec. 3.2) from the command line: what each step shares, learns
and stores, the proposal files between the steps, and the errors that keep the steps in order.

The four steps run once per session (``four_steps`` in conftest.py): tiny preset at 96 px, 3 iterations
each, random init. Weights are compared bit for bit (``torch.equal``).
"""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from frcnn_cli.boxes import box_iou
from frcnn_cli.config_io import config_from_dict
from frcnn_cli.data.images import ImageBatch
from frcnn_cli.data.manifest import manifest_hash, read_manifest
from frcnn_cli.data.proposal_store import ProposalStore
from frcnn_cli.data.synthetic import CLASSES
from frcnn_cli.model.checkpoint import file_sha256, read_checkpoint
from frcnn_cli.train.batching import proposal_source

pytestmark = pytest.mark.usefixtures("one_thread")


def part(path, name: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["parts"][name]


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def all_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Every weight tensor (not the all-zero biases of a fresh layer) changed."""
    assert a.keys() == b.keys()
    return all(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------------------------
# what each step shares and learns


def test_step_two_trains_its_own_backbone_not_step_ones(four_steps):
    assert all_differ(part(four_steps["det1"], "backbone"), part(four_steps["rpn1"], "backbone"))
    prov = read_checkpoint(four_steps["det1"])["provenance"]
    assert prov["init"] == "none" and "init_parts" not in prov


def test_step_three_keeps_the_step_two_shared_convs_bit_identical(four_steps):
    assert identical(part(four_steps["rpn2"], "backbone"), part(four_steps["det1"], "backbone"))


def test_step_three_learns_new_rpn_layers_and_carries_the_step_two_region_head(four_steps):
    assert all_differ(part(four_steps["rpn2"], "rpn"), part(four_steps["rpn1"], "rpn"))
    assert identical(part(four_steps["rpn2"], "roi_head"), part(four_steps["det1"], "roi_head"))


def test_step_four_keeps_the_step_two_shared_convs_and_the_step_three_rpn(four_steps):
    assert identical(part(four_steps["final"], "backbone"), part(four_steps["det1"], "backbone"))
    assert identical(part(four_steps["final"], "rpn"), part(four_steps["rpn2"], "rpn"))


def test_step_four_fine_tunes_the_region_head(four_steps):
    final, det1 = part(four_steps["final"], "roi_head"), part(four_steps["det1"], "roi_head")
    assert all_differ(final, det1)


def test_step_four_starts_fc6_fc7_from_step_two_and_its_predictors_afresh(four_steps, frcnn, tmp_path):
    """With lr 0 one iteration leaves the starting weights: fc6/fc7 of det1, cls_score and bbox_pred new,
    N(0, 0.01) and N(0, 0.001) with zero biases (py-faster-rcnn does not carry them into step 4)."""
    out = tmp_path / "final_lr0.pt"
    frcnn("train-detector", "--data", four_steps["data"], "--out", out, "--init", four_steps["rpn2"],
          "--freeze-shared", "--proposals", four_steps["props2"], "--iters", 1, "--set", "solver.lr=0")
    start, det1 = part(out, "roi_head"), part(four_steps["det1"], "roi_head")
    assert identical(sub(start, "head_top."), sub(det1, "head_top."))
    for name, std in (("cls_score", 0.01), ("bbox_pred", 0.001)):
        assert not torch.equal(start[f"{name}.weight"], det1[f"{name}.weight"])
        assert start[f"{name}.weight"].std().item() == pytest.approx(std, rel=0.15)
        assert torch.count_nonzero(start[f"{name}.bias"]) == 0
    assert identical(part(out, "rpn"), part(four_steps["rpn2"], "rpn"))


def test_a_step_one_rpn_has_no_region_head_yet(four_steps):
    assert sorted(read_checkpoint(four_steps["rpn1"])["parts"]) == ["backbone", "rpn"]
    for step in ("rpn2", "final"):
        assert sorted(read_checkpoint(four_steps[step])["parts"]) == ["backbone", "roi_head", "rpn"]


# --------------------------------------------------------------------------------------------------
# what the checkpoints and the metrics say


def test_checkpoints_carry_stage_provenance_config_and_classes(four_steps, train_config):
    stages = {"rpn1": "rpn", "det1": "detector", "rpn2": "rpn-shared-frozen", "final": "detector-shared-frozen"}
    proposals = {"det1": "props1", "final": "props2"}
    manifest = read_manifest(four_steps["data"])
    for step, stage in stages.items():
        ckpt = read_checkpoint(four_steps[step])
        prov = ckpt["provenance"]
        assert ckpt["stage"] == stage
        assert prov["manifest_hash"] == manifest_hash(manifest)
        assert (prov["iterations"], prov["seed"]) == (3, 3)
        assert config_from_dict(ckpt["config"]) == train_config()
        assert ckpt["classes"] == list(CLASSES)
        if step in proposals:
            assert prov["proposals_hash"] == file_sha256(four_steps[proposals[step]])
        else:
            assert "proposals_hash" not in prov
    assert read_checkpoint(four_steps["final"])["provenance"]["init_stage"] == "rpn-shared-frozen"


def test_metrics_lines_carry_stage_iteration_losses_lr_and_speed(four_steps):
    rows = [json.loads(line) for line in four_steps["metrics"].read_text().splitlines()]
    stages = ["rpn", "detector", "rpn-shared-frozen", "detector-shared-frozen"]
    assert [(r["stage"], r["iteration"]) for r in rows] == [(s, i) for s in stages for i in (1, 2, 3)]
    for row in rows:
        losses = ("loss_rpn_cls", "loss_rpn_box") if row["stage"].startswith("rpn") else ("loss_cls", "loss_box")
        assert set(row) == {"stage", "iteration", "loss", "lr", "images_per_s", *losses}
        assert row["loss"] == pytest.approx(sum(row[k] for k in losses), rel=1e-6)
        assert row["images_per_s"] > 0
    # tiny: lr 0.01 and warm-up from 0.001x; --iters 3 puts the drop (300 of 400) at 2, and the warm-up is
    # cut to half the iterations before the first drop (1), so: 0.01 * 0.001, then 0.01, then 0.001
    assert [r["lr"] for r in rows[:3]] == pytest.approx([1e-5, 0.01, 0.001])


# --------------------------------------------------------------------------------------------------
# the proposal files between the steps


def test_proposal_file_covers_every_image_sorted_by_score_after_nms(four_steps):
    manifest = read_manifest(four_steps["data"])
    with ProposalStore(four_steps["props1"]) as store:
        assert store.image_ids == [rec.id for rec in manifest.images]
        for rec in manifest.images:
            boxes, scores = store.get(rec.id)
            assert 0 < len(scores) <= 300  # tiny's dump_post_nms_top_n
            assert torch.all(scores[:-1] >= scores[1:])
            assert box_iou(boxes, boxes).fill_diagonal_(0).max() <= 0.7 + 1e-6  # NMS 0.7
            assert boxes.min() >= 0
            slack = 1 / (96 / min(rec.width, rec.height))  # clipped to the rounded scaled size
            assert torch.all(boxes[:, 2] <= rec.width + slack) and torch.all(boxes[:, 3] <= rec.height + slack)


def test_proposal_file_carries_its_provenance(four_steps):
    with ProposalStore(four_steps["props2"]) as store:
        attrs = store.attrs
    assert attrs["manifest_hash"] == manifest_hash(read_manifest(four_steps["data"]))
    assert attrs["checkpoint_hash"] == file_sha256(four_steps["rpn2"])
    assert (attrs["nms_thresh"], attrs["pre_nms_top_n"], attrs["post_nms_top_n"]) == (0.7, 0, 300)
    assert (attrs["min_size"], attrs["scale"], attrs["max_size"]) == (4.0, 96, 128)
    assert config_from_dict(attrs["config"]).backbone == "tiny"


def test_one_image_s_proposals_read_alone(four_steps, tmp_path):
    """Deleting every other image's rows leaves image 3 readable: each image is stored apart."""
    copy = tmp_path / "props.h5"
    copy.write_bytes(four_steps["props1"].read_bytes())
    with ProposalStore(four_steps["props1"]) as store:
        want = store.get(3)
    with h5py.File(copy, "a") as f:
        for name in list(f["images"]):
            if name != "3":
                del f["images"][name]
    with ProposalStore(copy) as store:
        boxes, scores = store.get(store.image_ids[3])
    assert torch.equal(boxes, want[0]) and torch.equal(scores, want[1])


def test_flipped_images_get_their_proposals_mirrored_not_recomputed(four_steps):
    with ProposalStore(four_steps["props1"]) as store:
        stored, _ = store.get(2)
        width = read_manifest(four_steps["data"]).images[2].width
        batch = ImageBatch(tensor=torch.zeros(2, 3, 1, 1), image_sizes=torch.ones(2, 2, dtype=torch.long),
                           scales=torch.tensor([0.5, 0.5]), original_sizes=torch.tensor([[1, width]] * 2),
                           ids=["a", "b"], flipped=torch.tensor([False, True]), indices=torch.tensor([2, 2]))
        plain, mirrored = proposal_source(store, torch.device("cpu"))(batch)
    assert torch.equal(plain, stored * 0.5)
    assert torch.allclose(mirrored[:, [2, 0]], (width - stored[:, [0, 2]]) * 0.5)
    assert torch.equal(mirrored[:, [1, 3]], plain[:, [1, 3]])


# --------------------------------------------------------------------------------------------------
# errors that keep the steps in order


def test_a_proposal_file_of_another_manifest_is_refused_naming_both(four_steps, train_set, frcnn, tmp_path):
    test_manifest = train_set[1]
    result = frcnn("train-detector", "--data", test_manifest, "--out", tmp_path / "det.pt", "--init",
                   "none", "--proposals", four_steps["props1"], "--iters", 1, ok=False)
    assert result.exit_code != 0
    error = result.output[result.output.index("Error:"):]
    assert str(four_steps["props1"]) in error and str(test_manifest) in error
    assert "another manifest" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("init", ["none", "imagenet"])
@pytest.mark.parametrize("command", ["train-rpn", "train-detector"])
def test_freeze_shared_without_an_earlier_step_is_refused(four_steps, frcnn, train_options, tmp_path,
                                                           init, command):
    extra = ["--proposals", four_steps["props1"]] if command == "train-detector" else []
    result = frcnn(command, "--data", four_steps["data"], "--out", tmp_path / "x.pt", "--init", init,
                   "--freeze-shared", *extra, *train_options(), ok=False)
    assert result.exit_code == 2
    assert "Error: --freeze-shared needs --init CHECKPOINT" in result.output
    assert list(tmp_path.iterdir()) == []


def test_lr_drops_keep_their_fraction_of_the_run_under_iters():
    from frcnn_cli.config import get_preset
    from frcnn_cli.train.schedule import plan_step

    solver = get_preset("vgg16").solver
    assert plan_step(solver, "rpn", images=5011, flip=True).drops == (60000,)
    assert plan_step(solver, "rpn", images=5011, flip=True, iters=40).drops == (30,)
    assert plan_step(solver, "detector", images=5011, flip=True, iters=3).drops == (2,)


# --------------------------------------------------------------------------------------------------
# shared convs from an unexpected step: a warning; the start line only once every input is checked


def test_step_four_from_a_step_one_rpn_warns_and_trains(four_steps, frcnn, tmp_path):
    out = tmp_path / "final_from_rpn1.pt"
    result = frcnn("train-detector", "--data", four_steps["data"], "--out", out, "--init", four_steps["rpn1"],
                   "--freeze-shared", "--proposals", four_steps["props2"], "--iters", 1)
    warning = " ".join(result.stderr[result.stderr.index("Warning:"):].split())
    assert f"shared convs of {four_steps['rpn1']}, a step-1 RPN (stage 'rpn')" in warning
    assert "--init rpn2.pt" in warning and "fc6/fc7 start from random weights" in warning
    assert result.stderr.count("Warning:") == 1 and "Error" not in result.output
    assert out.exists()


def test_the_papers_steps_three_and_four_do_not_warn(four_steps, frcnn, tmp_path):
    for command, init, extra in (("train-rpn", "det1", []),
                                 ("train-detector", "rpn2", ["--proposals", four_steps["props2"]])):
        result = frcnn(command, "--data", four_steps["data"], "--out", tmp_path / f"{command}.pt", "--init",
                       four_steps[init], "--freeze-shared", "--iters", 1, *extra)
        assert "--freeze-shared freezes" not in result.stderr and "training" in result.stderr


@pytest.mark.parametrize("kind, stage, parts, expected", [
    ("detector", "rpn-shared-frozen", ["backbone", "rpn", "roi_head"], None),
    ("detector", "detector-shared-frozen", ["backbone", "rpn", "roi_head"], None),
    ("detector", "joint", ["backbone", "rpn", "roi_head"], None),
    ("detector", "rpn", ["backbone", "rpn"], "a step-1 RPN (stage 'rpn')"),
    ("detector", "final", ["backbone", "rpn", "roi_head"], "stage 'final', which frcnn does not write"),
    ("rpn", "detector", ["backbone", "roi_head"], None),
    ("rpn", "rpn-shared-frozen", ["backbone", "rpn", "roi_head"], None),
    ("rpn", "rpn", ["backbone", "rpn"], "step 3 freezes the step-2 detector's convs"),
])
def test_which_init_checkpoints_a_frozen_step_warns_about(kind, stage, parts, expected):
    from frcnn_cli.train.steps import shared_convs_warning, stage_spec

    info = {"init": "x.pt", "init_stage": stage, "init_parts": parts}
    warning = shared_convs_warning(stage_spec(kind, freeze_shared=True), info)
    assert warning is None if expected is None else expected in warning
    assert shared_convs_warning(stage_spec(kind), info) is None  # not frozen: any start is the user's choice
    if warning is not None:
        assert ("fc6/fc7" in warning) == (kind == "detector" and "roi_head" not in parts)


@pytest.mark.parametrize("problem", ["proposals", "init"])
def test_a_bad_init_or_proposal_file_fails_before_the_start_line(four_steps, frcnn, train_options, tmp_path,
                                                                 problem):
    proposals = tmp_path / "missing.h5" if problem == "proposals" else four_steps["props1"]
    init = tmp_path / "missing.pt" if problem == "init" else "none"
    result = frcnn("train-detector", "--data", four_steps["data"], "--out", tmp_path / "det.pt", "--init", init,
                   "--proposals", proposals, "--iters", 1, *train_options(), ok=False)
    assert result.exit_code != 0 and "missing." in result.output
    assert result.output.startswith("Error:"), result.output  # no "training detector on 12 images" first
