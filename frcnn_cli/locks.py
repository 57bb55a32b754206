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
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .atomic import check_writable, file_mode, missing_folders
from .errors import BusyError, FrcnnError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FOLDER_LOCK = ".frcnn.lock"


@dataclass
class _Held:
    fd: int | None  # None: not locked (no record locks here)
    count: int
    made: list[Path]  # folders made for the output, deepest first: removed again if left empty


_held: dict[tuple[int, str], _Held] = {}  # (pid, lock file): a forked child holds none of its parent's


def lock_path(target: str | os.PathLike, *, folder: bool = False) -> Path:
    """The lock file of the output ``target``: ``.NAME.lock`` beside a file, ``.frcnn.lock`` in a folder."""
    target = Path(target)
    return target / FOLDER_LOCK if folder else target.with_name(f".{target.name}.lock")


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


def _busy(target: Path, lock: Path, owner: dict, option: str) -> BusyError:
    pid, host = owner.get("pid", "?"), owner.get("host")
    where = "" if host in (None, socket.gethostname()) else f" on host {host}"
    since = f", started {owner['started']}" if owner.get("started") else ""
    command = f": {owner['command']}" if owner.get("command") else ""
    return BusyError(f"{target} is being written by another frcnn process (PID {pid}{where}{since}{command}); "
                     f"wait for it to finish or stop it, or choose another {option} (its lock file is {lock})")


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
    except OSError as exc:
        raise FrcnnError(f"cannot write {target}: {exc.strerror or exc}; choose an output folder you can write to "
                         f"({option})") from None
    raise BusyError(f"cannot lock {target}: its lock file {lock} keeps being replaced; check for other frcnn "
                    f"processes writing it, or choose another {option}")


def _release(lock: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(lock).st_ino:
            os.unlink(lock)  # while still locked: whoever opened it meanwhile sees it replaced and retries
    os.close(fd)


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, option: str = "--out", folder: bool = False) -> Iterator[Path]:
    """Hold the lock of the output ``target`` (a file, or with ``folder`` a folder) inside the block.

    First checks that ``target`` can be written (``atomic.check_writable``: a ``FrcnnError`` naming it and
    ``option``); a ``BusyError`` naming the other process when a live one holds the lock. Yields ``target``.
    The folders made for it are removed again at the end if they are still empty (nothing was written).
    """
    target = Path(target)
    lock = lock_path(target, folder=folder)
    key = (os.getpid(), os.path.abspath(lock))
    held = _held.get(key)
    if held is None:
        made = missing_folders(lock.parent)
        try:
            check_writable(target, option=option, folder=folder)
            held = _held[key] = _Held(_acquire(lock, target, option), 0, made)
        except BaseException:
            _remove_empty(made)
            raise
    held.count += 1
    try:
        yield target
    finally:
        held.count -= 1
        if held.count == 0:
            del _held[key]
            _release(lock, held.fd)
            _remove_empty(held.made)  # a command that failed before writing anything leaves no empty folder


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
