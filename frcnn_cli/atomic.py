"""The one atomic-write helper: a crash never leaves a half-written file under its real name.

Write to a temporary file in the destination folder, flush and fsync it, then ``os.replace`` it over
the real name (atomic on POSIX and Windows). On any exception the temporary file is removed and the
previous file under the real name, if any, is left untouched.

A written file gets the mode a plain ``open`` would give it, ``0o666`` less the umask (``tempfile``'s
own ``0o600`` would survive the rename). ``check_writable`` tells before any work whether an output can be
written at all; ``atomic_dir`` does for a folder of files what ``atomic_path`` does for one file.

Only a ``kill -9`` or a power cut leaves the temporary file behind. Its name, ``.NAME.pidPID-HOST.RANDOM.tmp``,
says which process on which machine (``HOST``: 8 hex digits of a hash of the host name) wrote it, so a
later write of ``NAME`` removes the ones whose writer is gone. A file of a live process (this one or
another), of another machine (a shared filesystem), or without that mark is never touched. A ``NAME`` too long
to leave room for the mark (over 218 bytes where names may have 255) appears shortened, its first bytes and a
hash of the whole (``output_paths.short_stem``), so that every name the file system allows can be written.

An output that is a symbolic link is written through (its target gets the new file, the link stays); one that
is a device, a FIFO or a socket is never replaced (``/dev/null`` stays a device).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import FrcnnError
from .output_paths import (
    check_name_length,
    is_name_too_long,
    link_error,
    not_regular,
    real_output,
    short_stem,
    special_kind,
)


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


def umask() -> int:
    """This process's umask, read without changing it where the system tells (Linux: /proc)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file here: ``0o666`` less the umask."""
    return 0o666 & ~umask()


TEMP_RESERVE = len(".") + len(".pid") + 10 + len("-") + 8 + len(".") + 8 + len(".tmp")  # the bytes of the mark
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
    for pid, tmp in _temps_of_other_writers(path.parent).pop(short_stem(path.name, TEMP_RESERVE, path.parent), []):
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)  # an ``atomic_dir`` staging folder
                else:
                    tmp.unlink()
                removed.append(tmp)
    return removed


def _temp_prefix(path: Path) -> str:
    """The start of a temporary's name for ``path`` (``TEMP_RESERVE`` bytes longer with its end)."""
    return f".{short_stem(path.name, TEMP_RESERVE, path.parent)}.pid{os.getpid()}-{_host_id()}."


def cannot_write(path: Path, exc: OSError, option: str | None = None) -> FrcnnError:
    """The one message of an output that cannot be written at all (permissions, read-only, not a folder)."""
    where = f" ({option})" if option else ""
    if is_name_too_long(exc):
        return FrcnnError(f"cannot write {path}: {exc.strerror or exc}; give {option or 'the output'} a shorter name")
    if exc.errno == errno.ENOSPC:
        return FrcnnError(f"cannot write {path}: {exc.strerror or exc}; free some space or choose another "
                          f"output{where}")
    return FrcnnError(f"cannot write {path}: {exc.strerror or exc}; choose an output folder you can write to{where}")


def _make_temp(path: Path, *, folder: bool = False) -> Path:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        prefix = _temp_prefix(path)
        if folder:
            tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
            os.chmod(tmp, 0o777 & ~umask())
            return Path(tmp)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0o600 would survive the rename
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise cannot_write(path, exc) from exc
    os.close(fd)
    return Path(tmp)


def check_writable(path: str | os.PathLike, *, option: str = "--out", folder: bool = False) -> Path:
    """Raise a ``FrcnnError`` now, before any work, when ``path`` cannot be written: a file to write (or to
    append to), or with ``folder`` a folder to write files into. Creates the folder (and its parents); a
    probe file is made and removed, so permissions, a read-only filesystem and a path under a regular file
    are all caught as the real write would meet them. Returns ``path``."""
    path = Path(path)
    where = path if folder else path.parent
    check_name_length(path, option)
    dangling = link_error(path, option, folder=folder)
    if dangling is not None:
        raise dangling
    if path.is_dir() and not folder:
        raise FrcnnError(f"cannot write {path}: it is a folder; give {option} a file name")
    if path.exists() and folder and not path.is_dir():
        raise FrcnnError(f"cannot write into {path}: it is {special_kind(path) or 'a file'}, not a folder; give "
                         f"{option} a folder")
    kind = None if folder else special_kind(path)
    if kind is not None:
        raise not_regular(path, kind, option)
    try:
        if where.exists() and not where.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} ({where} is a file)")
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=where)
        os.close(fd)
        os.unlink(probe)
        if path.is_file() and not os.access(path, os.W_OK):  # a file appended to in place (metrics.jsonl)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        if folder and exc.errno != errno.ENOSPC and not is_name_too_long(exc):  # as ``ensure_dir`` says it
            raise FrcnnError(f"cannot create {path}: {exc.strerror or exc}; choose a {option} you can write to"
                             ) from None
        raise cannot_write(path, exc, option) from None
    return path


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders that writing into the folder ``path`` would create: ``path`` and its missing parents,
    deepest first."""
    missing = []
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _disk_is_full(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` has no block left for this user."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def ensure_dir(path: str | os.PathLike, option: str = "--workdir") -> Path:
    """Create the folder ``path`` (and its parents) or raise a ``FrcnnError`` that says which ``option`` to fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise link_error(path, option, folder=True) or FrcnnError(
            f"cannot create {path}: {exc.strerror or exc}; choose a {option} you can write to") from None
    return path


def _output_file(path: str | os.PathLike) -> Path:
    """The file an atomic write of ``path`` replaces: ``path``, or its target when it is a symbolic link; a
    ``FrcnnError`` when that is a dangling link or a device, FIFO or socket (never replaced)."""
    path = Path(path)
    dangling = link_error(path, "output", folder=False)
    if dangling is not None:
        raise dangling
    real = real_output(path)
    kind = special_kind(real)
    if kind is not None:
        raise not_regular(path, kind, "output")
    return real


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``.

    For writers that need a file name (``torch.save``, ``h5py.File``, ``Image.save``). A symbolic link at ``path``
    is written through; a device, FIFO or socket there is refused, never replaced.
    """
    path = _output_file(path)
    tmp = _make_temp(path)
    try:
        yield tmp
        fsync_path(tmp)
        kind = special_kind(path)  # made meanwhile (mkfifo): still never replaced
        if kind is not None:
            raise not_regular(path, kind, "output")
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and not isinstance(exc, (OSError, FrcnnError)) and _disk_is_full(path.parent)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and is_name_too_long(exc):  # a name the file system does not allow
            raise cannot_write(path, exc) from exc
        if isinstance(exc, OSError):
            raise FrcnnError(
                f"cannot write {path}: {exc.strerror or exc}; free some space or choose another output"
            ) from exc
        if full:  # a writer that reports a full disk otherwise (torch.save to a path: a RuntimeError)
            raise FrcnnError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}; free some space or choose "
                             "another output") from exc
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the size on disk is checked before the rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if tmp.stat().st_size != len(data):  # a short write nobody reported
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {tmp.stat().st_size} of "
                                        f"{len(data)} bytes)")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` in one write (a log such as ``metrics.jsonl``; not atomic: a crash
    can cut its last line); a failure is a ``FrcnnError`` that names the file. A FIFO or a device is refused (an
    append to a FIFO would wait for a reader)."""
    kind = special_kind(path)
    if kind is not None:
        raise not_regular(Path(path), kind, "output")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise FrcnnError(f"cannot write {path}: {exc.strerror or exc}; free some space or choose another "
                         "output") from exc


def _move_into(staging: Path, target: Path) -> None:
    """Every entry of ``staging`` into ``target``: a folder new to ``target`` in one rename, else entry by
    entry; files replace those of the same name."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        dest = target / entry.name
        if entry.is_dir() and dest.is_dir():
            _move_into(entry, dest)
        else:
            os.replace(entry, dest)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside the folder ``path``; on success move what was written there into
    ``path`` (renames only: no byte is copied, none can fail for space), on any failure delete it all.

    For outputs made of many files (``prepare synth``): a full disk or an error half-way leaves nothing new
    under ``path``. Write a file that says the set is complete (a manifest) after this block."""
    path = real_output(Path(path))
    staging = _make_temp(path, folder=True)
    try:
        yield staging
        _move_into(staging, path)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise FrcnnError(f"cannot write {path}: {exc.strerror or exc}; free some space or choose another "
                             "output") from exc
        raise
    shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(path)
