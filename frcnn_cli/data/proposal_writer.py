"""``ProposalWriter``: a proposal file written image by image into ``<path>.partial``, resumed after a crash and
renamed into place when complete; ``write_image`` (one image's group, also used by ``proposal_segments.py``) and
``settings_digest`` (what a resumed or absorbed file must match). The layout is described in ``proposal_store.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from ..atomic import fsync_dir, fsync_path
from ..callbacks import OnNote
from ..errors import ProposalStoreError
from .proposal_format import FORMAT, MAX_PROPOSALS, SETTINGS, VERSION, _is, _lookup

_log = logging.getLogger("frcnn_cli.data.proposal_store")  # the logger's name from before the split


def _plain(value: Any) -> Any:
    """An HDF5 attribute value: dicts, lists and None as JSON text, numbers and strings as they are."""
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value, sort_keys=True)
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"a proposal attribute of type {type(value).__name__} cannot be stored")
    return value


def _digest(manifest_hash: str, image_ids: Sequence[str], attrs: dict[str, Any]) -> str:
    content = {"manifest_hash": manifest_hash, "image_ids": list(image_ids), "attrs": attrs}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def settings_digest(manifest_hash: str, image_ids: Sequence[str], attrs: dict[str, Any]) -> str:
    """The digest a writer of these images and attributes stores (``settings_digest``): resuming or absorbing a
    file needs the same."""
    return _digest(str(manifest_hash), [str(i) for i in image_ids], {k: _plain(v) for k, v in attrs.items()})


def write_image(images: h5py.Group, index: int, img_id: str, boxes: Tensor | np.ndarray,
                scores: Tensor | np.ndarray) -> None:
    """One image's group ``images/<index>`` (``[R, 4]`` boxes, ``[R]`` scores, sorted by score), replacing an
    earlier one; ``done`` is written last, so a group without it was interrupted and is rewritten on resume."""
    b, s = _as_numpy(boxes).reshape(-1, 4), _as_numpy(scores).reshape(-1)
    if b.shape[0] != s.shape[0] or b.shape[0] > MAX_PROPOSALS:
        raise ValueError(f"image {img_id}: {b.shape[0]} boxes, {s.shape[0]} scores (max {MAX_PROPOSALS})")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ProposalStoreError(f"proposals for image {img_id} are not finite; the model has diverged: "
                                 "train it again or use an earlier checkpoint")
    order = np.argsort(-s, kind="stable")
    name = str(index)
    if name in images:
        del images[name]
    group = images.create_group(name)
    group.attrs["id"] = img_id
    group.create_dataset("boxes", data=b[order])
    group.create_dataset("scores", data=s[order])
    group.attrs["done"] = 1


def _as_numpy(x: Tensor | np.ndarray, dtype=np.float32) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)
    return np.asarray(x, dtype=dtype)


class ProposalWriter:
    """Write ``<path>.partial`` image by image; ``finish()`` renames it to ``path`` once all are written.

    ``attrs`` must hold the settings of :data:`SETTINGS` (``config`` may be a dict: stored as JSON).
    Reopening a ``.partial`` written with the same manifest hash, image ids and attrs resumes it
    (``done(key)`` is then true for the images already written); one written with anything else, or one
    that cannot be read, is discarded with a note to ``on_note`` (default: the logger); closing without
    ``finish()`` keeps it for a later resume. Images: ``manifest=`` or ``image_ids``; keys: index or id.
    """

    def __init__(self, path: str | os.PathLike, *, manifest_hash: str, attrs: dict[str, Any],
                 manifest=None, image_ids: Sequence[str] | None = None,
                 on_note: OnNote | None = None):
        missing = [k for k in SETTINGS if k not in attrs]
        if missing or (manifest is None) == (image_ids is None):
            raise TypeError(f"ProposalWriter needs the attributes {SETTINGS} and one of manifest, image_ids")
        self.path = Path(path)
        self.partial = Path(f"{self.path}.partial")
        ids = image_ids if image_ids is not None else [rec.id for rec in manifest.images]
        self.image_ids = [str(i) for i in ids]
        self._index_of = {img_id: i for i, img_id in enumerate(self.image_ids)}
        self._attrs = {k: _plain(v) for k, v in attrs.items()}
        self._manifest_hash = str(manifest_hash)
        self.digest = _digest(self._manifest_hash, self.image_ids, self._attrs)
        self._note = on_note or _log.warning
        self._done: set[int] = set()
        self._file = self._resume() or self._create()
        self.resumed_images = len(self._done)

    def _resume(self) -> h5py.File | None:
        if not self.partial.exists():
            return None
        try:
            f = h5py.File(self.partial, "a")
        except Exception as exc:  # any failure to open means: start again
            return self._discard(f"it cannot be read ({exc})")
        try:
            a = f.attrs
            if not (_is(a.get("format"), FORMAT) and _is(a.get("version"), VERSION)
                    and _is(a.get("settings_digest"), self.digest)):
                f.close()
                return self._discard("it was written for another manifest, model or settings")
            images = f["images"]
            for name in list(images.keys()):
                if self._complete_group(images[name], name):
                    self._done.add(int(name))
                else:
                    del images[name]
        except Exception as exc:  # a damaged partial file is rewritten from scratch
            f.close()
            self._done.clear()
            return self._discard(f"it is damaged ({exc})")
        return f

    def _complete_group(self, group: Any, name: str) -> bool:
        if not (name.isdigit() and int(name) < len(self.image_ids) and isinstance(group, h5py.Group)):
            return False
        boxes, scores = group.get("boxes"), group.get("scores")
        return (_is(group.attrs.get("done"), 1) and isinstance(boxes, h5py.Dataset)
                and isinstance(scores, h5py.Dataset) and boxes.ndim == 2 and boxes.shape[1] == 4
                and scores.shape == (boxes.shape[0],))

    def _discard(self, why: str) -> None:
        self._note(f"discarding the unfinished proposal file {self.partial}: {why}; starting the dump again")
        self.partial.unlink()

    def _create(self) -> h5py.File:
        try:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(self.partial, "w")
        except OSError as exc:
            raise ProposalStoreError(f"cannot write {self.partial}: {exc}; choose a writable output") from exc
        f.attrs.update({"format": FORMAT, "version": VERSION, "manifest_hash": self._manifest_hash,
                        "complete": 0, "num_images": len(self.image_ids), "settings_digest": self.digest})
        f.attrs.update(self._attrs)
        ids = f.create_dataset("image_ids", shape=(len(self.image_ids),), dtype=h5py.string_dtype("utf-8"))
        if self.image_ids:
            ids[:] = self.image_ids
        f.create_group("images")
        f.flush()
        return f

    def done(self, key: int | str) -> bool:
        """Whether the image's proposals are already in the file (written now or before a resume)."""
        return _lookup(key, self.image_ids, self._index_of) in self._done

    def pending(self) -> list[int]:
        """Manifest indices still to write, in order."""
        return [i for i in range(len(self.image_ids)) if i not in self._done]

    def write(self, key: int | str, boxes: Tensor | np.ndarray, scores: Tensor | np.ndarray) -> None:
        """Store one image's proposals (``[R, 4]`` original pixels, ``[R]``), sorted by score, and flush."""
        index = _lookup(key, self.image_ids, self._index_of)
        try:
            write_image(self._file["images"], index, self.image_ids[index], boxes, scores)
            self._file.flush()
        except OSError as exc:  # a full disk, a lost mount: what is written so far stays for a rerun
            raise self._write_error(exc, f"at image {self.image_ids[index]}") from None
        self._done.add(index)

    def copy_image(self, group: h5py.Group, name: str) -> bool:
        """Copy the image ``group`` of another file written with the same ``digest`` (checked by the caller:
        ``proposal_segments.absorb``) into this one when it is finished; whether it was (not flushed)."""
        if not self._complete_group(group, name):
            return False
        images = self._file["images"]
        if name in images:
            del images[name]
        group.file.copy(group, images, name=name)  # datasets and attributes, "done" included
        self._done.add(int(name))
        return True

    def flush(self, where: str = "") -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise self._write_error(exc, where) from None

    def _write_error(self, exc: OSError, where: str) -> ProposalStoreError:
        return ProposalStoreError(
            f"cannot write {self.partial} {where} ({exc.strerror or exc}); free some space or choose another "
            "output, then rerun the same command: the images written so far are kept")

    def finish(self) -> Path:
        """Mark the file complete, close and fsync it and rename it to ``path``."""
        todo = self.pending()
        if todo:
            raise ProposalStoreError(
                f"{self.partial}: {len(todo)} of {len(self.image_ids)} images have no proposals yet "
                f"(first: {self.image_ids[todo[0]]}); write them before finishing")
        try:
            self._file.attrs["complete"] = 1
            self._file.close()
            fsync_path(self.partial)
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise self._write_error(exc, "while finishing it") from None
        fsync_dir(self.path.parent)
        return self.path

    def close(self) -> None:
        """Close without finishing; the ``.partial`` stays for a resume (which checks every image in it)."""
        if self._file.id.valid:
            with contextlib.suppress(OSError):  # after a failed write, whose error is the one that matters
                self._file.close()

    def __enter__(self) -> ProposalWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
