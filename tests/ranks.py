"""Commands run as ``torchrun`` would run them, in processes forked from the test (no second import of torch):
each rank gets torchrun's environment, runs ``frcnn ARGS`` in-process and reports its exit code and output.

``prepare(rank)`` runs in the rank before the command (spies, a smaller chunk, an injected kill); a rank that
calls ``os._exit`` is reported with that exit code and no output.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

KILLED = 9  # the exit code of a rank killed by ``kill_after``


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, args: list[str], report: Path, prepare) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo")
        import torch.distributed as dist
        from click.testing import CliRunner

        from frcnn_cli.cli.main import cli

        extra = prepare(rank) if prepare is not None else None
        result = CliRunner().invoke(cli, args)
        crash = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            crash = "".join(traceback.format_exception(result.exception))
        report.write_text(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout,
                                      "stderr": result.stderr, "crash": crash, "extra": extra}))
        if dist.is_initialized():
            dist.destroy_process_group()
    except BaseException:
        report.write_text(json.dumps({"exit_code": -1, "crash": traceback.format_exc()}))
    os._exit(0)


def run_ranks(world: int, args: Sequence, work: Path, *, prepare: Callable | None = None,
              timeout: float = 240) -> list[dict]:
    """``frcnn ARGS`` on ``world`` forked ranks; per rank ``{"exit_code", "stdout", "stderr", "crash", "extra"}``
    (``extra``: what ``prepare`` returned, JSON), or ``{"exit_code": KILLED}`` for a rank that was killed."""
    ctx, port = multiprocessing.get_context("fork"), free_port()
    work.mkdir(parents=True, exist_ok=True)
    reports = [work / f"rank{r}.json" for r in range(world)]
    for r in reports:
        r.unlink(missing_ok=True)
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, [str(a) for a in args], reports[r], prepare))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"{len(hung)} rank(s) hung"
    out = []
    for p, report in zip(procs, reports):
        if p.exitcode == KILLED or not report.exists():
            out.append({"exit_code": KILLED if p.exitcode == KILLED else p.exitcode})
        else:
            out.append(json.loads(report.read_text()))
    return out


def kill_after(target: object, name: str, calls: int) -> None:
    """Make ``target.name`` (a function) end the process with ``KILLED`` right after its ``calls``-th return, as a
    ``kill -9`` would: no cleanup, no exception."""
    real, count = getattr(target, name), [0]

    def wrapper(*args, **kwargs):
        value = real(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            os._exit(KILLED)
        return value

    setattr(target, name, wrapper)
