"""The ``frcnn`` click group; turns every ``FrcnnError`` into ``Error: …`` and a non-zero exit."""

from __future__ import annotations

import errno
import os
import sys

import click

from .. import __version__
from ..devices import keep_freed_memory
from ..errors import FrcnnError


class _ErrorMessage(click.ClickException):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_NO_MODEL = ("prepare", "convert")  # commands that run no model keep the allocator's defaults (a lower peak)


def _standard_output_fails(exc: OSError) -> bool:
    """Whether ``exc`` came from writing a result with ``click.echo`` (stdout redirected to a full disk or /dev/full,
    an I/O error); if so stdout is replaced by the null device, so that Python's own flush at exit does not print
    a second traceback."""
    frame, tb = None, exc.__traceback__
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
    if frame is None or frame.f_code.co_name != "echo" or frame.f_globals.get("__name__") != "click.utils":
        return False
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (open until the process ends)
    return True


class FrcnnGroup(click.Group):
    """A group whose commands' ``FrcnnError``s become clean one-line errors, never tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FrcnnError as exc:
            if getattr(exc, "quiet", False):  # another rank of a sharded command reports it (sharding.py)
                ctx.exit(0)  # status 0: torchrun then lets rank 0 print and leave with the error's status
            raise _ErrorMessage(str(exc), exc.exit_code) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE or not _standard_output_fails(exc):
                raise  # a closed pipe (`| head`) is click's to quieten; anything else is not a user's error
            raise _ErrorMessage(f"cannot write to the standard output: {exc.strerror or exc}; free some space where "
                                "it is redirected, or redirect it elsewhere", 1) from None
        except KeyboardInterrupt:
            raise _ErrorMessage("interrupted; to continue, rerun the same command (train-rpn and train-detector "
                                "with --resume: they continue from the last --checkpoint-every state)", 130) from None

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if name not in _NO_MODEL:
            keep_freed_memory()  # every command that runs a model pays fewer page faults (devices.py)
        return name, command, rest

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order of the workflow, not alphabetical


@click.group(cls=FrcnnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="frcnn")
def cli() -> None:
    """Faster R-CNN (Ren, He, Girshick, Sun): prepare data, train by the paper's 4-step alternating
    optimisation (or jointly), dump proposals to HDF5, detect and evaluate on PASCAL VOC.

    \b
    The four steps by hand:
      frcnn train-rpn      --data M.json --out rpn1.pt --init imagenet
      frcnn dump-proposals --model rpn1.pt --data M.json --out props1.h5
      frcnn train-detector --data M.json --proposals props1.h5 --out det1.pt --init imagenet
      frcnn train-rpn      --data M.json --out rpn2.pt --init det1.pt --freeze-shared
      frcnn dump-proposals --model rpn2.pt --data M.json --out props2.h5
      frcnn train-detector --data M.json --proposals props2.h5 --out final.pt --init rpn2.pt --freeze-shared
    or all of it, resumable:  frcnn train --data M.json --workdir run/
    """


def _register() -> None:
    from . import bench, convert, demo, detect, evaluate, export, prepare, train

    cli.add_command(prepare.prepare)
    cli.add_command(train.train_rpn)
    cli.add_command(train.dump_proposals)
    cli.add_command(train.train_detector)
    cli.add_command(train.train)
    cli.add_command(detect.detect)
    cli.add_command(evaluate.eval_command)
    cli.add_command(bench.bench)
    cli.add_command(export.export)
    cli.add_command(convert.convert)
    cli.add_command(demo.demo)


_register()


def main() -> None:
    cli(prog_name="frcnn")
