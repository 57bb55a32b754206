"""Atomic writes leave no stale temporaries: a write removes those of its output that a killed writer left.

A temporary is ``.NAME.pidPID-HOST.RANDOM.tmp``; only files of this machine whose process is gone go.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from frcnn_cli.atomic import _host_id, atomic_path, atomic_write_text

HOST = _host_id()


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    return int(done.stdout)


def _temp(folder: Path, name: str, pid: int, host: str = HOST) -> Path:
    path = folder / f".{name}.pid{pid}-{host}.k3j_9x2q.tmp"
    path.write_bytes(b"half a checkpoint")
    return path


def test_a_temporary_names_its_process_and_machine(tmp_path):
    with atomic_path(tmp_path / "rpn1.pt") as tmp:
        assert re.fullmatch(rf"\.rpn1\.pt\.pid{os.getpid()}-{HOST}\.\w+\.tmp", tmp.name), tmp.name
    assert (tmp_path / "rpn1.pt").exists() and not tmp.exists()


def test_the_next_write_removes_only_dead_writers_temporaries_of_its_output(tmp_path):
    dead = _dead_pid()
    stale = [_temp(tmp_path, "rpn1.pt", dead), _temp(tmp_path, "rpn1.pt", _dead_pid())]
    kept = [
        _temp(tmp_path, "rpn1.pt", os.getpid()),  # this process: alive
        _temp(tmp_path, "rpn1.pt", os.getppid()),  # another live process
        _temp(tmp_path, "rpn1.pt", dead, host="0badc0de" if HOST != "0badc0de" else "0badc0df"),  # another machine
        _temp(tmp_path, "rpn1.pt.resume.pt", dead),  # another output
        _temp(tmp_path, "det1.pt", dead),
    ]
    old_style = tmp_path / ".rpn1.pt.a1b2c3d4.tmp"  # no writer mark: cannot tell whose it is
    old_style.write_bytes(b"?")
    atomic_write_text(tmp_path / "rpn1.pt", "new")
    assert (tmp_path / "rpn1.pt").read_text() == "new"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and old_style.exists()
    atomic_write_text(tmp_path / "det1.pt", "det")  # that output's own write removes its stale one
    assert not kept[-1].exists() and kept[-2].exists()


def test_after_a_real_kill_9_the_rerun_cleans_up(tmp_path):
    out = tmp_path / "props.json"
    code = ("import os, signal, sys; from frcnn_cli.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(out)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".props.json.pid") and left[0].endswith(".tmp")
    atomic_write_text(out, "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["props.json"]


def test_a_live_writer_in_another_process_keeps_its_temporary(tmp_path):
    out, go = tmp_path / "final.pt", tmp_path / "go"
    code = ("import sys, time; from pathlib import Path; from frcnn_cli.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('theirs')\n"
            "    while not Path(sys.argv[2]).exists():\n"
            "        time.sleep(0.02)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(out), str(go)])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".final.pt.pid*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.02)
        theirs = list(tmp_path.glob(f".final.pt.pid{writer.pid}-*.tmp"))
        assert len(theirs) == 1
        atomic_write_text(out, "ours")
        assert theirs[0].exists() and theirs[0].read_text() == "theirs"
    finally:
        go.touch()
        assert writer.wait(timeout=60) == 0
    assert out.read_text() == "theirs"  # the last rename wins; nothing was half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
