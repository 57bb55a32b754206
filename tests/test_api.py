"""The Python API (docs/python-api.md): the stable surface pinned, and what each entry promises.

A change to a name or a signature below is a change of the public API: make it on purpose and say so in
CHANGELOG.md.
"""

from __future__ import annotations

import dataclasses
import doctest
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import frcnn_cli
from frcnn_cli.config import RuntimeConfig
from frcnn_cli.config_io import Overrides
from frcnn_cli.errors import CheckpointError, ConfigError, DataError

API = {  # the notebook's entries: name -> signature (annotations left out)
    "load_predictor": "(model, device=None, *, overrides=(), require=('rpn', 'roi_head'), mode='test', "
                      "score_thresh=None, nms_thresh=None, pre_nms_top_n=None, post_nms_top_n=None, ablation=None, "
                      "on_runtime=None)",
    "Predictor": "(model, device, settings, runtime=None, *, owned=False)",
    "detect_images": "(predictor, images, *, batch_size=1, score_thresh=0.5, classes_filter=None, progress=None)",
    "draw_detections": "(image, detections, out_path, *, classes=None)",
    "evaluate": "(predictor, data, *, images=None, metric='11point', coco=False, batch_size=1, progress=None)",
    "train": "(data, workdir, *, config=None, overrides=(), mode=None, iters=None, epochs=None, time_budget=None, "
             "val=None, val_every=None, patience=None, seed=None, device=None, checkpoint_every=None, resume=False, "
             "budget_from=None, progress=None, on_step=None, on_note=None, on_warning=None, on_plan=None, "
             "on_validation=None, on_runtime=None)",
    "read_manifest": "(path)",
    "Config": None,  # a dataclass: its sections below
    "get_preset": "(name)",
    "FrcnnError": None,
}
PARTS = ["apply_overrides", "FasterRCNN", "load_model", "save_checkpoint", "detect_manifest", "evaluate_detections",
         "ProposalStore"]
CONFIG_SECTIONS = ["name", "backbone", "init", "seed", "input", "anchors", "rpn", "roi_head", "solver"]


def bare(obj) -> str:
    """``obj``'s signature without annotations (they are strings that name internal types)."""
    sig = inspect.signature(obj)
    return str(sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                           return_annotation=inspect.Signature.empty))


def test_the_exported_names_and_signatures_are_the_pinned_ones():
    assert frcnn_cli.__all__ == ["__version__", *API, *PARTS]
    for name, signature in API.items():
        if signature is not None:
            assert bare(getattr(frcnn_cli, name)) == signature, name
    assert bare(frcnn_cli.Predictor.for_model) == "(model, device, *, runtime=None, owned=False, mode='test', " \
                                                  "overrides=(), **settings)"
    assert [f.name for f in dataclasses.fields(frcnn_cli.Config)] == CONFIG_SECTIONS
    assert issubclass(frcnn_cli.FrcnnError, Exception)


def test_every_entry_has_an_example_and_the_runnable_ones_run():
    for name in API:
        assert ">>>" in (getattr(frcnn_cli, name).__doc__ or ""), f"{name}: no example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    finder = doctest.DocTestFinder(recurse=False)
    ran = 0
    for name in API:
        for test in finder.find(getattr(frcnn_cli, name), name, globs={"frcnn_cli": frcnn_cli}):
            result = runner.run(test)
            assert result.failed == 0, name
            ran += result.attempted
    assert ran >= 4  # Config's and get_preset's examples need no file: they run


def test_train_and_evaluate_are_the_functions_though_their_subpackages_are_imported():
    import frcnn_cli.evaluate.voc  # noqa: F401 - binds the subpackages to the package's attributes
    import frcnn_cli.train.api  # noqa: F401

    assert callable(frcnn_cli.train) and callable(frcnn_cli.evaluate)
    assert frcnn_cli.train.api.train.__name__ == "train" and frcnn_cli.evaluate.voc.IOU_THRESH == 0.5


# --------------------------------------------------------------------------------------------------
# load_predictor and Overrides


def test_overrides_are_parsed_once_into_config_and_runtime_items():
    overrides = Overrides.parse(["roi_head.nms_thresh=0.4", "runtime.num_workers=0", "solver.amp=false"])
    assert overrides.config_items == ["roi_head.nms_thresh=0.4"]
    assert [key for _, key, _ in overrides.runtime] == ["runtime.num_workers", "solver.amp"]
    assert overrides.apply(frcnn_cli.get_preset("tiny")).roi_head.nms_thresh == 0.4
    runtime = overrides.apply_runtime(RuntimeConfig(num_workers=3, amp=True))
    assert (runtime.num_workers, runtime.amp) == (0, False)
    assert Overrides.parse(overrides) is overrides
    with pytest.raises(ConfigError, match="'rpn.conv_channels' is fixed by the checkpoint ck.pt"):
        Overrides.parse(["rpn.conv_channels=8"]).check_test_time("ck.pt")
    with pytest.raises(ConfigError, match="is not key=value"):
        Overrides.parse(["roi_head.nms_thresh"])
    with pytest.raises(TypeError):
        Overrides.parse("roi_head.nms_thresh=0.4")


def test_load_predictor_checks_the_set_keys_before_it_reads_the_file(tmp_path):
    missing = tmp_path / "nothere.pt"
    with pytest.raises(ConfigError, match="'solver.lr' is fixed by the checkpoint"):
        frcnn_cli.load_predictor(missing, "cpu", overrides=["solver.lr=0.1"])
    with pytest.raises(CheckpointError, match="nothere.pt"):
        frcnn_cli.load_predictor(missing, "cpu", overrides=["roi_head.nms_thresh=0.4"])


def test_load_predictor_takes_the_flags_and_the_set_items_as_arguments(tiny_checkpoint):
    ckpt = tiny_checkpoint()
    seen = []
    predictor = frcnn_cli.load_predictor(ckpt, "cpu", score_thresh=0.01, on_runtime=lambda *a: seen.append(a),
                                         overrides=["roi_head.nms_thresh=0.4", "runtime.num_workers=0"])
    assert predictor.settings.detections == type(predictor.settings.detections)(0.01, 0.4, 100)
    assert predictor.runtime.num_workers == 0 and seen == [(torch.device("cpu"), predictor.runtime)]
    dump = frcnn_cli.load_predictor(ckpt, "cpu", mode="dump", require=("rpn",), nms_thresh=0.6, post_nms_top_n=50)
    assert (dump.settings.proposals.nms_thresh, dump.settings.proposals.post_nms_top_n) == (0.6, 50)
    assert dump.settings.config.rpn.nms_thresh == 0.7  # the flags are settings, not written into the config
    higher = frcnn_cli.load_predictor(ckpt, "cpu", score_thresh=0.5)
    assert higher.settings.detections.score_thresh == 0.05  # a floor: never raised
    with pytest.raises(CheckpointError, match="has no detection head"):
        frcnn_cli.load_predictor(tiny_checkpoint("rpn.pt", parts=("backbone", "rpn")), "cpu")


# --------------------------------------------------------------------------------------------------
# detect_images, draw_detections, evaluate


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 64x48 photo of random 8-pixel blocks (edges for the RPN), saved losslessly."""
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    path = tmp_path_factory.mktemp("photo") / "blocks.png"
    Image.fromarray(pixels).save(path)
    return path


def test_detect_images_takes_paths_pil_images_numpy_arrays_and_tensors_alike(tiny_checkpoint, photo):
    predictor = frcnn_cli.load_predictor(tiny_checkpoint(), "cpu", overrides=["runtime.num_workers=0"])
    pil = Image.open(photo)
    array = np.asarray(pil)
    inputs = [photo, str(photo), pil, array, torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()]
    results = frcnn_cli.detect_images(predictor, inputs, score_thresh=0.0)
    assert [r["image"] for r in results] == [str(photo), str(photo), None, None, None]
    assert results[0]["detections"]  # random weights: every class scores about 1/6 > 0
    assert all(r["detections"] == results[0]["detections"] and (r["width"], r["height"]) == (64, 48)
               for r in results)
    grey = frcnn_cli.detect_images(predictor, [np.asarray(pil.convert("L"))], score_thresh=0.0)[0]
    assert (grey["width"], grey["height"]) == (64, 48)
    with pytest.raises(DataError, match=r"image 1 is a float64 array of shape \[48, 64, 3\]"):
        frcnn_cli.detect_images(predictor, [photo, array / 255.0])
    with pytest.raises(TypeError, match="a list of images"):
        frcnn_cli.detect_images(predictor, photo)


def test_draw_detections_draws_an_image_in_memory_as_its_file(tiny_checkpoint, photo, tmp_path):
    detections = [{"label": "car", "score": 0.9, "box": [8.0, 8.0, 40.0, 30.0]}]
    from_file = frcnn_cli.draw_detections(photo, detections, tmp_path / "a.png")
    in_memory = frcnn_cli.draw_detections(Image.open(photo), detections, tmp_path / "b.png")
    assert from_file.read_bytes() == in_memory.read_bytes()
    assert np.asarray(Image.open(from_file)).tolist() != np.asarray(Image.open(photo)).tolist()


def test_evaluate_reads_a_manifest_file_and_refuses_other_classes(tiny_checkpoint, synth_set):
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.evaluate.run import evaluate_model

    train, test = synth_set
    predictor = frcnn_cli.load_predictor(tiny_checkpoint(), "cpu", overrides=["runtime.num_workers=0"])
    done = []
    result = frcnn_cli.evaluate(predictor, test, progress=lambda n, total: done.append((n, total)))
    direct = evaluate_model(predictor, read_manifest(test))
    assert repr(result.voc["ap"]) == repr(direct.voc["ap"])  # NaN for a class without objects in the set
    assert result.voc["map"] == direct.voc["map"] > 0
    assert done[-1] == (4, 4) and result.voc["metric"] == "11point"
    other = frcnn_cli.load_predictor(tiny_checkpoint("other.pt", classes=("cat", "dog")), "cpu")
    with pytest.raises(DataError, match="only in the model: cat, dog"):
        frcnn_cli.evaluate(other, test)
    with pytest.raises(ConfigError, match="metric 'map' is not one of 11point, area"):
        frcnn_cli.evaluate(predictor, test, metric="map")
