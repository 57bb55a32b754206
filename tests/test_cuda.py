"""The GPU path against the CPU in float32: forward and backward, detections, eval, one step of every training
stage, and proposal dumps, each in every device mode of ``device_compare.py``.

``cuda-fp32`` and ``cuda-bf16`` are marked ``cuda`` and skip without a GPU: ``pytest -m cuda`` runs them on a GPU
machine (``benchmarks/gpu_check.py`` does). ``cpu-bf16`` runs everywhere: the same comparisons with the CPU
under bf16 autocast, which proves that each comparison and its tolerance hold for bf16 arithmetic (and that the
code runs under autocast at all). The model is the tiny preset at 64 px (96 px for training).

Training comparisons take every anchor and every RoI (``rpn.batch_size_per_image`` and
``roi_head.batch_size_per_image`` above their counts), so that the losses do not depend on the device's random
numbers, only on its arithmetic.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import single_thread, tiny_config, tiny_runtime
from device_compare import (
    CPU_BF16,
    CUDA_BF16,
    CUDA_FP32,
    Mode,
    detections_found_again,
    joint_rel_error,
    proposals_found_again,
    rel_error,
    self_labelled,
)

from frcnn_cli.data.manifest import read_manifest, write_manifest
from frcnn_cli.data.proposal_store import ProposalStore
from frcnn_cli.data.targets import Targets
from frcnn_cli.devices import place_model
from frcnn_cli.evaluate.voc import detections_by_class, evaluate_detections
from frcnn_cli.inference import InferenceSettings, Predictor, detect_manifest, dump_proposals
from frcnn_cli.model.checkpoint import read_checkpoint, read_init
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.train.stage import StageRequest, run_stage
from frcnn_cli.train.steps import build_stage_model, stage_spec

NO_GPU = "needs a CUDA GPU: run `pytest -m cuda` on a GPU machine (benchmarks/gpu_check.py)"
ON_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)]
MODES = [pytest.param(CPU_BF16, id="cpu-bf16"), pytest.param(CUDA_FP32, id="cuda-fp32", marks=ON_CUDA),
         pytest.param(CUDA_BF16, id="cuda-bf16", marks=ON_CUDA)]
EVERY_ROI = ("rpn.batch_size_per_image=4096", "roi_head.batch_size_per_image=4096")
CLASSES = ["circle", "bottle", "car", "triangle", "donut"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=MODES)
def mode(request) -> Mode:
    return request.param


def _inputs():
    """Two images of 64x96 and 64x80 (padded to 64x96), their ground truth and fixed proposals."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 96, generator=gen)
    sizes, scales = torch.tensor([[64, 96], [64, 80]]), torch.ones(2)
    targets = Targets([torch.tensor([[10.0, 10.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]),
                       torch.tensor([[5.0, 5.0, 30.0, 60.0]])], [torch.tensor([1, 2]), torch.tensor([3])])
    proposals = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 60.0, 50.0], [30.0, 5.0, 95.0, 60.0],
                               [12.0, 8.0, 48.0, 44.0]]),
                 torch.tensor([[0.0, 0.0, 30.0, 30.0], [4.0, 6.0, 33.0, 58.0]])]
    return images, sizes, scales, targets, proposals


def _placed(mode: Mode, model: FasterRCNN, *, training: bool) -> FasterRCNN:
    """A copy of ``model`` on the mode's device as frcnn places it (``place_model``: channels-last, direct convs)."""
    placed = copy.deepcopy(model)
    place_model(placed, torch.device(mode.device), mode.runtime(), training=training)
    return placed


_OUTPUTS = ("features", "rpn_cls_logits", "rpn_deltas", "class_logits", "box_deltas")


@pytest.mark.parametrize("pooler", ["roipool", "roialign"])
def test_forward_matches_the_cpu_in_float32(mode, pooler):
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(f"roi_head.pooler={pooler}"), CLASSES).eval()
    images, sizes, scales, _, proposals = _inputs()
    with torch.inference_mode():
        ref = model(images, sizes, scales, proposals=proposals)
        device = torch.device(mode.device)
        placed = _placed(mode, model, training=False)
        x = images.to(device).contiguous(memory_format=torch.channels_last)
        with mode.autocast():
            got = placed(x, sizes.to(device), scales.to(device), proposals=[p.to(device) for p in proposals])
    for name in _OUTPUTS:
        assert rel_error(getattr(got, name), getattr(ref, name)) < mode.forward_tol, name


def _losses_and_grads(model: FasterRCNN, mode: Mode | None, inputs) -> tuple[dict, dict]:
    images, sizes, scales, targets, proposals = inputs
    device = torch.device(mode.device if mode else "cpu")
    model.zero_grad(set_to_none=True)
    images = images.to(device)
    if mode is not None and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    targets = targets.to(device)
    with mode.autocast() if mode else torch.autocast("cpu", enabled=False):
        out = model(images, sizes.to(device), scales.to(device), targets=targets,
                    proposals=[p.to(device) for p in proposals], sample_rois=True)
        losses = {k: v.float() for k, v in model.losses(out, targets, sizes.to(device)).items()}
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return losses, grads


@pytest.mark.parametrize("pooler", ["roipool", "roialign"])
def test_backward_matches_the_cpu_in_float32(mode, pooler):
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(f"roi_head.pooler={pooler}", *EVERY_ROI), CLASSES).train()
    inputs = _inputs()
    ref_losses, ref_grads = _losses_and_grads(model, None, inputs)
    losses, grads = _losses_and_grads(_placed(mode, model, training=True), mode, inputs)
    assert sorted(losses) == ["loss_box", "loss_cls", "loss_rpn_box", "loss_rpn_cls"]
    for key, value in ref_losses.items():
        assert rel_error(losses[key], value) < mode.loss_tol, key
    assert len(grads) == len(list(model.parameters()))
    assert joint_rel_error(grads, ref_grads) < mode.grad_tol


# --------------------------------------------------------------------------------------------------
# inference: detections, eval, proposal dumps


def _predictor(model: FasterRCNN, on: Mode | None, **settings) -> Predictor:
    """``model``'s Predictor in mode ``on`` (None: the CPU in float32, frcnn's CPU runtime)."""
    device, runtime = (on.device, on.runtime()) if on else ("cpu", tiny_runtime())
    return Predictor(model, device, InferenceSettings.from_config(model.cfg, **settings), runtime)


def _detections(model, mode: Mode | None, manifest) -> list[dict]:
    with mode.autocast() if mode else torch.autocast("cpu", enabled=False):
        return detect_manifest(_predictor(model, mode), manifest, batch_size=2)


@pytest.fixture(scope="module")
def tiny_model() -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(tiny_config(), CLASSES)


def test_detections_match_the_cpu(mode, tiny_model, synth_set):
    manifest = read_manifest(synth_set[1])
    ref = _detections(tiny_model, None, manifest)
    got = _detections(tiny_model, mode, manifest)
    assert all(d["boxes"].device.type == "cpu" for d in got)
    assert sum(len(d["scores"]) for d in ref) >= 100
    assert abs(sum(len(d["scores"]) for d in got) / sum(len(d["scores"]) for d in ref) - 1) < 0.05
    assert detections_found_again(ref, got, score_tol=mode.score_tol) >= mode.match


def test_eval_map_matches_the_cpu(mode, tiny_model, synth_set, tmp_path):
    truth = self_labelled(read_manifest(synth_set[1]), _detections(tiny_model, None, read_manifest(synth_set[1])))
    write_manifest(tmp_path / "truth.json", truth)
    manifest = read_manifest(tmp_path / "truth.json")

    def mean_ap(m: Mode | None) -> float:
        dets = _detections(tiny_model, m, manifest)
        return evaluate_detections(detections_by_class(dets, len(CLASSES)), manifest)["map"]

    ref = mean_ap(None)
    assert ref > 0.6  # the reference finds its own boxes again
    assert abs(mean_ap(mode) - ref) <= mode.map_tol


def test_proposal_dump_matches_the_cpu(mode, tiny_checkpoint, synth_set, tmp_path):
    from frcnn_cli.model.checkpoint import load_model

    checkpoint = tiny_checkpoint()
    model, _ = load_model(checkpoint)
    manifest = read_manifest(synth_set[1])

    def dump(m: Mode | None, out: Path) -> list:
        with m.autocast() if m else torch.autocast("cpu", enabled=False):
            dump_proposals(_predictor(model, m, mode="dump"), manifest, out, checkpoint_path=checkpoint,
                           batch_size=2)
        with ProposalStore(out) as store:
            return [store.get(i) for i in range(len(manifest.images))]

    ref, got = dump(None, tmp_path / "cpu.h5"), dump(mode, tmp_path / f"{mode.name}.h5")
    for (boxes, _), (ref_boxes, _) in zip(got, ref):  # NMS keeps about as many (ties break either way)
        assert 0 < len(boxes) <= 300 and abs(len(boxes) - len(ref_boxes)) <= 0.05 * len(ref_boxes)
    assert all(bool((s[:-1] >= s[1:]).all()) for _, s in got)
    assert proposals_found_again(ref, got, top=50, score_tol=mode.score_tol) >= mode.match


# --------------------------------------------------------------------------------------------------
# training: one step of each stage


STAGES = {"rpn": ("rpn", False, "none", None), "detector": ("detector", False, "none", "props1"),
          "rpn-frozen": ("rpn", True, "det1", None), "detector-frozen": ("detector", True, "rpn2", "props2"),
          "joint": ("joint", False, "none", None)}
_reference_steps: dict[str, tuple] = {}


def _one_step(stage: str, four_steps, train_config, out: Path, mode: Mode | None) -> tuple[dict, dict, dict]:
    """One iteration of ``stage`` from the four-step run's inputs: (losses, parts before, parts after)."""
    kind, frozen, init, proposals = STAGES[stage]
    cfg, spec = train_config(*EVERY_ROI), stage_spec(kind, freeze_shared=frozen)
    init = read_init("none" if init == "none" else str(four_steps[init]))
    torch.manual_seed(cfg.seed)
    before = build_stage_model(cfg, read_manifest(four_steps["data"]).classes, spec, init)[0].state_dict()
    runtime = mode.runtime("runtime.log_every=1") if mode else tiny_runtime("runtime.log_every=1")
    request = StageRequest(cfg=cfg, spec=spec, manifest=read_manifest(four_steps["data"]),
                           manifest_path=four_steps["data"], out=out, init=init,
                           device=torch.device(mode.device if mode else "cpu"), runtime=runtime, iters=1,
                           proposals_path=four_steps[proposals] if proposals else None,
                           metrics_path=out.with_suffix(".jsonl"))
    with mode.autocast() if mode else torch.autocast("cpu", enabled=False):
        run_stage(request)
    row = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[-1])
    after = {f"{p}.{k}": v for p, sd in read_checkpoint(out)["parts"].items() for k, v in sd.items()}
    return {k: v for k, v in row.items() if k.startswith("loss_")}, before, after


@pytest.mark.parametrize("stage", list(STAGES))
def test_one_training_step_matches_the_cpu(mode, stage, four_steps, train_config, tmp_path):
    if stage not in _reference_steps:
        with single_thread():
            _reference_steps[stage] = _one_step(stage, four_steps, train_config, tmp_path / "cpu.pt", None)
    ref_losses, before, ref_after = _reference_steps[stage]
    losses, _, after = _one_step(stage, four_steps, train_config, tmp_path / f"{mode.name}.pt", mode)
    assert losses.keys() == ref_losses.keys() and losses
    for key, value in ref_losses.items():
        assert abs(losses[key] - value) <= mode.loss_tol * max(abs(value), 1e-3) * (3 if stage == "joint" else 1), key
    trained = [p for p in _trainable(stage) if any(k.startswith(p + ".") for k in after)]
    moved = {k: after[k] - before[k] for k in after if k.split(".")[0] in trained}
    ref_moved = {k: ref_after[k] - before[k] for k in moved}
    assert joint_rel_error(moved, ref_moved) < mode.grad_tol
    for key in (k for k in after if k.split(".")[0] not in trained):
        assert torch.equal(after[key], before[key]), key  # frozen parts are bit-identical on the device too


def _trainable(stage: str) -> tuple[str, ...]:
    kind, frozen, _, _ = STAGES[stage]
    return stage_spec(kind, freeze_shared=frozen).trainable


# --------------------------------------------------------------------------------------------------
# the commands on CUDA (no CPU twin: the CPU runs them in every other test file)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_detect_eval_and_dump_commands_on_cuda_match_the_cpu(frcnn, tiny_checkpoint, synth_set, tmp_path):
    checkpoint, data = tiny_checkpoint(), synth_set[1]
    manifest = read_manifest(data)
    images = [manifest.image_path(rec) for rec in manifest.images]
    workers = ("--set", "runtime.num_workers=2")  # pinned batches from worker processes
    results = {}
    for device in ("cpu", "cuda"):
        detect = frcnn("detect", *images, "--model", checkpoint, "--json", "--score-thresh", 0.05,
                       "--batch-size", 2, "--device", device, *workers)
        evaluate = frcnn("eval", "--model", checkpoint, "--data", data, "--json", "--batch-size", 2,
                         "--device", device, *workers)
        frcnn("dump-proposals", "--model", checkpoint, "--data", data, "--out", tmp_path / f"{device}.h5",
              "--device", device, *workers)
        with ProposalStore(tmp_path / f"{device}.h5") as store:
            proposals = [store.get(i) for i in range(len(images))]
        results[device] = (json.loads(detect.stdout), json.loads(evaluate.stdout), proposals)
    (cpu_detect, cpu_eval, cpu_props), (gpu_detect, gpu_eval, gpu_props) = results["cpu"], results["cuda"]

    def as_tensors(doc) -> list[dict]:
        return [{"boxes": torch.tensor([d["box"] for d in image["detections"]]).reshape(-1, 4),
                 "scores": torch.tensor([d["score"] for d in image["detections"]]),
                 "labels": torch.tensor([CLASSES.index(d["label"]) + 1 for d in image["detections"]])}
                for image in doc]

    assert detections_found_again(as_tensors(cpu_detect), as_tensors(gpu_detect), score_tol=0.03) >= 0.9
    assert abs(gpu_eval["map"] - cpu_eval["map"]) <= 0.05
    assert proposals_found_again(cpu_props, gpu_props, top=50, score_tol=0.03) >= 0.9
