"""Initialising a backbone: ImageNet weights through torchvision, a local state dict, or nothing.

``source`` is what ``--init`` / ``cfg.init`` says:

- ``"none"``: keep the random initialisation of ``build_backbone`` (an explicit choice, never a fallback);
- ``"imagenet"``: torchvision's weights API (``VGG16_Weights.IMAGENET1K_V1``, ``ResNet50_Weights…``,
  ``ResNet101_Weights…``), which reads the torch hub cache and downloads when it can; offline and
  uncached is a ``CheckpointError`` that names the cache file to copy in and the alternatives;
- a path to a local ``.pth``/``.pt`` state dict, read with ``weights_only=True``: torchvision's layout
  for vgg16 (``features.N.*``, ``classifier.0/3.*``) and resnet (``conv1.* … layer4.*``), frcnn's own
  layout for zf (``conv1 … conv5``, ``fc6``, ``fc7``) and tiny; or a frcnn checkpoint (its backbone part
  and the ``head_top`` of its roi_head).

Keys are matched by name into ``shared`` and ``head_top``; the classifier of an ImageNet model
(vgg16 ``classifier.6``, resnet ``fc``) and BatchNorm's ``num_batches_tracked`` are dropped on purpose.
Any other missing, unexpected or mis-shaped key is a ``CheckpointError`` listing a few of them.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor

from ..errors import CheckpointError
from .backbones import BackboneParts
from .checkpoint import INIT_IN_TRAIN, Init, read_init

# parameter-name prefixes of an ImageNet classifier that the detector does not use
_DROPPED_PREFIXES = {"vgg16": ("classifier.6.",), "resnet50": ("fc.",), "resnet101": ("fc.",)}
_ALTERNATIVES = (f"pass --init FILE.pth (a state dict in torchvision's layout) or --init none (random init; "
                 f"{INIT_IN_TRAIN})")


def _torchvision_weights(name: str):
    """The torchvision weights enum entry for ``name``, or None when torchvision has none."""
    table = {"vgg16": ("VGG16_Weights", "IMAGENET1K_V1"), "resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
             "resnet101": ("ResNet101_Weights", "IMAGENET1K_V1")}
    if name not in table:
        return None
    enum_name, member = table[name]
    return getattr(getattr(torchvision.models, enum_name), member)


def imagenet_weights_url(name: str) -> str | None:
    """Where torchvision downloads the ImageNet weights of backbone ``name`` from (None: it has none)."""
    weights = _torchvision_weights(name)
    return None if weights is None else weights.url


def hub_cache_file(url: str) -> Path:
    """Where torch.hub keeps (and looks for) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``name`` (from the hub cache, else downloaded)."""
    weights = _torchvision_weights(name)
    if weights is None:
        caffe = (" (frcnn convert caffe ZF.v2.caffemodel --out zf_imagenet.pth writes it from py-faster-rcnn's "
                 "ImageNet ZF)") if name == "zf" else ""
        raise CheckpointError(
            f"torchvision has no ImageNet weights for backbone '{name}'; give a local state dict with "
            f"--init FILE.pth (layout: the parameter names of frcnn's {name} backbone){caffe} or --init none "
            f"({INIT_IN_TRAIN})"
        )
    cache = hub_cache_file(weights.url)
    said = io.StringIO()  # torch.hub prints "Downloading: …" on stdout before it tries: kept back until it worked
    try:
        with contextlib.redirect_stdout(said):
            state = weights.get_state_dict(progress=False, weights_only=True)
        sys.stderr.write(said.getvalue())  # where the file went, never on stdout
        return state
    except Exception as exc:  # offline, HTTP error, damaged cache file: all the same to the user
        damaged = " (it exists but cannot be read: delete it)" if cache.is_file() else ""
        raise CheckpointError(
            f"cannot get the ImageNet weights of {name} ({type(exc).__name__}: {exc}): no download and no "
            f"usable cached copy at {cache}{damaged}; copy the file {weights.url} there from a machine "
            f"with network, or {_ALTERNATIVES}"
        ) from None


def _from_frcnn_checkpoint(obj: dict, name: str, path: Path) -> dict:
    backbone = obj.get("config", {}).get("backbone") if isinstance(obj.get("config"), dict) else None
    if backbone != name:
        raise CheckpointError(f"checkpoint {path} holds a '{backbone}' backbone, the model is '{name}'; "
                              f"give a checkpoint of a {name} model")
    parts = obj.get("parts") or {}
    state = dict(parts.get("backbone", {}))
    state.update({k[len("head_top."):]: v for k, v in parts.get("roi_head", {}).items()
                  if k.startswith("head_top.")})
    return state


def state_dict_of(obj: object, name: str, path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict held by ``obj``, what a weights file ``path`` holds (``checkpoint.read_init``): a plain
    state dict (possibly under ``state_dict``/``model``, possibly with DataParallel's ``module.`` prefix) or a
    frcnn checkpoint's backbone and ``head_top``; tensors only."""
    path = Path(path)
    if isinstance(obj, dict) and obj.get("format") == "frcnn-checkpoint":
        obj = _from_frcnn_checkpoint(obj, name, path)
    if isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        obj = next((obj[w] for w in ("state_dict", "model") if isinstance(obj.get(w), dict)), obj)
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}  # saved from a DataParallel/DDP wrapper
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path} is not a state dict (a dict of parameter name → tensor); "
                              f"save one with torch.save(model.state_dict(), path)")
    return obj


def _short(keys: list[str], n: int = 5) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_into_parts(parts: BackboneParts, name: str, state: dict[str, Tensor], source: str) -> None:
    """Copy ``state`` (keys of ``shared`` and of ``head_top``, disjoint) into the two parts, strictly."""
    own = {"shared": parts.shared.state_dict(), "head_top": parts.head_top.state_dict()}
    dropped = _DROPPED_PREFIXES.get(name, ())
    expected = set(own["shared"]) | set(own["head_top"])
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(dropped)
                        and not k.endswith("num_batches_tracked"))
    missing = sorted(k for k in expected if k not in state)
    if missing or unexpected:
        what = "; ".join(s for s in (f"missing keys: {_short(missing)}" if missing else "",
                                     f"unexpected keys: {_short(unexpected)}" if unexpected else "") if s)
        raise CheckpointError(f"weights from {source} do not fit the {name} backbone ({what}); "
                              f"give weights of a {name} model, or --init none ({INIT_IN_TRAIN})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for sd in own.values()
             for k, v in sd.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"weights from {source} have the wrong shapes for the {name} backbone "
                              f"({_short(wrong)}); give weights of a {name} model, or --init none ({INIT_IN_TRAIN})")
    for part, sd in own.items():
        getattr(parts, part).load_state_dict({k: state[k] for k in sd}, strict=True)


def init_backbone(parts: BackboneParts, name: str, init: Init | str) -> None:
    """Initialise ``parts`` (built by ``build_backbone(name)``) from ``init``: an ``Init`` already read
    (``checkpoint.read_init``) or what ``--init`` says ("none", "imagenet" or a file, read here).

    Raises ``CheckpointError`` when the weights cannot be had or do not fit; never falls back to random.
    """
    if isinstance(init, str):
        init = read_init(init)
    if init.kind == "none":
        return
    if init.kind == "imagenet":
        state = imagenet_state_dict(name)
        label = f"torchvision's ImageNet {name} ({hub_cache_file(_torchvision_weights(name).url)})"
    else:
        state = state_dict_of(init.data, name, init.spec)
        label = f"file {init.spec}"
    with torch.no_grad():
        load_into_parts(parts, name, state, label)
