"""``eval`` and ``dump-proposals`` over a manifest, shared among the ranks of ``torchrun`` (``sharding``): each
rank runs the one ``Predictor`` on its share of every chunk with its own loader (decoding included), and after
each chunk the ranks meet once: ``eval``'s detections go to rank 0 (one message a rank a chunk), a dump's
proposals go to disk (``data/proposal_segments``). With one process both are the single-process loops
(``inference.predict_manifest``, ``inference.dump_proposals``), unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from torch import Tensor

from . import sharding
from .callbacks import Progress
from .data.manifest import Manifest, manifest_hash
from .data.proposal_segments import SegmentMerger, SegmentWriter, absorb_segments, segment_path
from .data.proposal_store import ProposalWriter, settings_digest
from .inference import Predictor, dump_attributes, dump_proposals, predict_manifest
from .locks import output_lock
from .sharding import Outcome, RankGroup, batch_cost, batches_of, capture, flat, plan_chunks

ChunkWork = Callable[[int, Iterator], list]  # (chunk number, this rank's batches of it) -> per-image values


def manifest_plan(predictor: Predictor, manifest: Manifest, keys: Sequence[int], *, batch_size: int, world: int,
                  per_rank: int | None = None) -> list:
    """``sharding.plan_chunks`` of the manifest images ``keys`` in batches of ``batch_size``, costed by their
    sizes at the predictor's test scale."""
    batches = batches_of(list(keys), batch_size)
    per_rank = sharding.CHUNK_IMAGES if per_rank is None else per_rank
    input_cfg = predictor.settings.config.input
    costs = [batch_cost([(manifest.images[i].height, manifest.images[i].width) for i in b], input_cfg)
             for b in batches]
    return plan_chunks(batches, costs, world, per_rank=per_rank)


def run_shares(group: RankGroup, plan: list, batches: Iterator, run_chunk: ChunkWork, *,
               progress: Progress | None = None, done: int = 0, total: int = 0) -> Iterator[list | None]:
    """This rank's part of every chunk of ``plan``: ``run_chunk(k, its batches)`` (drawn from ``batches``, the
    rank's loader over all its batches in order), then the exchange. Yields per chunk, on rank 0, the chunk's
    per-image values in image order (the ranks' lists concatenated), None on the others. ``progress`` (rank 0)
    is exact at the end of each chunk and estimated from rank 0's own pace within one."""
    for k, shares in enumerate(plan):
        own, size = shares[group.rank], sum(len(b) for share in shares for b in share)
        mine = 0

        def own_batches(own=own, start=done, size=size) -> Iterator:
            nonlocal mine
            for _ in own:
                batch = next(batches)
                yield batch
                mine += len(batch)
                if progress is not None and group.is_main:
                    progress(start + min(mine * group.world, size - 1), total)

        values, _ = group.gather(capture(lambda k=k: run_chunk(k, own_batches())))
        done += size
        if progress is not None and group.is_main:
            progress(done, total)
        yield [v for part in values for v in part] if group.is_main else None


def predict_sharded(predictor: Predictor, manifest: Manifest, group: RankGroup, *, batch_size: int = 1,
                    proposals: bool = False, progress: Progress | None = None, per_rank: int | None = None,
                    ) -> tuple[list[dict[str, Tensor]], list[Tensor] | None] | None:
    """``inference.predict_manifest`` shared among the ranks of ``group``: on rank 0 every image's detections
    (and with ``proposals`` its test proposals) in manifest order, equal to one process's; None on the others."""
    if group.world == 1:
        return predict_manifest(predictor, manifest, batch_size=batch_size, progress=progress, proposals=proposals)
    plan = manifest_plan(predictor, manifest, range(len(manifest.images)), batch_size=batch_size,
                         world=group.world, per_rank=per_rank)
    mine = flat([b for chunk in plan for b in chunk[group.rank]])
    batches = predictor.manifest_batches(manifest, indices=mine, batch_size=batch_size) if mine else iter(())

    def run_chunk(_: int, own: Iterator) -> list:
        found = []
        for batch in own:
            result = predictor.run(batch, proposals=proposals)
            props = [p[0] for p in result.proposals] if proposals else [None] * len(batch)
            found += zip(result.detections, props)
        return found

    dets, props = [], []
    for values in run_shares(group, plan, batches, run_chunk, progress=progress, total=len(manifest.images)):
        for det, prop in values or ():
            dets.append(det)
            props.append(prop)
    return (dets, props if proposals else None) if group.is_main else None


def dump_sharded(predictor: Predictor, manifest: Manifest, out: Path, group: RankGroup, *, checkpoint_path: Path,
                 batch_size: int = 1, progress: Progress | None = None, per_rank: int | None = None) -> Path | None:
    """``inference.dump_proposals`` shared among the ranks of ``group``: the same proposal file (datasets,
    attributes, image order), resumable after a kill with any number of ranks. Rank 0 locks ``out``, absorbs
    what a killed dump left, and says what is still to run; each rank writes its share of each chunk to a
    segment, which rank 0's helper process copies into ``out.partial`` as the dump goes
    (``data/proposal_segments``); ``out`` is renamed into place at the end. Returns ``out`` on rank 0, None on
    the others."""
    if group.world == 1:
        return dump_proposals(predictor, manifest, out, checkpoint_path=checkpoint_path, batch_size=batch_size,
                              progress=progress)
    attrs, ids = dump_attributes(predictor, checkpoint_path), [r.id for r in manifest.images]
    mhash = manifest_hash(manifest)
    writer_args = {"manifest_hash": mhash, "attrs": attrs, "image_ids": ids}
    with output_lock(out) if group.is_main else contextlib.nullcontext():
        todo = group.from_main(lambda: _still_to_run(out, writer_args))
        plan = manifest_plan(predictor, manifest, todo, batch_size=batch_size, world=group.world, per_rank=per_rank)
        merger = SegmentMerger(out, writer_args) if group.is_main else None  # forked before any HDF5 file opens
        try:
            _run_dump(predictor, manifest, out, group, plan, merger, batch_size=batch_size, progress=progress,
                      digest=settings_digest(mhash, ids, attrs), done=len(ids) - len(todo))
            group.gather(capture(merger.finish) if merger is not None else Outcome())
        finally:
            if merger is not None:
                merger.stop()
    return out if group.is_main else None


def _still_to_run(out: Path, writer_args: dict) -> list[int]:
    """Rank 0, before any rank runs: ``out.partial`` with every segment a killed dump left absorbed; the manifest
    indices it still lacks."""
    with ProposalWriter(out, **writer_args) as writer:
        absorb_segments(writer, out)
        return writer.pending()


def _run_dump(predictor: Predictor, manifest: Manifest, out: Path, group: RankGroup, plan: list,
              merger: SegmentMerger | None, *, batch_size: int, progress: Progress | None, digest: str,
              done: int) -> None:
    mine = flat([b for chunk in plan for b in chunk[group.rank]])
    batches = predictor.manifest_batches(manifest, indices=mine, batch_size=batch_size) if mine else iter(())
    ids, mhash = [r.id for r in manifest.images], manifest_hash(manifest)

    def run_chunk(k: int, own: Iterator) -> list:
        if plan[k][group.rank]:
            segment = SegmentWriter(segment_path(out, k, group.rank), digest=digest, manifest_hash=mhash,
                                    image_ids=ids)
            try:
                for batch in own:
                    found = predictor.run(batch, detections=False, proposals=True).proposals
                    for index, (boxes, scores) in zip(batch.indices.tolist(), found):
                        segment.write(index, boxes, scores)
                segment.finish()
            finally:
                segment.close()
        if merger is not None:
            merger.check()
        return []

    for _ in run_shares(group, plan, batches, run_chunk, progress=progress, done=done, total=len(manifest.images)):
        pass
