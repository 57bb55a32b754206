"""What a stage decides before its first iteration, from its data: the images it trains on, the anchors
(measured, and fitted when ``anchors.auto``), the detector's per-class target statistics, and the validator.

``stage.run_stage`` calls these in order; each is a plain function of the request, the config and the data,
so that a resumed stage decides exactly as the interrupted one did.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from ..config import Config
from ..data.manifest import Manifest
from ..data.proposal_store import ProposalStore
from ..dense_proposals import DenseProposalSource, DenseProposer
from ..errors import DataError
from ..model.anchor_fit import AnchorDecision, decide_anchors
from ..model.checkpoint import Init
from ..model.detector import FasterRCNN
from .steps import StageSpec
from .target_stats import TargetStats, compute_target_stats, folded
from .validation import Validator, stored_rpn_proposals


def best_path(out: Path) -> Path:
    """Where a stage writing ``out`` keeps its best checkpoint: ``rpn.pt`` -> ``rpn.best.pt``."""
    stem = out.name[: -len(".pt")] if out.name.endswith(".pt") else out.name
    return out.with_name(stem + ".best.pt")


def trains_fresh_rpn(spec: StageSpec, init: Init) -> bool:
    """The stage trains an RPN head that starts afresh: its anchors are still free to choose."""
    loaded = init.kind == "checkpoint" and "rpn" in (init.data or {}).get("parts", {})
    return spec.run_rpn and "rpn" in spec.trainable and not loaded


def decide_run_anchors(cfg: Config, manifest: Manifest, init: Init, *, spec: StageSpec) -> AnchorDecision | None:
    """The anchors of a run whose first stage is ``spec``, decided in one place for a single step
    (``train-rpn``) and a whole run (the pipeline, once, at its start) alike: measured on the training boxes,
    fitted when ``anchors.auto`` and the RPN starts afresh (``init`` holds no RPN: a loaded RPN keeps the
    anchors it learnt). None for a detector stage (its anchors are those of the RPN that made its proposals)."""
    if not (spec.run_rpn and "rpn" in spec.trainable):
        return None
    return decide_anchors(cfg, manifest, may_fit=trains_fresh_rpn(spec, init))


def check_has_objects(manifest: Manifest, manifest_path: Path) -> None:
    """A training set must hold an object to learn from: a box that is not difficult (difficult boxes and crowd
    regions are never targets). Checked at the start of every training command, before any work."""
    if any(not hard for rec in manifest.images for hard in rec.difficult):
        return
    boxes = sum(len(rec.boxes) for rec in manifest.images)
    what = "no box at all" if boxes == 0 else (f"only {boxes} difficult box(es) (objects marked difficult or crowd "
                                                "regions, which are never training targets)")
    raise DataError(f"{manifest_path} holds {len(manifest.images)} image(s) but {what}: nothing to learn; give a "
                    "manifest with annotated objects (check the annotations frcnn prepare read)")


def training_images(manifest: Manifest, spec: StageSpec, cfg: Config, manifest_path: Path) -> Manifest:
    """The images a stage trains on: every image, except that with ``solver.rpn_drop_empty`` the RPN steps
    and joint mode leave out those without a non-difficult object (py-faster-rcnn's ``filter_roidb``: they
    have no gt RoI there). Detector steps keep them as negatives (they index the proposal file)."""
    if not (cfg.solver.rpn_drop_empty and spec.kind in ("rpn", "joint")):
        return manifest
    kept = [rec for rec in manifest.images if not all(rec.difficult)]
    if not kept:
        raise DataError(f"{manifest_path} has no image with a (non-difficult) object to train an RPN on; "
                        "check the annotations, or keep every image with --set solver.rpn_drop_empty=false")
    return dataclasses.replace(manifest, images=kept)


def stage_target_stats(cfg: Config, spec: StageSpec, store: ProposalStore | None,
                       manifest: Manifest) -> TargetStats | None:
    """Per-class target statistics of a detector step with ``roi_head.box_target_norm = "dataset"``
    (joint mode keeps the fixed numbers, as py-faster-rcnn's end-to-end training)."""
    if spec.kind != "detector" or cfg.roi_head.box_target_norm != "dataset" or store is None:
        return None
    return compute_target_stats(store, manifest, cfg)


def make_validator(*, val: Manifest | None, spec: StageSpec, model: FasterRCNN,
                   store: ProposalStore | DenseProposalSource | None,
                   stats: TargetStats | None, device: torch.device, runtime) -> Validator | None:
    """The stage's validator on ``val`` (None without one). A detector step runs on the proposals of the RPN
    that made its training proposals; the others on their own RPN."""
    if val is None:
        return None
    kind = "recall" if spec.kind == "rpn" else "map"

    def prepare() -> contextlib.AbstractContextManager:
        return folded(model.roi_head.bbox_pred, stats, model.box_coder)

    if isinstance(store, DenseProposalSource):  # Table 5: validated on the val images' dense windows
        return Validator(val, kind, device, runtime, ablation=DenseProposer(store.dense), prepare=prepare)
    proposals = stored_rpn_proposals(store, val, device, runtime) if spec.kind == "detector" else None
    return Validator(val, kind, device, runtime, proposals=proposals, prepare=prepare)
