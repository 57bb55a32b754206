"""The one exception type the CLI turns into a clean ``Error: …`` line.

Every message is a whole sentence that says what is wrong, where (file, image, line, key) and what to
do about it. The library raises these; only ``frcnn_cli.cli`` prints them.
"""

from __future__ import annotations


class FrcnnError(Exception):
    """A user-facing error: the message is shown as ``Error: <message>`` with a non-zero exit; from Python it
    says the same (what is wrong, where, what to do).

    >>> try:
    ...     frcnn_cli.get_preset("vgg19")
    ... except frcnn_cli.FrcnnError as error:
    ...     print(error)
    unknown preset 'vgg19'; choose one of vgg16, zf, resnet50, resnet101, tiny or a .toml file
    """

    exit_code = 1


class ConfigError(FrcnnError):
    """A bad preset, config file, ``--set`` key or value."""

    exit_code = 2


class DataError(FrcnnError):
    """A bad dataset, annotation, image or manifest."""


class CheckpointError(FrcnnError):
    """A missing, corrupt, unsafe or mismatched checkpoint."""


class ProposalStoreError(FrcnnError):
    """A missing, corrupt or mismatched HDF5 proposal file."""


class DeviceError(FrcnnError):
    """A device that is not available here (``--device cuda`` without a GPU)."""


class TrainingError(FrcnnError):
    """Training cannot go on (a non-finite loss, a finished run asked to go further)."""


class BusyError(FrcnnError):
    """An output (a file or a run folder) that another live frcnn process is writing (``locks.py``)."""


MAX_PROBLEMS_SHOWN = 10  # problems listed in one message


def problems_error(problems: list[str]) -> DataError:
    """One ``DataError`` for every problem ``prepare`` found in a dataset (the first ten listed, then a count)."""
    if len(problems) == 1:
        return DataError(problems[0])
    shown = MAX_PROBLEMS_SHOWN
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    listed = "\n  ".join(problems[:shown])
    return DataError(f"{len(problems)} problems in the data; fix them and run prepare again:\n  {listed}{more}")
