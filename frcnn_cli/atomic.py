"""The one atomic-write helper: a crash never leaves a half-written file under its real name.

Write to a temporary file in the destination folder, flush and fsync it, then ``os.replace`` it over
the real name (atomic on POSIX and Windows). On any exception the temporary file is removed and the
previous file under the real name, if any, is left untouched.

Only a ``kill -9`` or a power cut leaves the temporary file behind. Its name, ``.NAME.pidPID-HOST.RANDOM.tmp``,
says which process on which machine (``HOST``: 8 hex digits of a hash of the host name) wrote it, so a
later write of ``NAME`` removes the ones whose writer is gone. A file of a live process (this one or
another), of another machine (a shared filesystem), or without that mark is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import socket
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


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.pid(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.\w+\.tmp")
# folder -> output name -> [(pid, temporary)] of other writers on this machine: a folder is listed once per
# process (a detect --out folder of 10,000 images would otherwise be listed for every image)
_others_temps: dict[str, dict[str, list[tuple[int, Path]]]] = {}


@functools.cache
def _host_id() -> str:
    """8 hex digits for this machine: a PID says nothing about a process on another one."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists here; True when in doubt (not POSIX, no permission)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _temps_of_other_writers(folder: Path) -> dict[str, list[tuple[int, Path]]]:
    key = os.path.abspath(folder)
    if key not in _others_temps:
        found: dict[str, list[tuple[int, Path]]] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                mark = _TEMP_NAME.fullmatch(entry.name)
                if mark and mark["host"] == _host_id() and int(mark["pid"]) != os.getpid():
                    found.setdefault(mark["name"], []).append((int(mark["pid"]), Path(entry.path)))
        _others_temps[key] = found
    return _others_temps[key]


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` that writers on this machine left when killed; the ones deleted.

    Called by every atomic write before it makes its own; a live writer's file is never touched.
    """
    path = Path(path)
    removed = []
    for pid, tmp in _temps_of_other_writers(path.parent).pop(path.name, []):
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _make_temp(path: Path) -> Path:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        prefix = f".{path.name}.pid{os.getpid()}-{_host_id()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
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
