"""Folders that really refuse writes, for root too (the tests run as root, for whom ``chmod`` changes nothing).

- ``read_only_folder``: for another user a ``chmod 555`` folder; for root a read-only tmpfs mounted there
  (``EROFS``), else the folder made immutable with ``chattr +i`` (``EPERM``); else the test is skipped.
- ``small_disk``: a tmpfs of a few KiB mounted there, so writes fail with a real ``ENOSPC`` from the kernel,
  as on a full disk (root only; skipped otherwise).

Each undoes itself (unmount, ``chattr -i``, ``chmod 755``) when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*cmd: str) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0


@contextlib.contextmanager
def _mounted(folder: Path, options: str) -> Iterator[bool]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder))
    try:
        yield mounted
    finally:
        if mounted:
            _run("umount", "-l", str(folder))


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder``, in which no file or folder can be created by this process (see the module docstring)."""
    if os.geteuid() != 0:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    with _mounted(folder, "ro,size=64k") as mounted:
        if mounted:
            yield folder
            return
        if not _run("chattr", "+i", str(folder)):
            pytest.skip("no way to make a folder read-only for root here (mount or chattr)")
        try:
            yield folder
        finally:
            _run("chattr", "-i", str(folder))


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "64k") -> Iterator[Path]:
    """``folder`` on a tmpfs of ``size``: a disk that fills up (root only, else the test is skipped)."""
    with _mounted(folder, f"size={size},mode=755") as mounted:
        if not mounted:
            pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
        yield folder
