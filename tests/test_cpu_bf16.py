"""bf16 autocast on the CPU: on by default only where the CPU computes bf16 natively (AVX512-BF16, AMX), forced
either way by ``runtime.amp``, and what stays float32 under it.

This machine may or may not compute bf16 natively; the detection is mocked both ways (``FRCNN_CPU_BF16``, or
torch's reports). Where bf16 is emulated the arithmetic is the native one (``test_cpu_bf16_convolution_...``:
inputs rounded to bf16, products summed in float32, the output rounded once), so the tolerances proven here hold
on a native CPU; only the speed differs. Tolerances are ``device_compare.CPU_BF16``'s (read off bf16 runs).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CLI, tiny_config, tiny_runtime
from device_compare import CPU_BF16, detections_found_again, self_labelled

from frcnn_cli.data.images import batch_from_images
from frcnn_cli.data.manifest import read_manifest, write_manifest
from frcnn_cli.data.targets import Targets
from frcnn_cli.devices import CPU_BF16_ENV, amp_enabled, autocast, cpu_bf16_kind
from frcnn_cli.evaluate.voc import detections_by_class, evaluate_detections
from frcnn_cli.inference import InferenceSettings, Predictor, detect_manifest
from frcnn_cli.model.checkpoint import read_checkpoint
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.rpn import ProposalSettings, RPNProposer
from frcnn_cli.model.winograd import WinogradConv2d, bf16_conv_path

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
CLASSES = ["circle", "bottle", "car", "triangle", "donut"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def native(monkeypatch):
    """``native(True | False)``: take this CPU for one that computes bf16 natively, or not."""
    return lambda on: monkeypatch.setenv(CPU_BF16_ENV, "1" if on else "0")


@pytest.fixture(scope="module")
def tiny_model() -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(tiny_config(), CLASSES)


def _predictor(model: FasterRCNN, *runtime: str, **settings) -> Predictor:
    return Predictor(model, CPU, InferenceSettings.from_config(model.cfg, **settings), tiny_runtime(*runtime))


# --------------------------------------------------------------------------------------------------
# the detection and the policy


@pytest.mark.parametrize(("amx", "avx512_bf16", "kind"), [(True, True, "amx"), (False, True, "avx512_bf16"),
                                                          (False, False, None)])
def test_native_bf16_is_what_torch_reports_of_the_cpu(monkeypatch, amx, avx512_bf16, kind):
    monkeypatch.delenv(CPU_BF16_ENV)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert cpu_bf16_kind() == kind
    assert amp_enabled(CPU) is (kind is not None)
    monkeypatch.setenv(CPU_BF16_ENV, "0" if kind else "1")  # the environment overrides the report
    assert amp_enabled(CPU) is (kind is None)


def test_the_policy_and_the_switch_on_each_device(native):
    native(False)
    assert (amp_enabled(CPU), amp_enabled(CPU, True), amp_enabled(CPU, False)) == (False, True, False)
    assert (amp_enabled(CUDA), amp_enabled(CUDA, False)) == (True, False)  # CUDA: on unless switched off
    native(True)
    assert (amp_enabled(CPU), amp_enabled(CPU, True), amp_enabled(CPU, False)) == (True, True, False)


def test_runtime_amp_is_true_false_or_auto_on_the_command_line_and_in_files(frcnn, tmp_path, assert_clean_error):
    from frcnn_cli.config_io import apply_runtime_overrides, load_config_file

    values = [apply_runtime_overrides(tiny_runtime(), [f"runtime.amp={v}"]).amp for v in ("true", "no", "auto")]
    assert values == [True, False, None] and tiny_runtime().amp is None
    (tmp_path / "a.toml").write_text('preset = "tiny"\n[runtime]\namp = "auto"\n')
    (tmp_path / "b.toml").write_text('preset = "tiny"\n[runtime]\namp = false\n')
    assert [load_config_file(tmp_path / f"{n}.toml")[1].amp for n in "ab"] == [None, False]
    result = frcnn("bench", *TINY_CLI, "--set", "runtime.amp=maybe", ok=False)
    assert_clean_error(result, "runtime.amp", "must be true, false or auto")


@pytest.mark.parametrize(("is_native", "setting", "dtype"), [
    (False, None, torch.float32), (True, None, torch.bfloat16),  # the default follows the CPU
    (False, "true", torch.bfloat16), (True, "false", torch.float32), (True, "auto", torch.bfloat16)])
def test_the_predictor_computes_in_the_precision_of_the_policy(native, tiny_model, is_native, setting, dtype):
    native(is_native)
    predictor = _predictor(tiny_model, *([f"runtime.amp={setting}"] if setting else []))
    batch = batch_from_images([torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)], tiny_model.cfg.input)
    with torch.inference_mode():
        out = predictor.forward(batch)
    assert predictor.amp is (dtype == torch.bfloat16)
    assert out.class_logits.dtype == dtype  # (the tiny backbone's GroupNorm gives float32 features either way)
    assert out.proposal_scores[0].dtype == torch.float32  # the score path is float32 either way


@pytest.mark.parametrize(("is_native", "setting", "precision", "note"), [
    (False, (), "float32", "float32"),
    (False, ("--set", "runtime.amp=true"), "bfloat16", "forced: this CPU emulates bf16"),
    (True, (), "bfloat16", "this CPU computes bf16 natively"),
    (True, ("--set", "runtime.amp=false"), "float32", "--set runtime.amp=false")])
def test_bench_says_which_precision_ran(frcnn, native, is_native, setting, precision, note):
    native(is_native)
    result = frcnn("bench", *TINY_CLI, *setting, "--runs", "1", "--warmup", "0", "--json")
    assert json.loads(result.stdout)["precision"] == precision
    assert note in " ".join(result.stderr.split())  # the console wraps its lines


# --------------------------------------------------------------------------------------------------
# accuracy: bf16 against float32 through frcnn's own switch


def test_detections_under_forced_bf16_are_within_tolerance_of_float32(tiny_model, synth_set, tmp_path):
    """90 % of the float32 detections found again (same label, IoU >= 0.9, score within 0.03) and the mAP on
    the float32 detections as ground truth within 0.05 (``device_compare.CPU_BF16``)."""
    manifest = read_manifest(synth_set[1])
    ref = detect_manifest(_predictor(tiny_model, "runtime.amp=false"), manifest, batch_size=2)
    got = detect_manifest(_predictor(tiny_model, "runtime.amp=true"), manifest, batch_size=2)
    assert sum(len(d["scores"]) for d in ref) >= 100
    assert detections_found_again(ref, got, score_tol=CPU_BF16.score_tol) >= CPU_BF16.match
    write_manifest(tmp_path / "truth.json", self_labelled(manifest, ref))
    truth = read_manifest(tmp_path / "truth.json")
    maps = [evaluate_detections(detections_by_class(detect_manifest(_predictor(tiny_model, f"runtime.amp={amp}"),
                                                                    truth), len(CLASSES)), truth)["map"]
            for amp in ("false", "true")]
    assert maps[0] > 0.6 and abs(maps[1] - maps[0]) <= CPU_BF16.map_tol, maps  # float32 finds its own boxes


def test_test_time_proposals_under_bf16_have_no_ranking_ties():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config("input.test_scale=320", "input.max_size=480"), CLASSES)
    for layer in (model.rpn.cls_logits, model.rpn.bbox_pred):  # spread scores, as a trained RPN's
        torch.nn.init.normal_(layer.weight, std=0.05)
    predictor = _predictor(model, "runtime.amp=true", mode="dump", nms_thresh=1.0, pre_nms_top_n=0,
                           post_nms_top_n=2000)
    batch = batch_from_images([torch.randint(0, 256, (3, 320, 480), dtype=torch.uint8)], model.cfg.input)
    _, scores = predictor.run(batch, detections=False, proposals=True).proposals[0]
    assert scores.dtype == torch.float32 and len(scores) == 2000
    assert len(torch.unique(scores)) >= 1990  # bf16 logits would give about 900 distinct values


# --------------------------------------------------------------------------------------------------
# training under bf16, and checkpoints either way


def test_a_training_step_under_cpu_bf16_keeps_float32_losses_weights_and_gradients(train_config):
    torch.manual_seed(0)
    model = FasterRCNN(train_config(), CLASSES).train()
    images, sizes = torch.randn(2, 3, 96, 128), torch.tensor([[96, 128], [96, 128]])
    targets = Targets([torch.tensor([[10.0, 10.0, 60.0, 70.0]]), torch.tensor([[30.0, 20.0, 90.0, 80.0]])],
                      [torch.tensor([0]), torch.tensor([2])])
    proposer = RPNProposer(ProposalSettings.from_config(model.cfg.rpn, "train"))  # joint training
    with autocast(CPU, True):
        out = model(images, sizes, torch.ones(2), targets=targets, proposer=proposer)
        losses = model.losses(out, targets, sizes)
    assert out.rpn_cls_logits.dtype == out.class_logits.dtype == torch.bfloat16  # the convs and fcs ran in bf16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters()))
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def test_checkpoints_trained_in_bf16_or_float32_load_and_run_either_way(frcnn, synth_set, train_options, tmp_path):
    data, test = synth_set
    maps = {}
    for trained in ("true", "false"):
        work = tmp_path / f"amp-{trained}"
        frcnn("train", "--data", data, "--workdir", work, "--mode", "joint", "--iters", "2",
              *train_options(f"runtime.amp={trained}"))
        final = read_checkpoint(work / "final.pt")
        assert final["provenance"]["runtime"]["precision"] == ("bfloat16" if trained == "true" else "float32")
        assert all(t.dtype == torch.float32 for part in final["parts"].values() for t in part.values()
                   if t.is_floating_point())  # autocast leaves the weights float32: nothing to convert
        for run in ("true", "false"):
            result = frcnn("eval", "--model", work / "final.pt", "--data", test, "--json",
                           "--set", f"runtime.amp={run}", "--set", "runtime.num_workers=0")
            maps[trained, run] = json.loads(result.stdout)["map"]
    for trained in ("true", "false"):  # two iterations learn little: the point is that each runs either way
        assert abs(maps[trained, "true"] - maps[trained, "false"]) <= CPU_BF16.map_tol, maps


# --------------------------------------------------------------------------------------------------
# convolutions under bf16


def test_cpu_bf16_convolution_rounds_its_inputs_and_accumulates_in_float32():
    """What oneDNN's native bf16 convolution computes (bf16 inputs, float32 sums, one rounding) is what this
    CPU computes under autocast too: within one bf16 step of the float32 convolution of the rounded inputs
    (ties of the final rounding may fall either way with another summation order)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 20, 24, generator=gen).relu_()
    w, b = torch.randn(96, 64, 3, 3, generator=gen) * (2 / 576) ** 0.5, torch.randn(96, generator=gen) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = F.conv2d(x, w, b, padding=1)
    ref = F.conv2d(*(t.bfloat16().double() for t in (x, w, b)), padding=1)
    step = ref.abs().clamp_min(1e-30).log2().floor().exp2() / 128  # the spacing of bf16 values near ref
    assert got.dtype == torch.bfloat16
    assert bool(((got.double() - ref).abs() <= step + 1e-6 * ref.abs().max()).all())


def test_winograd_convs_under_bf16_run_the_path_chosen_for_the_cpu():
    torch.manual_seed(0)
    conv = WinogradConv2d(128, 128)
    x = torch.randn(1, 128, 32, 32).relu_()
    with torch.no_grad():
        float32 = conv(x)  # Winograd, outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv.winograd_under_bf16 = True
            kept = conv(x.bfloat16())
            conv.winograd_under_bf16 = False
            cast = conv(x)
            direct = F.conv2d(x, conv.weight, conv.bias, padding=1)
        rounded_input = conv(x.bfloat16().float())
    assert kept.dtype == torch.float32 and (kept - rounded_input).abs().max() < 1e-6
    assert (kept - float32).abs().max() < 0.02 * float32.abs().max()  # only the input's bf16 rounding
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, direct)
    assert [bf16_conv_path(k, 128, 128) for k in (None, "avx512_bf16", "amx")] == ["winograd", "bf16", "bf16"]
    assert [bf16_conv_path(k, 512, 512) for k in (None, "avx512_bf16", "amx")] == ["winograd", "winograd", "bf16"]


@pytest.mark.parametrize(("is_native", "kept"), [(False, 2), (True, 0)])
def test_the_predictor_chooses_each_winograd_conv_path_for_the_cpu(native, tiny_model, is_native, kept):
    native(is_native)
    predictor = _predictor(tiny_model, "runtime.amp=true")
    flags = [m.winograd_under_bf16 for m in predictor.model.modules() if isinstance(m, WinogradConv2d)]
    assert len(flags) == 2 and sum(flags) == kept  # conv5 and the RPN conv, 128 -> 128
