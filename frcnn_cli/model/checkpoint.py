"""Checkpoints: the model's parts, its config, class names, the stage that made it and its provenance.

A checkpoint is a ``torch.save``'d dict of plain types and tensors only, so that ``torch.load(...,
weights_only=True)`` reads it and a tampered file can never run code::

    {"format": "frcnn-checkpoint", "version": 1,
     "parts": {"backbone": state_dict, "rpn": state_dict, "roi_head": state_dict},  # a subset
     "config": config_to_dict(cfg), "classes": [str, …], "stage": str,
     "provenance": {…}, "train_state": {…} | None}

A step-1 RPN checkpoint has no ``roi_head`` part. Files are written atomically (``atomic_path``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..config_io import config_from_dict, config_to_dict
from ..data.name_lists import distinct_names
from ..errors import CheckpointError, ConfigError, FrcnnError
from ..file_kinds import other_kind
from .detector import FasterRCNN

FORMAT = "frcnn-checkpoint"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None), Tensor, torch.Size, torch.dtype)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse (TypeError) anything that ``weights_only=True`` could not load back."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where}: key {key!r} is a {type(key).__name__}, not str/int")
            _check_plain(value, f"{where}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"checkpoint {where} is a {type(obj).__name__}; only plain types and tensors can be "
                        f"stored (weights_only loading)")


def _cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: FasterRCNN, *, stage: str, provenance: dict,
                    parts: Iterable[str] = ("backbone", "rpn", "roi_head"),
                    train_state: dict | None = None) -> None:
    """Write ``parts`` of ``model`` with its config, classes, ``stage``, ``provenance`` and ``train_state``
    (optimiser, schedule, RNG, data position: plain types and tensors only) to ``path``, atomically."""
    parts = tuple(parts)
    unknown = [p for p in parts if p not in FasterRCNN.part_names]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; parts are {FasterRCNN.part_names}")
    payload = {
        "format": FORMAT, "version": VERSION,
        "parts": {name: _cpu_state(getattr(model, name)) for name in parts},
        "config": config_to_dict(model.cfg), "classes": list(model.classes), "stage": str(stage),
        "provenance": dict(provenance), "train_state": train_state,
    }
    _check_plain(payload, str(path))
    # a file object, not a path: then a full disk is the OSError of the write ("No space left on device"),
    # where torch's own file writer raises "RuntimeError: [enforce fail at inline_container.cc]"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def _validate(ckpt: Any, path: Path) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a frcnn checkpoint (no format '{FORMAT}'); give a file written "
                              f"by frcnn train-rpn, train-detector or train")
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"checkpoint {path} has no valid version ({version!r}); the file is damaged")
    if version > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this frcnn reads "
                              f"({VERSION}); upgrade frcnn")
    parts = ckpt.get("parts")
    ok = (isinstance(parts, dict) and all(isinstance(v, dict) for v in parts.values())
          and set(parts) <= set(FasterRCNN.part_names) and isinstance(ckpt.get("config"), dict)
          and isinstance(ckpt.get("classes"), list) and all(isinstance(c, str) for c in ckpt["classes"]))
    if not ok:
        raise CheckpointError(f"checkpoint {path} lacks valid 'parts', 'config' or 'classes' entries; "
                              f"the file is damaged, write it again")
    if not distinct_names(ckpt["classes"]):  # as an exported model's metadata: export would refuse its own file
        shown = repr(ckpt["classes"])[:200]
        raise CheckpointError(f"checkpoint {path} has the class list {shown}, not one or more distinct non-empty "
                              "names; the file is damaged or made by hand: train it again (or convert caffe "
                              "--classes FILE)")
    return ckpt


_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)|unrecognized function|Can only build")


def torch_load_safely(path: Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; every failure is a ``CheckpointError`` naming ``what`` and
    ``path``: a file holding Python objects is refused before any of them is created (nothing runs), and a model
    file of ``frcnn export`` is named as such (torch would warn and dispatch a TorchScript archive to its loader)."""
    from ..export.runtime import exported_format  # export/ builds on model/: imported when needed

    fmt = exported_format(path)
    if fmt is not None:
        raise CheckpointError(f"{what} {path} is an exported {'ONNX' if fmt == 'onnx' else 'TorchScript'} model "
                              "(frcnn export), not a checkpoint: detect, eval and bench take it as --model; give "
                              "the checkpoint it was exported from (its metadata names it) or another .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any failure to read an untrusted file is the same user error
        unsafe = _UNSAFE.search(str(exc))
        if isinstance(exc, pickle.UnpicklingError) and unsafe:
            found = f" ({unsafe.group(1)})" if unsafe.group(1) else ""
            raise CheckpointError(f"{what} {path} holds Python objects besides tensors{found} and was "
                                  f"refused unread for safety; use a file of plain tensors written by "
                                  f"torch.save (frcnn writes only such files)") from None
        kind = other_kind(path, "checkpoint")
        if kind is not None:
            raise CheckpointError(f"{what} {path} is {kind}, not a torch file; give a checkpoint written by frcnn "
                                  "(or a weights file of torch.save)") from None
        raise CheckpointError(f"{what} {path} is not a readable torch file ({type(exc).__name__}); the file "
                              f"is damaged or not a .pt/.pth file: give a file written by frcnn (or "
                              f"torch.save)") from None


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint dict in ``path``, read with ``weights_only=True`` and checked.

    ``CheckpointError`` (naming the file) when it is missing, not a torch file, holds Python objects
    (refused unread: the pickle never runs), is not a frcnn checkpoint, or is of a newer version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (--model / --init)")
    return _validate(torch_load_safely(path, "checkpoint", map_location), path)


@dataclass(frozen=True)
class Init:
    """What ``--init`` (or the config key ``init``) names, read once (``read_init``).

    ``kind``: ``"imagenet"`` (torchvision's ImageNet weights), ``"none"`` (random init), ``"checkpoint"`` (a
    frcnn checkpoint; ``data`` is its dict) or ``"weights"`` (a plain state dict file, e.g. converted Caffe
    weights; ``data`` is what the file holds). ``spec`` is the string given.
    """

    spec: str
    kind: str
    data: Any = None


INIT_IN_TRAIN = "frcnn train takes --init as --set init=..., e.g. --set init=none"  # train has no --init option


def read_init(spec: str) -> Init:
    """Read the ``--init`` file once (``weights_only``); ``imagenet`` and ``none`` read nothing. A missing or
    unreadable file is a ``CheckpointError`` naming it."""
    if spec in ("imagenet", "none"):
        return Init(spec, spec)
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; give an existing .pth file or frcnn "
                              f"checkpoint, --init imagenet or --init none ({INIT_IN_TRAIN})")
    obj = torch_load_safely(path, "weights file")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return Init(spec, "checkpoint", _validate(obj, path))
    return Init(spec, "weights", obj)


def _backbone_of(ckpt: dict) -> str:
    return str(ckpt["config"].get("backbone", "?"))


def _head_top_state(ckpt: dict) -> dict:
    prefix = "head_top."
    return {k[len(prefix):]: v for k, v in ckpt["parts"]["roi_head"].items() if k.startswith(prefix)}


def load_parts(model: FasterRCNN, ckpt: dict, parts: Iterable[str], path: str | os.PathLike, *,
               head_top_only: bool = False) -> None:
    """Copy ``parts`` of ``ckpt`` (read from ``path``) into ``model``.

    With ``head_top_only`` only fc6/fc7 (or res5) of ``roi_head`` are taken and the class scores and box
    predictors keep their fresh initialisation (step 4 of the alternating optimisation; any class list).
    ``CheckpointError`` naming both sides when the backbones differ, when ``roi_head`` is asked for and
    the class lists differ, when a part is missing, or when a state dict does not fit.
    """
    parts = tuple(parts)
    if head_top_only and "roi_head" in parts:
        load_parts(model, ckpt, [p for p in parts if p != "roi_head"], path)
        _load_state(model.roi_head.head_top, _head_top_state(ckpt), "roi_head.head_top", path)
        return
    theirs, ours = _backbone_of(ckpt), model.cfg.backbone
    if theirs != ours:
        raise CheckpointError(f"checkpoint {path} has a '{theirs}' backbone but the model is '{ours}'; use "
                              f"--config {theirs} or a checkpoint of a {ours} model")
    if "roi_head" in parts and list(ckpt["classes"]) != list(model.classes):
        raise CheckpointError(
            f"checkpoint {path} was trained for {len(ckpt['classes'])} classes {ckpt['classes']} but the "
            f"model has {len(model.classes)} classes {model.classes}; use a checkpoint of the same dataset"
        )
    for name in parts:
        if name not in ckpt["parts"]:
            raise CheckpointError(f"checkpoint {path} (stage '{ckpt.get('stage')}') has no '{name}' part, "
                                  f"only {sorted(ckpt['parts'])}; give a checkpoint of a later step")
        _load_state(getattr(model, name), ckpt["parts"][name], name, path)


def _load_state(module: torch.nn.Module, state: dict, name: str, path: str | os.PathLike) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"checkpoint {path}: its '{name}' part does not fit this model ({detail}); "
                              f"the config differs from the one it was trained with: use that config (or "
                              f"a checkpoint made with this one)") from None


def _require(ckpt: dict, path: str | os.PathLike, require: Sequence[str]) -> None:
    parts, stage = ckpt["parts"], ckpt.get("stage")
    where = f"checkpoint {path} (stage '{stage}')"
    if "roi_head" in require and "roi_head" not in parts:
        raise CheckpointError(f"{where} has no detection head, only {sorted(parts)}; give a detector: the output "
                              "of train-detector or of frcnn train")
    if "rpn" in require and "rpn" not in parts:
        if "roi_head" in require:
            raise CheckpointError(f"{where} has a detection head but no trained RPN (a step-2 detector); detect "
                                  "and evaluate with the unified model of step 4 (final.pt of frcnn train), or "
                                  "evaluate it on another model's proposals: eval --test-proposals rpn1.pt")
        raise CheckpointError(f"{where} has no RPN; dump proposals with the output of train-rpn (steps 1 and 3)")


def load_model(path: str | os.PathLike, device: Any = "cpu", *,
               require: Sequence[str] = ()) -> tuple[FasterRCNN, dict]:
    """The model stored in ``path`` (its own config and classes, every stored part loaded, eval mode,
    on ``device``) and the checkpoint dict. ``require``: parts the caller needs (``("rpn",)`` for a proposal
    dump, ``("rpn", "roi_head")`` to detect); a checkpoint without one is a ``CheckpointError`` saying which
    step makes it."""
    ckpt = read_checkpoint(path)
    _require(ckpt, path, require)
    cfg = checkpoint_config(ckpt, path)
    model = FasterRCNN(cfg, list(ckpt["classes"]))
    load_parts(model, ckpt, tuple(ckpt["parts"]), path)
    return model.to(device).eval(), ckpt


def checkpoint_config(ckpt: dict, path: str | os.PathLike):
    """The ``Config`` a checkpoint dict holds; a ``CheckpointError`` naming ``path`` when this frcnn cannot
    read it."""
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this frcnn cannot read ({exc}); use the "
                              f"frcnn version that wrote it, or train the model again") from None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes (provenance of checkpoints and proposal files)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise FrcnnError(f"cannot read {path} to hash it ({exc.strerror or exc}); check the path") from None
    return digest.hexdigest()
