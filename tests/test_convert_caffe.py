"""frcnn convert caffe: Caffe models in both layouts (written here) to frcnn's weights files and checkpoints.

Every converted tensor is compared with its blob, and a converted detector's forward with a hand-written
forward of py-faster-rcnn's test net (tests/caffe_nets.py) on an image where BGR vs RGB and background vs
foreground scores each change the answer. The nets are narrow copies of ZF and VGG16 (same layers and
names, fewer channels); the real shapes are checked on the real backbones on the meta device.
"""

from __future__ import annotations

import json

import pytest
import torch
from caffe_nets import (
    CAFFE_MEANS,
    RPN_CHANNELS,
    caffe_layers,
    narrow_backbones,
    random_blobs,
    raw_decode,
    reference_features,
    reference_head,
    reference_rpn,
    weight_shapes,
)
from caffe_writer import Layer, write_caffemodel

from frcnn_cli.convert.caffe import caffe_config, convert_caffe
from frcnn_cli.convert.caffe_layers import layer_slots
from frcnn_cli.data.images import batch_from_images
from frcnn_cli.data.voc import VOC_CLASSES
from frcnn_cli.model.backbones import build_backbone
from frcnn_cli.model.checkpoint import load_model, read_checkpoint
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.rpn import objectness_scores
from frcnn_cli.model.weights import init_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
LAYOUTS = ("layer", "layers")
ZF_VGG_CONV_KEYS = {"zf": {f"conv{i}": f"conv{i}" for i in range(1, 6)},
                    "vgg16": dict(zip(("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                                       "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"),
                                      (f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))))}


@pytest.fixture()
def narrow(monkeypatch):
    narrow_backbones(monkeypatch)


def _caffemodel(tmp_path, backbone, kind, layout, classes=20, seed=0, **options):
    blobs = random_blobs(weight_shapes(backbone, kind, classes), seed)
    path = write_caffemodel(tmp_path / f"{backbone}_{kind}_{layout}.caffemodel",
                            caffe_layers(blobs, python_layers=layout == "layer"), layout=layout,
                            name=backbone.upper(), **options)
    return path, blobs


# --------------------------------------------------------------------------------------------------
# the real backbones' shapes (meta device)


PROTOTXT_SHAPES = {  # py-faster-rcnn's prototxts: num_output, kernel, input channels
    "zf": {"conv1": (96, 3, 7, 7), "conv2": (256, 96, 5, 5), "conv3": (384, 256, 3, 3), "conv4": (384, 384, 3, 3),
           "conv5": (256, 384, 3, 3), "fc6": (4096, 9216), "fc7": (4096, 4096), "rpn_conv1": (256, 256, 3, 3),
           "rpn_cls_score": (18, 256, 1, 1), "rpn_bbox_pred": (36, 256, 1, 1), "cls_score": (21, 4096),
           "bbox_pred": (84, 4096)},
    "vgg16": {"conv1_1": (64, 3, 3, 3), "conv1_2": (64, 64, 3, 3), "conv2_1": (128, 64, 3, 3),
              "conv2_2": (128, 128, 3, 3), "conv3_1": (256, 128, 3, 3), "conv3_3": (256, 256, 3, 3),
              "conv4_1": (512, 256, 3, 3), "conv5_3": (512, 512, 3, 3), "fc6": (4096, 25088), "fc7": (4096, 4096),
              "rpn_conv1": (512, 512, 3, 3), "rpn_cls_score": (18, 512, 1, 1), "rpn_bbox_pred": (36, 512, 1, 1),
              "cls_score": (21, 4096), "bbox_pred": (84, 4096)},
}


@pytest.mark.parametrize("backbone", ["zf", "vgg16"])
def test_the_real_zf_and_vgg16_take_the_prototxt_shapes_under_py_faster_rcnn_names(backbone):
    with torch.device("meta"):
        model = FasterRCNN(caffe_config(backbone), list(VOC_CLASSES))
    shapes = {}
    for slot in layer_slots(backbone):
        state = getattr(model, slot.part).state_dict()
        shapes[slot.name] = tuple(state[f"{slot.module}.weight"].shape)
        assert state[f"{slot.module}.bias"].shape == (shapes[slot.name][0],)
    for name, shape in PROTOTXT_SHAPES[backbone].items():
        assert shapes[name] == shape, name
    every_key = {f"{part}.{k}" for part in FasterRCNN.part_names for k in getattr(model, part).state_dict()}
    filled = {f"{s.part}.{s.module}.{w}" for s in layer_slots(backbone) for w in ("weight", "bias")}
    assert filled == every_key  # a py-faster-rcnn detector fills every parameter of frcnn's model


# --------------------------------------------------------------------------------------------------
# ImageNet models


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backbone", ["zf", "vgg16"])
def test_imagenet_model_becomes_the_weights_file_init_reads_with_fc8_left_out(narrow, tmp_path, backbone, layout):
    path, blobs = _caffemodel(tmp_path, backbone, "imagenet", layout)
    report = convert_caffe(path, tmp_path / "imagenet.pth")
    assert (report.kind, report.backbone, report.layout, report.dropped) == ("imagenet", backbone, layout, ("fc8",))
    state = torch.load(tmp_path / "imagenet.pth", weights_only=True)
    fc = {"zf": {"fc6": "fc6", "fc7": "fc7"}, "vgg16": {"fc6": "classifier.0", "fc7": "classifier.3"}}[backbone]
    names = {**ZF_VGG_CONV_KEYS[backbone], **fc}
    assert set(state) == {f"{key}.{w}" for key in names.values() for w in ("weight", "bias")}
    for caffe_name, key in names.items():
        weight, bias = blobs[caffe_name]
        assert torch.equal(state[f"{key}.weight"], torch.from_numpy(weight)), caffe_name
        assert torch.equal(state[f"{key}.bias"], torch.from_numpy(bias)), caffe_name
    parts = build_backbone(backbone)
    init_backbone(parts, backbone, str(tmp_path / "imagenet.pth"))  # strict: every key, every shape
    if layout == "layer":  # a classifier of another name on fc7 is left out as fc8 is
        blobs["fc1000"] = blobs.pop("fc8")
        path = write_caffemodel(tmp_path / "renamed.caffemodel", caffe_layers(blobs))
        assert convert_caffe(path, tmp_path / "renamed.pth").dropped == ("fc1000",)
    conv1 = "conv1" if backbone == "zf" else "features.0"
    assert torch.equal(parts.shared.state_dict()[f"{conv1}.weight"], state[f"{conv1}.weight"])


# --------------------------------------------------------------------------------------------------
# py-faster-rcnn detectors


def _image(seed=1):
    # 600 x 700: the presets' test scale leaves it as it is; channels differ, so BGR vs RGB matters
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, 600, 700), generator=g, dtype=torch.uint8)
    image[0] = image[0] // 2 + 128  # a red cast
    return image


@pytest.mark.parametrize("backbone,layout", [("zf", "layer"), ("zf", "layers"), ("vgg16", "layer")])
def test_converted_detector_runs_py_faster_rcnns_test_net(narrow, tmp_path, backbone, layout):
    path, blobs = _caffemodel(tmp_path, backbone, "detector", layout)
    report = convert_caffe(path, tmp_path / "final.pt")
    assert (report.kind, report.parts, report.stage) == ("checkpoint", ("backbone", "rpn", "roi_head"),
                                                          "detector-shared-frozen")
    model, _ = load_model(tmp_path / "final.pt", require=("rpn", "roi_head"))
    image = _image()
    batch = batch_from_images([image], model.cfg.input)
    means = torch.tensor(CAFFE_MEANS)[:, None, None]
    bgr = image.flip(0).float()[None] - means
    torch.testing.assert_close(batch.tensor, bgr)  # frcnn's own input pipeline gives Caffe's input
    rois = torch.tensor([[0.0, 0.0, 320.0, 240.0], [96.5, 150.2, 500.0, 590.0], [330.0, 20.0, 699.0, 400.0]])
    with torch.no_grad():
        out = model(batch.tensor, batch.image_sizes, batch.scales, proposals=[rois])
        features = reference_features(backbone, blobs, bgr)
        scores, deltas = reference_rpn(backbone, blobs, features)
        cls_score, bbox_pred = reference_head(backbone, blobs, features, rois)
        rgb_features = reference_features(backbone, blobs, image.float()[None] - means)

    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.features, features, **close)
    assert (rgb_features - features).abs().max() > 100 * (out.features - features).abs().max() + 1e-3
    frcnn_scores = objectness_scores(out.rpn_cls_logits)[0]
    torch.testing.assert_close(frcnn_scores, scores, **close)
    assert (frcnn_scores - (1 - scores)).abs().max() > 0.1  # background and foreground told apart
    torch.testing.assert_close(out.rpn_deltas[0], deltas, **close)
    torch.testing.assert_close(out.class_logits, cls_score, **close)
    torch.testing.assert_close(out.box_deltas, bbox_pred, **close)
    # detections decode the raw deltas as py-faster-rcnn does (its bbox_pred is un-normalised when saved)
    torch.testing.assert_close(model.box_coder.decode(out.box_deltas, rois), raw_decode(bbox_pred, rois), **close)


def test_converted_checkpoint_holds_caffe_input_raw_deltas_and_its_provenance(narrow, tmp_path):
    path, blobs = _caffemodel(tmp_path, "zf", "detector", "layer")
    convert_caffe(path, tmp_path / "final.pt")
    ckpt = read_checkpoint(tmp_path / "final.pt")
    cfg = ckpt["config"]
    assert cfg["backbone"] == "zf" and ckpt["classes"] == list(VOC_CLASSES)
    assert (cfg["input"]["pixel_order"], cfg["input"]["pixel_range"]) == ("bgr", 255.0)
    assert cfg["input"]["pixel_mean"] == list(CAFFE_MEANS) and cfg["input"]["pixel_std"] == [1.0, 1.0, 1.0]
    assert cfg["roi_head"]["box_target_means"] == [0.0] * 4 and cfg["roi_head"]["box_target_stds"] == [1.0] * 4
    assert cfg["rpn"]["conv_channels"] == RPN_CHANNELS and cfg["rpn"]["objectness"] == "softmax"
    assert (cfg["input"]["test_scale"], cfg["rpn"]["test_pre_nms_top_n"], cfg["rpn"]["test_post_nms_top_n"]) == (
        600, 6000, 300)
    prov = ckpt["provenance"]
    assert prov["converted_from"] == str(path) and prov["caffe_layout"] == "layer" and prov["caffe_net"] == "ZF"
    assert len(prov["caffemodel_sha256"]) == 64
    # every tensor as it is in the file; the RPN's channels too (background scores of the 9 anchors first)
    stored = [(part, key) for part, state in ckpt["parts"].items() for key in state]
    assert len(stored) == 2 * len(blobs)
    for slot in layer_slots("zf"):
        weight, bias = blobs[next(n for n in slot.names if n in blobs)]
        assert torch.equal(ckpt["parts"][slot.part][f"{slot.module}.weight"], torch.from_numpy(weight)), slot.name
        assert torch.equal(ckpt["parts"][slot.part][f"{slot.module}.bias"], torch.from_numpy(bias)), slot.name


def test_other_classes_end_to_end_fast_rcnn_and_rpn_models(narrow, tmp_path):
    blobs = random_blobs(weight_shapes("vgg16", "detector", classes=3))
    layers = [*caffe_layers(blobs), Layer("roi-data", "Python")]  # py-faster-rcnn's end2end train net
    path = write_caffemodel(tmp_path / "e2e.caffemodel", layers)
    report = convert_caffe(path, tmp_path / "e2e.pt", classes=["cat", "dog", "fox"])
    assert (report.stage, report.classes) == ("joint", ("cat", "dog", "fox"))
    fast = {k: v for k, v in blobs.items() if not k.startswith("rpn")}  # Fast R-CNN: no RPN
    path = write_caffemodel(tmp_path / "fast.caffemodel", caffe_layers(fast))
    report = convert_caffe(path, tmp_path / "fast.pt", classes=["cat", "dog", "fox"])
    assert (report.parts, report.stage) == (("backbone", "roi_head"), "detector")
    model, _ = load_model(tmp_path / "fast.pt", require=("roi_head",))
    assert torch.equal(model.roi_head.cls_score.bias, torch.from_numpy(blobs["cls_score"][1]))
    rpn = {k: v for k, v in blobs.items() if k not in ("cls_score", "bbox_pred")}  # an RPN snapshot
    path = write_caffemodel(tmp_path / "rpn.caffemodel", caffe_layers(rpn), layout="layers")
    report = convert_caffe(path, tmp_path / "rpn.pt")
    assert (report.parts, report.stage, report.dropped) == (("backbone", "rpn"), "rpn", ("fc6", "fc7"))
    model, _ = load_model(tmp_path / "rpn.pt", require=("rpn",))
    assert torch.equal(model.rpn.conv.weight, torch.from_numpy(blobs["rpn_conv/3x3"][0]))


def test_eval_runs_a_converted_py_faster_rcnn_model(narrow, tmp_path, synth_set, frcnn):
    classes = json.loads(synth_set[1].read_text())["classes"]
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    path, _ = _caffemodel(tmp_path, "zf", "detector", "layer", classes=len(classes))
    result = frcnn("convert", "caffe", path, "--out", tmp_path / "final.pt", "--classes", tmp_path / "classes.txt")
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "final.pt")
    result = frcnn("eval", "--model", tmp_path / "final.pt", "--data", synth_set[1], "--voc2007", "--json",
                   "--device", "cpu", "--set", "runtime.num_workers=0")
    report = json.loads(result.stdout)
    assert report["metric"] == "11point" and set(report["ap"]) == set(classes)
    assert 0.0 <= report["map"] <= 1.0
