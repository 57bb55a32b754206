"""Output locks: two frcnn processes never write the same output file or run folder at once.

A command locks each of its outputs before any work: a file ``DIR/NAME`` by the hidden file ``DIR/.NAME.lock``
beside it, a folder (``frcnn train --workdir``, ``detect --out``) by ``FOLDER/.frcnn.lock`` inside it. The
lock is a POSIX record lock (``lockf``) on that file, which holds its owner's PID, host, command line and
start time as JSON, so a second process is refused with an error that names the first. The kernel releases
the lock when its process ends however it ends (``kill -9`` too), so a lock file left by a killed process
is simply taken over; the file is deleted when the lock is released. A record lock belongs to its process
and is not inherited: DataLoader workers forked meanwhile, which may outlive a killed command for a few
seconds, never hold it. Locks are re-entrant within a process (a command and the library function it calls
may both lock ``props1.h5``; the lock file is opened once, since closing any descriptor of it would drop
a record lock).

A run folder and the files in it see each other: a lock is refused while another live process holds the lock
of a folder above its output (``train-rpn --out run/rpn1.pt`` while ``train --workdir run`` runs), and a folder's
lock while another holds a lock inside it (the reverse). Each process takes its own lock first and then looks
for the other's, so of two that start together at least one sees the other. A name too long to leave room
for ``.`` and ``.lock`` is shortened in its lock file's name (``output_paths.short_stem``).

A command may ask (``discard_on_failure``) that a folder it made for its output be deleted with everything in
it when the command fails before ``mark_complete``: ``detect --out`` and ``eval --out`` leave no partial folder.

Where record locks are not available (not POSIX, or a filesystem that refuses them) an output is not
locked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shlex
import shutil
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .atomic import cannot_write, check_writable, file_mode, missing_folders
from .errors import BusyError
from .output_paths import real_output, short_stem

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FOLDER_LOCK = ".frcnn.lock"
_LOCK_RESERVE = len(".") + len(".lock")


@dataclass
class _Held:
    fd: int | None  # None: not locked (no record locks here)
    count: int
    made: list[Path]  # folders made for the output, deepest first: removed again if left empty
    discard: bool = False  # on a failure before mark_complete: delete the topmost folder made, with its files
    complete: bool = False


_held: dict[tuple[int, str], _Held] = {}  # (pid, lock file): a forked child holds none of its parent's


def lock_path(target: str | os.PathLike, *, folder: bool = False) -> Path:
    """The lock file of the output ``target``: ``.NAME.lock`` beside a file, ``.frcnn.lock`` in a folder."""
    target = Path(target)
    if folder:
        return target / FOLDER_LOCK
    return target.with_name(f".{short_stem(target.name, _LOCK_RESERVE, target.parent)}.lock")


def _owner_record() -> bytes:
    command = shlex.join(["frcnn", *sys.argv[1:]])
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command[:500],
                       "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}).encode()


def _read_owner(fd: int) -> dict:
    """The owner record of a lock file held by another process ({} while it has not written it yet)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            if isinstance(owner, dict):
                return owner
        time.sleep(0.01)
    return {}


def _process(owner: dict) -> str:
    """``another frcnn process (PID 42, started …: frcnn train …)`` of an owner record."""
    pid, host = owner.get("pid", "?"), owner.get("host")
    where = "" if host in (None, socket.gethostname()) else f" on host {host}"
    since = f", started {owner['started']}" if owner.get("started") else ""
    command = f": {owner['command']}" if owner.get("command") else ""
    return f"another frcnn process (PID {pid}{where}{since}{command})"


def _busy(target: Path, lock: Path, owner: dict, option: str) -> BusyError:
    return BusyError(f"{target} is being written by {_process(owner)}; wait for it to finish or stop it, or choose "
                     f"another {option} (its lock file is {lock})")


def _lock_once(lock: Path, target: Path, option: str) -> int | None:
    """Open and lock ``lock``; its fd, or None when the file was replaced meanwhile (try again)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):  # a filesystem without record locks: go on unlocked
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            return -1
        owner = _read_owner(fd)
        os.close(fd)
        raise _busy(target, lock, owner, option) from None
    try:
        same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not deleted by its last owner in between
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    record = _owner_record()
    try:
        os.ftruncate(fd, 0)
        if os.pwrite(fd, record, 0) != len(record):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        _release(lock, fd)
        raise
    return fd


def _acquire(lock: Path, target: Path, option: str) -> int | None:
    if fcntl is None:
        return None
    try:
        for _ in range(100):
            fd = _lock_once(lock, target, option)
            if fd is not None:
                return None if fd < 0 else fd
    except OSError as exc:  # the lock file's record not written: a full disk (said so), or not writable
        raise cannot_write(target, exc, option) from None
    raise BusyError(f"cannot lock {target}: its lock file {lock} keeps being replaced; check for other frcnn "
                    f"processes writing it, or choose another {option}")


def _release(lock: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(lock).st_ino:
            os.unlink(lock)  # while still locked: whoever opened it meanwhile sees it replaced and retries
    os.close(fd)


def _key(target: Path, folder: bool) -> tuple[int, str]:
    return os.getpid(), os.path.abspath(lock_path(target if folder else real_output(target), folder=folder))


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, option: str = "--out", folder: bool = False,
                discard_on_failure: bool = False) -> Iterator[Path]:
    """Hold the lock of the output ``target`` (a file, or with ``folder`` a folder) inside the block.

    First checks that ``target`` can be written (``atomic.check_writable``: a ``FrcnnError`` naming it and
    ``option``); a ``BusyError`` naming the other process when a live one holds the lock, the lock of a folder
    above ``target``, or (``folder``) a lock inside it. Yields ``target``. The folders made for it are removed
    again at the end if they are still empty (nothing was written); with ``discard_on_failure``, when the block
    fails before ``mark_complete(target)``, the topmost of them is removed with everything written in it.
    """
    target = Path(target)
    key = _key(target, folder)
    lock = Path(key[1])
    held = _held.get(key)
    if held is None:
        made = missing_folders(lock.parent)
        try:
            check_writable(target, option=option, folder=folder)
            fd = _acquire(lock, target, option)
            held = _held[key] = _Held(fd, 0, made, discard=discard_on_failure)
            _check_nested(target, lock, option, folder)
        except BaseException:
            if key in _held:
                del _held[key]
                _release(lock, held.fd)
            _remove_empty(made)
            raise
    held.count += 1
    failed = False
    try:
        yield target
    except BaseException:
        failed = True
        raise
    finally:
        held.count -= 1
        if held.count == 0:
            # click < 8.2 closes a command's resources without its exception: it is still the one being handled
            failed = failed or sys.exc_info()[0] is not None
            del _held[key]
            if failed and held.discard and not held.complete and held.made:
                shutil.rmtree(held.made[-1], ignore_errors=True)  # made by this command: all in it is its own
            _release(lock, held.fd)
            _remove_empty(held.made)  # a command that failed before writing anything leaves no empty folder


def mark_complete(target: str | os.PathLike, *, folder: bool = False) -> None:
    """Say that the output ``target`` (locked by ``output_lock`` in this process) is written whole: a failure after
    this (``detect`` exiting 1 for unreadable photos) keeps it."""
    held = _held.get(_key(Path(target), folder))
    if held is not None:
        held.complete = True


def _held_inodes() -> set[tuple[int, int]]:
    """The lock files this process holds, by device and inode (closing any descriptor of one would drop it)."""
    found = set()
    for held in _held.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                info = os.fstat(held.fd)
                found.add((info.st_dev, info.st_ino))
    return found


def _other_holder(lock: Path, ours: set[tuple[int, int]]) -> dict | None:
    """The owner record of the lock file ``lock`` when another live process holds it (``{}`` if it has written none
    yet); None when the file is missing, not locked, or ours."""
    try:
        info = os.stat(lock)
        if (info.st_dev, info.st_ino) in ours:
            return None
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_owner(fd) if _locked_by_another(fd, lock) else None
    finally:
        os.close(fd)


def _locked_by_another(fd: int, lock: Path) -> bool:
    """Whether another process holds a record lock on the file of ``fd`` (never acquiring it on Linux)."""
    if sys.platform.startswith("linux"):
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        with contextlib.suppress(OSError):
            return struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0] != fcntl.F_UNLCK
        return False
    try:  # elsewhere: try to take it, and let go at once
        probe = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(probe)
    return False


_NESTED_DEPTH = 4  # how deep below a folder output its lock looks for others' (run folders nest one or two levels)


def _locks_inside(folder: Path, own: Path) -> Iterator[Path]:
    """The lock files under ``folder`` (at most ``_NESTED_DEPTH`` levels down: an output folder may be a big tree of
    photos) other than ``own``: ``.frcnn.lock`` of folders, ``.NAME.lock`` of files."""
    top = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - top >= _NESTED_DEPTH:
            dirs.clear()
        for name in files:
            if name.startswith(".") and name.endswith(".lock") and Path(root, name) != own:
                yield Path(root, name)


def _check_nested(target: Path, lock: Path, option: str, folder: bool) -> None:
    """A ``BusyError`` when another live process holds the lock of a folder above ``target`` or (``folder``) a
    lock inside it."""
    if fcntl is None:
        return
    ours = _held_inodes()
    start = Path(os.path.realpath(target)).parent if folder else Path(os.path.realpath(lock.parent))
    for above in (start, *start.parents):
        owner = _other_holder(above / FOLDER_LOCK, ours)
        if owner is not None:
            raise BusyError(f"{target} is inside {above}, which {_process(owner)} is writing; wait for it to finish "
                            f"or stop it, or choose another {option} (its lock file is {above / FOLDER_LOCK})")
    if folder:
        for inner in _locks_inside(Path(os.path.realpath(target)), Path(os.path.realpath(lock))):
            owner = _other_holder(inner, ours)
            if owner is not None:
                what = inner.parent if inner.name == FOLDER_LOCK else inner.with_name(inner.name[1:-len(".lock")])
                raise BusyError(f"{target} holds {what}, which {_process(owner)} is writing; wait for it to finish "
                                f"or stop it, or choose another {option} (its lock file is {inner})")


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
