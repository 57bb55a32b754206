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

This module holds ``ProposalStore``; ``ProposalWriter``, ``write_image`` and ``settings_digest`` are in
``proposal_writer.py`` (and importable from here), the format's constants and shared checks in ``proposal_format.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from ..errors import ProposalStoreError
from ..file_kinds import other_kind
from .proposal_format import FORMAT, MAX_IMAGES, MAX_PROPOSALS, SETTINGS, VERSION, _is, _lookup
from .proposal_writer import ProposalWriter, settings_digest, write_image  # noqa: F401  (their home is proposal_writer.py)

_DUMP = "make it with `frcnn dump-proposals --model CKPT --data M.json --out {path}`"
_REDO = "make it again with `frcnn dump-proposals`"


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
