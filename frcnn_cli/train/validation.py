"""Validation during training (``--val M.json``): the figure a step is judged by, through the one inference path.

- RPN steps: proposal recall at IoU 0.5 and 0.7 of the test-time proposals (the paper's Fig. 2 measure,
  ``evaluate.recall``; ``val_recall``); the step is judged by the mean of the two.
- Detector steps and joint mode: VOC07 mAP (11-point AP at IoU 0.5, ``evaluate.voc``), as ``frcnn eval
  --voc2007`` gives it (``val_map``).

Each validation runs a ``Predictor`` (``inference.py``) on a copy of the training model (its
``bbox_pred`` folded when the step normalises targets per class), under ``fork_rng`` so that the training's
random stream is the same with and without validation. A detector step of the alternating optimisation
trains on stored proposals and has no trained RPN of its own (step 2) or a frozen one (step 4): its
validation images get their proposals once, at the step's start, from the RPN checkpoint that made the
training proposals (the proposal file records it), with its test-time settings, and the detector runs on
those (``GivenProposals``), exactly as the unified model of that RPN and this detector would.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import RuntimeConfig
from ..data.manifest import Manifest, read_manifest
from ..data.proposal_store import ProposalStore
from ..errors import ConfigError, DataError
from ..evaluate.recall import proposal_recall_of_boxes
from ..evaluate.voc import detections_by_class, evaluate_detections
from ..given_proposals import GivenProposals, proposals_of
from ..inference import Predictor, predict_manifest
from ..model.checkpoint import file_sha256, load_model
from ..model.detector import FasterRCNN
from .steps import StageSpec

RECALL_IOUS = (0.5, 0.7)


def check_val_manifest(val: Manifest, val_path: Path, train: Manifest, train_path: Path) -> None:
    """A validation manifest must name the training one's classes in the same order and hold objects."""
    if list(val.classes) != list(train.classes):
        raise ConfigError(f"--val {val_path} has the classes {', '.join(val.classes)} but the training data "
                          f"{train_path} has {', '.join(train.classes)}; give a validation manifest of the same "
                          "classes in the same order (frcnn prepare folder --val-fraction writes one)")
    if not any(not d for rec in val.images for d in rec.difficult):
        raise DataError(f"--val {val_path} holds no object to score (every box is difficult, or there are "
                        "none); give a validation manifest with annotated objects")


def read_val_manifest(val: str | Path | Manifest | None, train: Manifest, train_path: str | Path, *,
                      iters: int | None, epochs: float | None, val_every: int | None,
                      patience: int | None, carving: bool = False) -> Manifest | None:
    """The validation manifest of a training run (a ``Manifest`` or its file; None without), checked against
    the training one (``check_val_manifest``), the schedule options' combinations checked first: ``--epochs``
    and ``--iters`` exclude each other; ``--val-every`` and ``--patience`` need ``--val``, unless ``carving``
    (``frcnn train`` without ``--val`` validates on a split it carves: ``data_schedule.carves``)."""
    if iters is not None and epochs is not None:
        raise ConfigError("give --epochs or --iters, not both: --epochs sets each step's length in passes over "
                          "the data, --iters in iterations")
    if val is None and carving:
        return None
    if val is None:
        for name, value in (("--val-every", val_every), ("--patience", patience)):
            if value is not None:
                raise ConfigError(f"{name} needs --val M.json: it is about validation during training; add "
                                  "--val or drop it")
        return None
    manifest = val if isinstance(val, Manifest) else read_manifest(val)
    check_val_manifest(manifest, Path(val) if not isinstance(val, Manifest) else Path(val.name), train,
                       Path(train_path))
    return manifest


def default_val_every(val_images: int, entries: int, spec: StageSpec) -> int:
    """Epochs between validations that keep them under about a tenth of the training time: an image at test
    time costs about a third of a training image when the backbone learns, about one when only the heads do."""
    cost = 1.0 if spec.freeze_shared else 1.0 / 3.0
    return max(1, math.ceil(cost * val_images / (0.1 * max(1, entries))))


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def stored_rpn_proposals(store: ProposalStore, val: Manifest, device: torch.device,
                         runtime: RuntimeConfig) -> list[Tensor]:
    """The validation images' test proposals from the RPN checkpoint that made ``store``'s proposals."""
    path = store.attrs.get("checkpoint")
    if store.attrs.get("source") == "external":
        raise DataError(f"--val on a detector step trained on external proposals ({store.path}, from "
                        f"{store.attrs.get('source_file')}) needs proposals for the validation images too, which "
                        "frcnn cannot make; train without --val, then evaluate with frcnn eval --test-proposals")
    if not path or not Path(path).is_file():
        raise DataError(f"--val on a detector step needs the RPN that made {store.path}: it names "
                        f"{path or 'no checkpoint'}, which is not there; keep that checkpoint where it was, or "
                        "train without --val")
    if file_sha256(path) != store.attrs.get("checkpoint_hash"):
        raise DataError(f"{path} changed since it made {store.path}; dump the proposals again "
                        "(frcnn dump-proposals) or train without --val")
    model, _ = load_model(path, device=device, require=("rpn",))
    predictor = Predictor.for_model(model, device, runtime=runtime, owned=True)
    with torch.random.fork_rng(devices=_rng_devices(device)):
        return proposals_of(predictor, val)


@dataclass
class Validator:
    """The figure of a step on ``manifest``: ``measure(model)`` -> ``(figure, row)`` where ``row`` holds
    ``val_map`` or ``val_recall`` (``{"0.5": r, "0.7": r}``) and ``val_seconds``."""

    manifest: Manifest
    kind: str  # "map" or "recall"
    device: torch.device
    runtime: RuntimeConfig
    proposals: list[Tensor] | None = None  # detector steps: the fixed proposals of the val images
    ablation: object | None = None  # or a proposal strategy in the RPN's place (Table 5's dense windows)
    prepare: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # e.g. folded bbox_pred

    @property
    def key(self) -> str:
        return "val_map" if self.kind == "map" else "val_recall"

    def measure(self, model: FasterRCNN) -> tuple[float, dict]:
        tick = time.perf_counter()
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            ablation = GivenProposals(self.proposals) if self.proposals is not None else self.ablation
            with self.prepare():  # a deep copy
                predictor = Predictor.for_model(model, self.device, runtime=self.runtime, ablation=ablation)
            figure, row = self._figure(predictor)
        row["val_seconds"] = round(time.perf_counter() - tick, 3)
        return figure, row

    def _figure(self, predictor: Predictor) -> tuple[float, dict]:
        if self.kind == "recall":
            top_n = predictor.settings.proposals.post_nms_top_n or 100_000  # 0: every proposal
            result = proposal_recall_of_boxes(proposals_of(predictor, self.manifest), self.manifest,
                                              iou_thresholds=RECALL_IOUS, top_ns=(top_n,))
            values = next(iter(result["recall"].values()))
            recall = {str(t): round(float(v), 6) for t, v in zip(RECALL_IOUS, values)}
            return float(sum(values) / len(values)), {"val_recall": recall}
        detections, _ = predict_manifest(predictor, self.manifest)
        ev = evaluate_detections(detections_by_class(detections, len(self.manifest.classes)), self.manifest,
                                 iou_thresh=0.5, metric="11point")
        value = float(ev["map"])
        return value, {"val_map": round(value, 6)}
