"""The HDF5 proposal store: per image the RPN's boxes and scores, written resumably, read one image at a time.

Layout (readable by any HDF5 tool)::

    /                 attrs: format="frcnn-proposals", version=1, manifest_hash, checkpoint_hash, nms_thresh,
                      pre_nms_top_n, post_nms_top_n, min_size, scale, max_size, config (JSON), complete (0/1),
                      num_images, settings_digest
    /image_ids        variable-length UTF-8 strings, the manifest's image ids in manifest order
    /images/<index>   one group per image, named by its manifest index (ids may contain '/'):
                      attrs id, done=1 (written last); datasets boxes (float32 R x 4, original image pixels,
                      0-based continuous, sorted by score, descending) and scores (float32 R)

Datasets are uncompressed (gzip saved ~10 % and halved read speed). ``ProposalWriter`` flushes
``<path>.partial`` after each image, resumes after a crash, and renames it into place when complete;
``ProposalStore`` checks format, version, completeness and every dataset's shape before reading data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from ..atomic import fsync_dir, fsync_path
from ..callbacks import OnNote
from ..errors import ProposalStoreError
from ..file_kinds import other_kind

FORMAT = "frcnn-proposals"
VERSION = 1
MAX_PROPOSALS = 100_000  # per image; a file claiming more is refused before anything is read
MAX_IMAGES = 10_000_000
SETTINGS = ("checkpoint_hash", "nms_thresh", "pre_nms_top_n", "post_nms_top_n", "min_size", "scale",
            "max_size", "config")
_DUMP = "make it with `frcnn dump-proposals --model CKPT --data M.json --out {path}`"
_REDO = "make it again with `frcnn dump-proposals`"
_log = logging.getLogger(__name__)


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


def _lookup(key: int | str, image_ids: list[str], index_of: dict[str, int]) -> int:
    """Manifest index of an image given by index or id; KeyError/IndexError when there is none."""
    if isinstance(key, str):
        if key not in index_of:
            raise KeyError(f"image {key!r}")
        return index_of[key]
    index = int(key)
    if not 0 <= index < len(image_ids):
        raise IndexError(f"image index {index} (it has {len(image_ids)} images)")
    return index


def _is(value: Any, expected: int | str) -> bool:
    """``value == expected`` for an attribute of an untrusted file (arrays and odd types are never equal)."""
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) == expected


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


class ProposalStore:
    """Read a finished proposal file one image at a time (``get``); the header is validated on opening.

    The HDF5 handle is opened lazily per process, so a store can be handed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        f = self._handle()
        try:
            self.attrs = self._read_attrs(f)
            self.image_ids = self._read_ids(f)
        except ProposalStoreError:
            self.close()
            raise
        except Exception as exc:  # odd attribute or dataset types in a foreign or damaged file
            self.close()
            raise self._fail(f"cannot be read ({exc})") from None
        self.manifest_hash = self.attrs["manifest_hash"]
        self._index_of = {img_id: i for i, img_id in enumerate(self.image_ids)}

    def _fail(self, what: str, todo: str = _REDO) -> ProposalStoreError:
        return ProposalStoreError(f"proposal file {self.path} {what}; {todo}")

    def _handle(self) -> h5py.File:
        if self._file is not None and self._pid == os.getpid():
            return self._file
        if not self.path.is_file():
            partial = Path(f"{self.path}.partial")
            if partial.exists():
                raise self._fail("does not exist, but an unfinished dump does",
                                 f"rerun the same `frcnn dump-proposals` command to finish {partial}")
            raise self._fail("does not exist", _DUMP.format(path=self.path))
        try:
            self._file = h5py.File(self.path, "r")
        except Exception as exc:  # h5py raises OSError, or others for odd files
            kind = other_kind(self.path, "hdf5")
            if kind is not None:
                raise self._fail(f"is {kind}, not a proposal file",
                                 "give the file written by `frcnn dump-proposals` (or `frcnn prepare proposals`)"
                                 ) from None
            raise self._fail(f"is not a readable HDF5 file (truncated or corrupt: {exc})") from None
        self._pid = os.getpid()
        return self._file

    def _read_attrs(self, f: h5py.File) -> dict[str, Any]:
        fmt, version = f.attrs.get("format"), f.attrs.get("version")
        if not _is(fmt, FORMAT):
            raise self._fail(f"is an HDF5 file but not a frcnn proposal file (format {fmt!r})",
                             "give the file written by `frcnn dump-proposals`")
        if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 1:
            raise self._fail(f"has an invalid version {version!r}")
        if version > VERSION:
            raise self._fail(f"has version {int(version)}, newer than this frcnn reads ({VERSION})",
                             "upgrade frcnn or dump the proposals again with this version")
        if not _is(f.attrs.get("complete"), 1):
            raise self._fail("is incomplete (the dump did not finish)", "rerun `frcnn dump-proposals`")
        attrs = {k: v.item() if isinstance(v, np.generic) else v for k, v in f.attrs.items()}
        for key in ("manifest_hash", *SETTINGS):
            if key not in attrs:
                raise self._fail(f"lacks the attribute {key!r}")
        if not isinstance(attrs["manifest_hash"], str):
            raise self._fail("has a manifest_hash that is not text")
        try:
            attrs["config"] = json.loads(attrs["config"])
        except (TypeError, ValueError):
            raise self._fail("has a config attribute that is not JSON") from None
        return attrs

    def _read_ids(self, f: h5py.File) -> list[str]:
        ds = f.get("image_ids")
        if (not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] > MAX_IMAGES
                or h5py.check_string_dtype(ds.dtype) is None or not isinstance(f.get("images"), h5py.Group)):
            raise self._fail("has no valid /image_ids list or /images group")
        return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in ds[()].tolist()]

    def __len__(self) -> int:
        return len(self.image_ids)

    def index(self, key: int | str) -> int:
        """The manifest index of an image given by index or id."""
        try:
            return _lookup(key, self.image_ids, self._index_of)
        except (KeyError, IndexError) as exc:
            raise self._fail(f"has no {exc.args[0]}", "use the manifest it was made for") from None

    def _dataset(self, group: h5py.Group, name: str, shape_ok: Callable, img: str) -> np.ndarray:
        ds = group.get(name)
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind != "f" or not shape_ok(ds.shape):
            shape = getattr(ds, "shape", None)
            raise self._fail(f"has an invalid {name} dataset for image {img} (shape {shape})")
        try:
            data = ds[()].astype(np.float32, copy=False)
        except OSError as exc:
            raise self._fail(f"cannot be read at image {img} ({exc})") from None
        if not np.isfinite(data).all():
            raise self._fail(f"has non-finite {name} for image {img}")
        return data

    def get(self, key: int | str) -> tuple[Tensor, Tensor]:
        """One image's ``(boxes float32[R, 4], scores float32[R])``, sorted by score, original pixels."""
        index = self.index(key)
        img = repr(self.image_ids[index])
        group = self._handle()["images"].get(str(index))
        if not isinstance(group, h5py.Group) or not _is(group.attrs.get("done"), 1):
            raise self._fail(f"has no proposals for image {img} (index {index})")
        boxes = self._dataset(group, "boxes", lambda s: len(s) == 2 and s[1] == 4 and s[0] <= MAX_PROPOSALS,
                              img)
        scores = self._dataset(group, "scores", lambda s: s == (boxes.shape[0],), img)
        return torch.from_numpy(boxes), torch.from_numpy(scores)

    def check_manifest(self, manifest, manifest_path: str | os.PathLike) -> None:
        """Refuse (naming both files) a store made from another manifest or lacking some of its images."""
        from .manifest import manifest_hash

        want = manifest_hash(manifest)
        ids = [rec.id for rec in manifest.images]
        missing = [i for i in ids if i not in self._index_of]
        new = Path(manifest_path).with_suffix("").name + "-proposals.h5"
        redo = (f"give the proposal file made for {manifest_path}, or dump one: "
                f"`frcnn dump-proposals --model RPN.pt --data {manifest_path} --out {new}`")
        if self.manifest_hash != want:
            extra = f"; {len(missing)} of its {len(ids)} images are not in it" if missing else ""
            raise ProposalStoreError(
                f"proposal file {self.path} was made from another manifest (hash {self.manifest_hash[:12]}) "
                f"than {manifest_path} (hash {want[:12]}){extra}; {redo}")
        present = set(self._handle()["images"].keys())
        lacking = [img for i, img in enumerate(ids)
                   if str(i) not in present or self.image_ids[i:i + 1] != [img]]
        if missing or lacking:
            first, count = (missing or lacking)[0], len(set(missing) | set(lacking))
            raise ProposalStoreError(f"proposal file {self.path} lacks {count} of the {len(ids)} images of "
                                     f"{manifest_path} (first: {first!r}); {redo}")

    def num_proposals(self) -> int:
        """Total number of proposals in the file (shapes only; no data is read)."""
        images = self._handle()["images"]
        return sum(int(images[name]["boxes"].shape[0]) for name in images)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def __enter__(self) -> ProposalStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def bytes_per_proposal(path: str | os.PathLike) -> float:
    """File size divided by the number of proposals in it (for benchmarks)."""
    with ProposalStore(path) as store:
        return os.path.getsize(path) / max(store.num_proposals(), 1)
