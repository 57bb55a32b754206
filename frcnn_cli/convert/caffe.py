"""``frcnn convert caffe``: a Caffe ZF or VGG16 model (ImageNet, or trained by py-faster-rcnn) as frcnn weights.

What is written depends on what the net holds (``caffe_layers.py`` names the layers):

- an **ImageNet model** (no RPN, no ``cls_score``/``bbox_pred``: ``ZF.v2.caffemodel``, ``VGG16.v2.caffemodel``):
  a plain state dict in the names ``--init`` reads (``weights.py``: ZF ``conv1`` … ``fc7``, VGG16 torchvision's
  ``features.N``/``classifier.0, 3``), the classifier ``fc8`` left out;
- a **py-faster-rcnn model** (``ZF_faster_rcnn_final.caffemodel``, ``VGG16_faster_rcnn_final.caffemodel``, an
  end-to-end or a Fast R-CNN model): a frcnn checkpoint of the parts it holds (backbone; RPN; RoI head),
  whose config is the backbone's preset with what the Caffe weights need: Caffe's input (BGR, 0–255, the
  pixel means, no division) and raw box deltas (``roi_head.box_target_means`` 0, ``box_target_stds`` 1:
  py-faster-rcnn un-normalises ``bbox_pred`` at every snapshot, so its test code decodes the raw outputs).

Tensors are copied as they are: Caffe's layouts are PyTorch's (``caffe_layers.py``). Every check names the
Caffe layer: a layer with weights frcnn has no place for, a missing layer or blob, a layer of another type,
a shape that does not fit the backbone, a class list of another length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..config import Config, get_preset
from ..data.voc import VOC_CLASSES
from ..errors import CheckpointError, ConfigError
from ..model.checkpoint import file_sha256, save_checkpoint
from ..model.detector import FasterRCNN
from .caffe_layers import IMAGENET_CLASSIFIER, LayerSlot, guess_backbone, layer_slots
from .caffe_proto import CaffeLayer, CaffeNet, read_caffemodel

BACKBONES = ("zf", "vgg16")
CAFFE_PIXEL_MEANS = (102.9801, 115.9465, 122.7717)  # py-faster-rcnn's PIXEL_MEANS, BGR, 0-255
_GROUP_NAMES = {"shared": "shared convolutional", "head_top": "fc6/fc7", "rpn": "RPN", "predictors": "class and box"}


@dataclass(frozen=True)
class CaffeConversion:
    """What ``convert_caffe`` wrote: ``kind`` "imagenet" (a plain state dict) or "checkpoint", the frcnn
    ``backbone``, the Caffe ``net`` name and ``layout``, the Caffe ``layers`` converted and those with weights
    left out (``dropped``), the checkpoint's ``parts``, ``stage`` and ``classes`` (empty for a state dict)."""

    kind: str
    backbone: str
    net: str
    layout: str
    layers: tuple[str, ...]
    dropped: tuple[str, ...]
    parts: tuple[str, ...] = ()
    stage: str = ""
    classes: tuple[str, ...] = ()


def caffe_config(backbone: str, rpn_channels: int | None = None) -> Config:
    """The ``backbone`` preset with Caffe's input, raw box deltas and ``rpn_channels`` (default: the preset's)."""
    cfg = get_preset(backbone)
    rpn = cfg.rpn if rpn_channels is None else replace(cfg.rpn, conv_channels=rpn_channels)
    return replace(cfg, input=replace(cfg.input, pixel_order="bgr", pixel_range=255.0, pixel_mean=CAFFE_PIXEL_MEANS,
                                      pixel_std=(1.0, 1.0, 1.0)),
                   rpn=replace(rpn, objectness="softmax"),
                   roi_head=replace(cfg.roi_head, box_target_means=(0.0,) * 4, box_target_stds=(1.0,) * 4))


# --------------------------------------------------------------------------------------------------
# which layers


def _by_name(net: CaffeNet, path: Path) -> dict[str, CaffeLayer]:
    layers: dict[str, CaffeLayer] = {}
    for layer in net.layers:
        if layer.name in layers and (layer.blobs or layers[layer.name].blobs):
            raise CheckpointError(f"{path} has two layers named '{layer.name}' with weights; give a model saved by "
                                  f"Caffe (one layer a name)")
        if layer.blobs or layer.name not in layers:
            layers[layer.name] = layer
    return layers


def _choose_backbone(layers: dict[str, CaffeLayer], backbone: str | None, path: Path) -> str:
    if backbone is not None:
        if backbone not in BACKBONES:
            raise ConfigError(f"--backbone {backbone!r}: Caffe models convert to {' or '.join(BACKBONES)}; "
                              f"choose one of them")
        return backbone
    guess = guess_backbone(set(layers))
    if guess is None:
        with_weights = [n for n, layer in layers.items() if layer.blobs][:6]
        raise CheckpointError(f"{path} is not a ZF or VGG16 net: it has no layer 'conv1' (ZF) or 'conv1_1' (VGG16), "
                              f"its layers with weights are {with_weights}; give a py-faster-rcnn or ImageNet ZF or "
                              f"VGG16 model")
    conv5 = layers.get("conv5")
    if guess == "zf" and conv5 is not None and conv5.blobs and conv5.blobs[0].dim() == 4 and (
            conv5.blobs[0].shape[0] == 512):
        raise CheckpointError(f"{path} looks like VGG_CNN_M_1024 (its conv5 has 512 outputs, ZF's 256), which frcnn "
                              f"has no backbone for; give a ZF or VGG16 model")
    return guess


def _select(layers: dict[str, CaffeLayer], slots: tuple[LayerSlot, ...], backbone: str,
            path: Path) -> tuple[dict[LayerSlot, CaffeLayer], list[str]]:
    """The slots to fill with their layers, and the Caffe layers with weights left out; an error for a layer
    with weights that has no slot, and for a missing layer."""
    found = {s: next(layers[n] for n in s.names if n in layers) for s in slots if any(n in layers for n in s.names)}
    groups = {s.group for s in found}
    needed = {"shared"} | ({"head_top"} if "predictors" in groups or not groups & {"rpn", "predictors"} else set())
    needed |= groups & {"rpn", "predictors"}
    missing = [s for s in slots if s.group in needed and s not in found]
    if missing:
        guess = guess_backbone(set(layers))
        hint = f" (it looks like a {guess} net: --backbone {guess})" if guess not in (None, backbone) else ""
        raise CheckpointError(f"{path} has no layer '{missing[0].name}', which frcnn's {backbone} model needs for its "
                              f"{_GROUP_NAMES[missing[0].group]} layers{hint}; give a complete {backbone} model")
    known = {n for s in slots for n in s.names} | set(IMAGENET_CLASSIFIER)
    classifiers = _imagenet_classifiers(layers, found, known) if not groups & {"rpn", "predictors"} else []
    unknown = [n for n, layer in layers.items() if layer.blobs and n not in known and n not in classifiers]
    if unknown:
        kinds = sorted({layers[n].type or "?" for n in unknown})
        raise CheckpointError(f"layer '{unknown[0]}' ({layers[unknown[0]].type or 'type not given'}) of {path} holds "
                              f"weights that frcnn's {backbone} model has no place for"
                              f"{f' ({len(unknown)} such layers: {kinds})' if len(unknown) > 1 else ''}; give a "
                              f"py-faster-rcnn or ImageNet {backbone} model (or the right --backbone)")
    dropped = [layer.name for s, layer in found.items() if s.group not in needed and layer.blobs]
    dropped += [n for n in IMAGENET_CLASSIFIER if n in layers and layers[n].blobs] + classifiers
    return {s: layer for s, layer in found.items() if s.group in needed}, dropped


def _imagenet_classifiers(layers: dict[str, CaffeLayer], found: dict[LayerSlot, CaffeLayer],
                          known: set[str]) -> list[str]:
    """Fully connected layers of an ImageNet model that read fc7's output under a name other than ``fc8``:
    its classifier, whatever the model calls it."""
    fc7 = next((layer for s, layer in found.items() if s.name == "fc7"), None)
    if fc7 is None or not fc7.blobs or fc7.blobs[0].dim() < 2:
        return []
    width = fc7.blobs[0].shape[-2]
    return [n for n, layer in layers.items() if n not in known and layer.blobs and layer.type in ("InnerProduct", "")
            and layer.blobs[0].dim() >= 2 and layer.blobs[0].shape[-1] == width]


# --------------------------------------------------------------------------------------------------
# checks and tensors


def _fit(blob: Tensor, expected: torch.Size, layer: CaffeLayer, what: str, backbone: str, path: Path) -> Tensor:
    """``blob`` in the ``expected`` shape: Caffe's legacy 4-D shapes (``[1, 1, O, I]`` of a fully connected
    layer, ``[1, 1, 1, O]`` of a bias) lose their leading ones; any other difference is an error."""
    shape = list(blob.shape)
    while len(shape) > len(expected) and shape[0] == 1:
        shape.pop(0)
    if tuple(shape) != tuple(expected):
        raise CheckpointError(f"layer '{layer.name}' of {path} has {what} of shape {list(blob.shape)}, but frcnn's "
                              f"{backbone} model needs {list(expected)} there; give a {backbone} model (or the "
                              f"right --backbone)")
    return blob.reshape(expected)


def _check_layer(slot: LayerSlot, layer: CaffeLayer, path: Path) -> None:
    if layer.type and layer.type != slot.type:
        raise CheckpointError(f"layer '{layer.name}' of {path} is a {layer.type} layer where frcnn expects "
                              f"{slot.type}; give a py-faster-rcnn or ImageNet ZF or VGG16 model")
    if len(layer.blobs) != 2:
        raise CheckpointError(f"layer '{layer.name}' of {path} has {len(layer.blobs)} blob(s); frcnn needs 2, its "
                              f"weights and bias: give a complete model file")


def _check_classes(chosen: dict[LayerSlot, CaffeLayer], classes: list[str], path: Path) -> None:
    layer = next((layer for s, layer in chosen.items() if s.module == "cls_score"), None)
    if layer is None or layer.blobs[0].dim() < 2:
        return
    scores = layer.blobs[0].shape[-2]
    if scores != len(classes) + 1:
        raise CheckpointError(f"layer 'cls_score' of {path} scores {scores} classes (background included), but "
                              f"{len(classes)} class names were given (+1 background); give the model's own class "
                              f"list, one name a line, with --classes FILE")


def _tensors(chosen: dict[LayerSlot, CaffeLayer], template: FasterRCNN, backbone: str,
             path: Path) -> dict[str, dict[str, Tensor]]:
    """Per part, its state dict from the Caffe blobs (checked against ``template``'s shapes)."""
    parts: dict[str, dict[str, Tensor]] = {}
    for slot, layer in chosen.items():
        _check_layer(slot, layer, path)
        own = getattr(template, slot.part).state_dict()
        state = parts.setdefault(slot.part, {})
        for blob, what in zip(layer.blobs, ("weight", "bias")):
            key = f"{slot.module}.{what}"
            state[key] = _fit(blob, own[key].shape, layer, f"{what}s" if what == "weight" else what, backbone, path)
    return parts


def _rpn_channels(chosen: dict[LayerSlot, CaffeLayer]) -> int | None:
    layer = next((layer for s, layer in chosen.items() if s.part == "rpn" and s.module == "conv"), None)
    if layer is None or not layer.blobs or layer.blobs[0].dim() != 4 or not 1 <= layer.blobs[0].shape[0] <= 8192:
        return None
    return int(layer.blobs[0].shape[0])


def _stage(parts: tuple[str, ...], layers: dict[str, CaffeLayer]) -> str:
    if "rpn" in parts and "roi_head" in parts:
        return "joint" if "roi-data" in layers else "detector-shared-frozen"  # roi-data: py-faster-rcnn end2end
    return "rpn" if "rpn" in parts else "detector"


# --------------------------------------------------------------------------------------------------
# the conversion


def convert_caffe(path: str | os.PathLike, out: str | os.PathLike, *, backbone: str | None = None,
                  classes: list[str] | None = None) -> CaffeConversion:
    """Convert the ``.caffemodel`` at ``path`` and write ``out`` atomically (module docstring): a plain state
    dict for an ImageNet model, else a frcnn checkpoint. ``backbone`` ("zf", "vgg16"; default: from the layer
    names), ``classes`` (a detector's, without background; default: PASCAL VOC's 20). ``CheckpointError``
    naming the file and the layer for anything that does not fit."""
    path = Path(path)
    net = read_caffemodel(path)
    layers = _by_name(net, path)
    name = _choose_backbone(layers, backbone, path)
    chosen, dropped = _select(layers, layer_slots(name), name, path)
    parts = tuple(p for p in FasterRCNN.part_names if any(s.part == p for s in chosen))
    checkpoint = any(s.group in ("rpn", "predictors") for s in chosen)
    classes = list(VOC_CLASSES if classes is None else classes)
    if checkpoint:
        _check_classes(chosen, classes, path)
    with torch.device("meta"):  # the shapes only: no memory, no random initialisation
        template = FasterRCNN(caffe_config(name, _rpn_channels(chosen)), classes)
    state = _tensors(chosen, template, name, path)
    report = CaffeConversion(kind="checkpoint" if checkpoint else "imagenet", backbone=name, net=net.name,
                             layout=net.layout, layers=tuple(layer.name for layer in chosen.values()),
                             dropped=tuple(dropped))
    if not checkpoint:
        _write_state_dict(out, state)
        return report
    stage = _stage(parts, layers)
    for part in parts:
        getattr(template, part).load_state_dict(state[part], strict=True, assign=True)
    provenance = {"converted_from": str(path), "caffemodel_sha256": file_sha256(path), "caffe_net": net.name,
                  "caffe_layout": net.layout, "caffe_layers": list(report.layers), "dropped": list(dropped)}
    save_checkpoint(out, template, stage=stage, provenance=provenance, parts=parts)
    return replace(report, parts=parts, stage=stage, classes=tuple(classes))


def _write_state_dict(out: str | os.PathLike, parts: dict[str, dict[str, Tensor]]) -> None:
    """The backbone's ``shared`` and ``head_top`` keys (``weights.py``'s layout) in one plain dict."""
    state = dict(parts["backbone"])
    prefix = "head_top."
    state.update({k[len(prefix):]: v for k, v in parts["roi_head"].items() if k.startswith(prefix)})
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
