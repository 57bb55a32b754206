"""The one atomic-write helper: a crash never leaves a half-written file under its real name.

Write to a temporary file in the destination folder, flush and fsync it, then ``os.replace`` it over
the real name (atomic on POSIX and Windows). On any exception the temporary file is removed and the
previous file under the real name, if any, is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import FrcnnError


def fsync_path(path: Path) -> None:
    """Flush a file's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk, where the filesystem allows it."""
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
        fsync_path(folder)


def _make_temp(path: Path) -> Path:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise FrcnnError(
            f"cannot write {path}: {exc.strerror or exc}; choose an output folder you can write to"
        ) from exc
    os.close(fd)
    return Path(tmp)


def ensure_dir(path: str | os.PathLike, option: str = "--workdir") -> Path:
    """Create the folder ``path`` (and its parents) or raise a ``FrcnnError`` that says which ``option`` to fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FrcnnError(f"cannot create {path}: {exc.strerror or exc}; choose a {option} you can write to") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``.

    For writers that need a file name (``torch.save``, ``h5py.File``, ``Image.save``).
    """
    path = Path(path)
    tmp = _make_temp(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise FrcnnError(
                f"cannot write {path}: {exc.strerror or exc}; free some space or choose another output"
            ) from exc
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
