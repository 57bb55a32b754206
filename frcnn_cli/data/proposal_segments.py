"""A proposal dump shared among ranks (``sharded_inference.dump_sharded``): each rank writes its images of each
chunk to a *segment* beside the output, and a helper process of rank 0 copies every finished segment into the
one ``<out>.partial`` while the ranks run the next chunk, so the one file is assembled as the dump goes.

Files, beside ``out`` (``P.h5``)::

    P.h5.partial                 the proposal file being assembled (``ProposalWriter``: resumable)
    P.h5.seg-000003-0001.partial chunk 3 of rank 1, being written (flushed after every image)
    P.h5.seg-000003-0001         the same, finished: the merger absorbs it and deletes it

A segment has the proposal file's layout without ``/image_ids`` (its ``settings_digest`` ties it to the
manifest, model and settings); only its finished images count. After a kill, the next dump (sharded or not,
with any number of ranks) absorbs every segment left, finished or not, before it decides what is still to run
(``absorb_segments``), so no finished image is run twice.

Why a helper process: one HDF5 file has one writer, and writing a group costs about a millisecond of CPU in
the HDF5 library, which holds Python's lock; in rank 0's own thread it would delay rank 0's forward and every
rank would wait for it at the next exchange. The helper only copies (``absorb``: HDF5's object
copy, no decoding), so it keeps up with several ranks and the dump ends with at most the last chunk to copy.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
from pathlib import Path

import h5py

from ..atomic import fsync_path
from ..callbacks import OnNote
from ..errors import FrcnnError, ProposalStoreError
from ..output_paths import short_stem
from .proposal_store import FORMAT, VERSION, ProposalWriter, write_image

POLL_SECONDS = 0.05
_log = logging.getLogger(__name__)


_SEGMENT = ".seg-000000-0000.partial"  # the longest ending a segment adds to the output's name


def _stem(out: Path) -> str:
    """``out``'s name as segments begin with it (cut and hashed when a segment's name would not fit)."""
    return short_stem(out.name, len(_SEGMENT), out.parent)


def segment_path(out: Path, chunk: int, rank: int) -> Path:
    """Where rank ``rank`` puts chunk ``chunk`` of a sharded dump to ``out`` (``.partial`` while written)."""
    return out.with_name(f"{_stem(out)}.seg-{chunk:06d}-{rank:04d}")


def segments(out: Path, *, finished_only: bool) -> list[Path]:
    """The segments of a dump to ``out`` now on disk (finished ones, or with ``finished_only=False`` also those
    being written or left by a killed rank), in name order."""
    ending = r"\.seg-\d{6}-\d{4}" + ("" if finished_only else r"(\.partial)?") + "$"
    pattern = re.compile(re.escape(_stem(out)) + ending)
    try:
        names = sorted(e.name for e in os.scandir(out.parent) if pattern.match(e.name))
    except FileNotFoundError:
        return []
    return [out.parent / name for name in names]


def absorb_segments(writer: ProposalWriter, out: Path, *, finished_only: bool = False) -> int:
    """Copy the images of the segments of ``out`` on disk into ``writer`` (deleting them); the number copied."""
    return sum(absorb(writer, seg) for seg in segments(out, finished_only=finished_only))


def absorb(writer: ProposalWriter, other: Path, on_note: OnNote | None = None) -> int:
    """Copy every finished image of ``other`` (a segment, or another writer's ``.partial``, of the same manifest,
    model and settings: the same ``settings_digest``) into ``writer`` with HDF5's object copy, flush it, and delete
    ``other``; a file of anything else, or a damaged one, is deleted with a note (its images are run again).
    Returns the number of images copied."""
    copied = 0
    try:
        with h5py.File(other, "r") as src:
            if not (_text(src.attrs.get("format")) == FORMAT
                    and _text(src.attrs.get("settings_digest")) == writer.digest):
                raise ValueError("it was written for another manifest, model or settings")
            copied = sum(writer.copy_image(group, name) for name, group in src["images"].items())
        writer.flush(f"while copying {other} into it")
    except ProposalStoreError:
        raise
    except Exception as exc:  # ``other`` was at fault, unless ``writer`` can no longer be written (then: raised)
        writer.flush(f"while copying {other} into it")
        (on_note or _log.warning)(f"discarding {other}: {exc}; its images are run again")
    other.unlink(missing_ok=True)
    return copied


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


class SegmentWriter:
    """One rank's images of one chunk, into ``segment_path(out, chunk, rank)``: created as ``.partial``, one
    group per image flushed as it is written (``proposal_store.write_image``), renamed when ``finish``ed.
    ``digest``: the ``settings_digest`` of the dump."""

    def __init__(self, path: Path, *, digest: str, manifest_hash: str, image_ids: list[str]) -> None:
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        self.image_ids = image_ids
        try:
            self._file = h5py.File(self.partial, "w")
            self._file.attrs.update({"format": FORMAT, "version": VERSION, "manifest_hash": manifest_hash,
                                     "complete": 0, "settings_digest": digest})
            self._file.create_group("images")
        except OSError as exc:
            raise ProposalStoreError(f"cannot write {self.partial}: {exc}; choose a writable output") from None

    def write(self, index: int, boxes, scores) -> None:
        try:
            write_image(self._file["images"], index, self.image_ids[index], boxes, scores)
            self._file.flush()
        except OSError as exc:
            raise ProposalStoreError(f"cannot write {self.partial} at image {self.image_ids[index]} "
                                     f"({exc.strerror or exc}); free some space or choose another output, then "
                                     "rerun the same command: the images written so far are kept") from None

    def finish(self) -> None:
        """Close, fsync and rename: from now on the merger may absorb it."""
        self._file.close()
        fsync_path(self.partial)
        os.replace(self.partial, self.path)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._file.id.valid:
                self._file.close()


# --------------------------------------------------------------------------------------------------
# the merger (a child process of rank 0)


class SegmentMerger:
    """A helper process of rank 0 that absorbs finished segments into ``<out>.partial`` as they appear
    (``writer_args``: the ``ProposalWriter`` keywords of the dump) and, on ``finish``, completes the file.

    Started while no HDF5 file is open in rank 0 (the helper is forked); it leaves when rank 0 dies, after the
    segment it is copying, with its file closed."""

    def __init__(self, out: Path, writer_args: dict) -> None:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_merge_loop, args=(child, out, writer_args, os.getpid()), daemon=True,
                                 name="frcnn-proposal-merger")
        self._proc.start()
        child.close()

    def check(self) -> None:
        """A ``ProposalStoreError`` when the helper has stopped with an error (a full disk …)."""
        if self._conn.poll():
            self._raise(self._conn.recv())
        if not self._proc.is_alive():
            self._raise(("error", f"the process assembling the proposal file stopped (exit code "
                                  f"{self._proc.exitcode}); rerun the same command: the images written are kept"))

    def finish(self) -> None:
        """Absorb what is left, complete the file (renamed into place) and wait for the helper to leave."""
        self._conn.send("finish")
        while not self._conn.poll(0.2):
            if not self._proc.is_alive():
                self.check()
        reply = self._conn.recv()
        self._proc.join()
        if reply != "done":
            self._raise(reply)

    def stop(self) -> None:
        """Stop the helper (after a failure): the segment it copies is finished first, the file left resumable."""
        if self._proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._conn.send("stop")
            self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    @staticmethod
    def _raise(reply) -> None:
        raise ProposalStoreError(reply[1])


def _merge_loop(conn, out: Path, writer_args: dict, parent: int) -> None:
    """The helper's body: absorb finished segments until told to ``finish`` (or ``stop``), or rank 0 is gone."""
    try:
        with ProposalWriter(out, **writer_args) as writer:
            while os.getppid() == parent:
                absorb_segments(writer, out, finished_only=True)
                if not conn.poll(POLL_SECONDS):
                    continue
                if conn.recv() == "finish":
                    absorb_segments(writer, out, finished_only=True)
                    writer.finish()
                    conn.send("done")
                return
    except FrcnnError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # reported to rank 0 as an error of the dump, not lost with this process
        conn.send(("error", f"assembling {out}.partial failed ({type(exc).__name__}: {exc}); rerun the same "
                            "command: the images written are kept"))
