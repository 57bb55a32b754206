"""The batched loops over a manifest that ``eval``, ``dump-proposals``, the demo and training share:
``predict_manifest`` / ``detect_manifest`` (detections, and test proposals from the same forward) and
``dump_proposals`` (an HDF5 proposal file, resumable), with what a dump records (``dump_record``,
``dump_attributes``). They take any ``inference.PredictorLike``; ``inference.py`` imports them, so they are
importable from there too.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from .atomic import check_writable
from .callbacks import Progress
from .config import Config
from .config_io import config_to_dict
from .data.manifest import Manifest, manifest_hash
from .data.proposal_segments import absorb_segments
from .data.proposal_store import ProposalWriter
from .locks import output_lock
from .model.checkpoint import file_sha256

if TYPE_CHECKING:  # annotations only: inference.py imports this module
    from .inference import InferenceSettings, PredictorLike


def predict_manifest(predictor: PredictorLike, manifest: Manifest, *, batch_size: int = 1,
                     progress: Progress | None = None,
                     proposals: bool = False) -> tuple[list[dict[str, Tensor]], list[Tensor] | None]:
    """Detections of every manifest image (``boxes`` original pixels, ``scores``, ``labels`` 1..K) on the host,
    and with ``proposals`` each image's test proposals (original pixels) from the same forward."""
    dets: list = [None] * len(manifest.images)
    props: list | None = [None] * len(manifest.images) if proposals else None
    done = 0
    for batch in predictor.manifest_batches(manifest, batch_size=batch_size):
        result = predictor.run(batch, proposals=proposals)
        for k, index in enumerate(batch.indices.tolist()):
            dets[index] = result.detections[k]
            if props is not None:
                props[index] = result.proposals[k][0]
        done += len(batch)
        if progress is not None:
            progress(done, len(manifest.images))
    return dets, props


def detect_manifest(predictor: PredictorLike, manifest: Manifest, *, batch_size: int = 1,
                    progress: Progress | None = None) -> list[dict[str, Tensor]]:
    """Detections of every manifest image (``predict_manifest`` without the proposals)."""
    return predict_manifest(predictor, manifest, batch_size=batch_size, progress=progress)[0]


def dump_record(settings: InferenceSettings) -> Config:
    """The config a proposal file records: the settings' config with, for a dump, the proposal numbers that
    ran in its ``rpn`` section (``rpn.nms_thresh``, ``dump_pre_nms_top_n``, ``dump_post_nms_top_n``)."""
    cfg, p = settings.config, settings.proposals
    if settings.mode != "dump":
        return cfg
    return replace(cfg, rpn=replace(cfg.rpn, nms_thresh=p.nms_thresh, dump_pre_nms_top_n=p.pre_nms_top_n,
                                    dump_post_nms_top_n=p.post_nms_top_n))


def dump_attributes(predictor: PredictorLike, checkpoint_path: Path) -> dict:
    """What a proposal file made by ``predictor`` from ``checkpoint_path`` records (proposal_store.SETTINGS)."""
    settings, cfg = predictor.settings, dump_record(predictor.settings)
    p = settings.proposals
    return {"checkpoint_hash": file_sha256(checkpoint_path), "checkpoint": str(checkpoint_path),
            "nms_thresh": p.nms_thresh, "pre_nms_top_n": p.pre_nms_top_n, "post_nms_top_n": p.post_nms_top_n,
            "min_size": p.min_size, "scale": cfg.input.test_scale, "max_size": cfg.input.max_size,
            "config": json.dumps(config_to_dict(cfg))}


def dump_proposals(predictor: PredictorLike, manifest: Manifest, out: Path, *, checkpoint_path: Path,
                   batch_size: int = 1, progress: Progress | None = None) -> Path:
    """Every image's proposals in original pixels, sorted by score, into the HDF5 store ``out``, with the
    settings of ``predictor`` (built with ``mode="dump"``: no pre-NMS cap, NMS 0.7, top 2000 for the paper).

    Written to ``out.partial`` image by image; rerunning after an interruption continues with the images
    not yet written; the file is renamed to ``out`` only when complete. ``out`` is locked meanwhile
    (``locks.output_lock``): a second dump to it is a ``BusyError`` naming this process.
    """
    attrs = dump_attributes(predictor, checkpoint_path)
    with output_lock(out):  # a second dump to ``out`` is refused naming this process, not let into .partial
        check_writable(Path(f"{out}.partial"), option="--out")  # its name too must fit the file system
        _dump_into(predictor, manifest, out, attrs, batch_size, progress)
    return out


def _dump_into(predictor: PredictorLike, manifest: Manifest, out: Path, attrs: dict, batch_size: int,
               progress: Progress | None) -> None:
    open_writer = lambda: ProposalWriter(out, manifest=manifest, manifest_hash=manifest_hash(manifest),
                                         attrs=attrs)
    with open_writer() as writer:
        absorb_segments(writer, out)  # what a sharded dump killed before assembling it left (proposal_segments)
        todo = [i for i in range(len(manifest.images)) if not writer.done(i)]
    # the loader's workers start (fork) while no HDF5 file is open: a worker that outlives a killed dump
    # must not hold the file's lock, or the rerun could not resume it
    batches = iter(predictor.manifest_batches(manifest, indices=todo, batch_size=batch_size))
    with open_writer() as writer:
        done = len(manifest.images) - len(todo)
        for batch in batches:
            found = predictor.run(batch, detections=False, proposals=True).proposals
            for index, (boxes, scores) in zip(batch.indices.tolist(), found):
                writer.write(index, boxes, scores)
            done += len(batch)
            if progress is not None:
                progress(done, len(manifest.images))
        writer.finish()
