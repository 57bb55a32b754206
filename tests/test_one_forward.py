"""The refactor's contract (docs/architecture.md): one forward, settings passed as values, runtime settings
never replayed, the --init file read once. The outputs of the commands equal a forward composed here from
the model's parts, and each setting is checked at the hop where it takes effect."""

from __future__ import annotations

import json

import h5py
import pytest
import torch
from conftest import cpu_predictor, single_thread

from frcnn_cli.ablations import ProposalAblation
from frcnn_cli.config import runtime_defaults
from frcnn_cli.data.images import batch_from_images, find_images, load_image
from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.evaluate.voc import detections_by_class, evaluate_detections
from frcnn_cli.inference import InferenceSettings, detect_manifest, predict_manifest
from frcnn_cli.model.checkpoint import load_model
from frcnn_cli.model.postprocess import DetectionSettings, postprocess_detections
from frcnn_cli.model.rpn import generate_proposals, objectness_scores

PLAIN = ("--set", "runtime.num_workers=0", "--set", "runtime.cpu_winograd=false", "--set",
         "runtime.channels_last=false", "--device", "cpu")
ABLATIONS = {"none": [], "no-nms": ["--no-rpn-nms"], "no-scores": ["--no-rpn-scores"], "no-reg": ["--no-rpn-reg"],
             "n7": ["--proposals-n", "7"], "no-nms-n30": ["--no-rpn-nms", "--proposals-n", "30"]}


@torch.no_grad()
def _composed_detections(model, image):
    """Detections of one image, composed by hand from the parts with the config's test-time numbers."""
    cfg = model.cfg
    batch = batch_from_images([image], cfg.input)
    features = model.backbone(batch.tensor)
    logits, deltas = model.rpn(features)
    anchors = model.anchor_grid.grid(*features.shape[-2:], features.device)
    boxes, _ = generate_proposals(anchors, objectness_scores(logits), deltas, batch.image_sizes,
                                  cfg.rpn.min_size * batch.scales, pre_nms_top_n=cfg.rpn.test_pre_nms_top_n,
                                  post_nms_top_n=cfg.rpn.test_post_nms_top_n, nms_thresh=cfg.rpn.nms_thresh)[0]
    rois = torch.cat((torch.zeros(len(boxes), 1), boxes), 1)
    class_logits, box_deltas = model.roi_head(features, rois)
    rules = DetectionSettings(score_thresh=cfg.roi_head.score_thresh, nms_thresh=cfg.roi_head.nms_thresh,
                              detections_per_image=cfg.roi_head.detections_per_image)
    return postprocess_detections(class_logits, box_deltas, [boxes], batch.image_sizes, batch.scales,
                                  box_coder=model.box_coder, settings=rules, original_sizes=batch.original_sizes)[0]


def test_detect_json_equals_the_forward_composed_from_the_parts(tiny_checkpoint, synth_set, frcnn):
    ckpt = tiny_checkpoint()
    images = find_images([read_manifest(synth_set[1]).root])
    printed = json.loads(frcnn("detect", *images, "--model", ckpt, "--json", "--score-thresh", "0.05", *PLAIN).stdout)
    model, _ = load_model(ckpt)
    assert len(printed) == len(images)
    for result, path in zip(printed, images):
        want = _composed_detections(model, load_image(path))
        got = result["detections"]
        assert len(got) == len(want["scores"]) > 0
        assert [model.classes.index(d["label"]) + 1 for d in got] == want["labels"].tolist()
        assert [d["score"] for d in got] == pytest.approx(want["scores"].tolist(), abs=2e-6)
        assert torch.allclose(torch.tensor([d["box"] for d in got]), want["boxes"], atol=2e-3)


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_eval_json_with_each_ablation_is_the_librarys_evaluation(ablation, tiny_checkpoint, synth_set, frcnn):
    ckpt = tiny_checkpoint()
    printed = json.loads(frcnn("eval", "--model", ckpt, "--data", synth_set[1], "--json", *ABLATIONS[ablation],
                               *PLAIN).stdout)
    args = ABLATIONS[ablation]
    switches = ProposalAblation(nms="--no-rpn-nms" not in args, use_scores="--no-rpn-scores" not in args,
                                use_regression="--no-rpn-reg" not in args,
                                top_n=int(args[args.index("--proposals-n") + 1]) if "--proposals-n" in args else None)
    model, _ = load_model(ckpt)
    predictor = cpu_predictor(model, ablation=switches,
                              runtime=("runtime.cpu_winograd=false", "runtime.channels_last=false"))
    manifest = read_manifest(synth_set[1])
    result = evaluate_detections(detections_by_class(detect_manifest(predictor, manifest), len(manifest.classes)),
                                 manifest)
    assert printed["map"] == pytest.approx(result["map"], abs=1e-12)
    want = {name: None if ap != ap else ap for name, ap in result["ap"].items()}  # JSON's null for NaN
    assert printed["ap"] == pytest.approx(want, abs=1e-12)


def test_test_time_settings_travel_as_values_and_the_model_is_never_patched(tiny_checkpoint, synth_set):
    model, _ = load_model(tiny_checkpoint())
    before = model.cfg
    settings = InferenceSettings.from_config(
        model.cfg, overrides=["rpn.test_post_nms_top_n=5", "roi_head.score_thresh=0.18"], score_thresh=0.3)
    assert settings.proposals.post_nms_top_n == 5 and settings.proposer.settings.post_nms_top_n == 5
    assert settings.detections.score_thresh == 0.18  # a floor lowers the threshold, never raises it
    predictor = cpu_predictor(model, overrides=["rpn.test_post_nms_top_n=5", "roi_head.score_thresh=0.18"])
    detections, proposals = predict_manifest(predictor, read_manifest(synth_set[1]), proposals=True)
    assert all(0 < len(p) <= 5 for p in proposals)
    assert all((d["scores"] > 0.18).all() for d in detections) and any(len(d["scores"]) for d in detections)
    assert model.cfg is before and predictor.model is not model  # the caller's model: untouched
    assert type(model.backbone.conv5) is torch.nn.Conv2d  # no Winograd swapped into it either


def test_a_dump_records_the_settings_it_ran_with(tiny_checkpoint, synth_set, frcnn, tmp_path):
    ckpt, out = tiny_checkpoint(parts=("backbone", "rpn"), stage="rpn"), tmp_path / "p.h5"
    frcnn("dump-proposals", "--model", ckpt, "--data", synth_set[1], "--out", out, "--nms", "0.6",
          "--post-nms-top-n", "7", "--set", "rpn.min_size=2", *PLAIN)
    with h5py.File(out, "r") as f:
        attrs = dict(f.attrs)
        stored = [f[f"images/{i}/boxes"][()] for i in range(len(f["image_ids"]))]
    config = json.loads(attrs["config"])
    assert (attrs["nms_thresh"], attrs["post_nms_top_n"], attrs["min_size"]) == (0.6, 7, 2.0)
    assert (config["rpn"]["nms_thresh"], config["rpn"]["dump_post_nms_top_n"], config["rpn"]["min_size"]) == (
        0.6, 7, 2.0)
    assert "num_workers" not in config["solver"]  # runtime settings are not part of the record
    model, _ = load_model(ckpt)
    predictor = cpu_predictor(model, mode="dump", nms_thresh=0.6, post_nms_top_n=7, overrides=["rpn.min_size=2"],
                              runtime=("runtime.cpu_winograd=false", "runtime.channels_last=false"))
    batches = list(predictor.manifest_batches(read_manifest(synth_set[1])))
    mine = [p[0] for b in batches for p in predictor.run(b, detections=False, proposals=True).proposals]
    assert [len(s) for s in stored] == [len(m) for m in mine] and all(len(m) <= 7 for m in mine)
    assert all(torch.equal(torch.from_numpy(s), m) for s, m in zip(stored, mine))


def test_runtime_settings_of_an_old_checkpoint_are_never_replayed(tiny_checkpoint):
    path = tiny_checkpoint()
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["solver"].update(num_workers=7, amp=False, log_every=3)  # as files written before the split
    torch.save(ckpt, path)
    model, _ = load_model(path)
    assert cpu_predictor(model).runtime.num_workers == 0  # the caller's runtime
    from frcnn_cli.inference import Predictor

    runtime = Predictor(model, "cpu", InferenceSettings.from_config(model.cfg)).runtime
    assert runtime == runtime_defaults("tiny")  # the tiny preset's defaults on this machine, not the file's
    assert (runtime.num_workers, runtime.log_every, runtime.amp) == (1, 10, None)  # amp: the machine's policy


def test_a_resumed_train_may_change_runtime_settings_but_not_the_recipe(synth_set, frcnn, tmp_path, train_options):
    work = tmp_path / "run"
    args = ["train", "--data", synth_set[0], "--workdir", work, "--mode", "joint", "--iters", "1", "--device", "cpu"]
    with single_thread():
        frcnn(*args, *train_options())
        again = frcnn(*args, *train_options("runtime.num_workers=1", "runtime.log_every=5", "solver.amp=false"))
    assert "already done" in again.stderr
    refused = frcnn(*args, *train_options("solver.lr=0.5"), ok=False)
    assert refused.exit_code == 2
    assert "other options (--set solver.lr 0.01 when the run started, 0.5 now;" in " ".join(refused.output.split())


def test_train_resume_on_a_folder_without_a_run_warns(synth_set, frcnn, tmp_path, train_options):
    with single_thread():
        result = frcnn("train", "--data", synth_set[0], "--workdir", tmp_path / "new", "--mode", "joint",
                       "--iters", "1", "--resume", "--device", "cpu", *train_options())
    message = " ".join(result.stderr.split())
    assert "--resume" in message and "holds no run to resume" in message
    assert (tmp_path / "new" / "final.pt").is_file()


def test_the_init_checkpoint_is_read_once(four_steps, frcnn, tmp_path, monkeypatch, train_options):
    from frcnn_cli.model import checkpoint

    reads, real = [], checkpoint.torch_load_safely
    monkeypatch.setattr(checkpoint, "torch_load_safely", lambda path, *a, **k: reads.append(str(path)) or real(
        path, *a, **k))
    with single_thread():
        frcnn("train-rpn", "--data", four_steps["data"], "--out", tmp_path / "rpn.pt", "--init", four_steps["det1"],
              "--freeze-shared", "--iters", "1", *train_options()[2:])
    assert reads.count(str(four_steps["det1"])) == 1
