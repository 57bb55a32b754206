"""Devices and process settings: which device to run on, the autocast policy (bf16 on CUDA), how a model is
placed on a device (``place_model``), and the process-wide settings a command sets once (``process_settings``).

Process-wide state (threads, cuDNN autotuning, the allocator) is set here and only from the command line's
entry points (``cli/``), never from library code, so that a library caller keeps its own.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .config import RuntimeConfig


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or None (cuda when available, else cpu)."""
    import torch  # deferred: the CLI starts without loading torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'; use cpu or cuda (cuda:N for a given GPU)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name} was asked for but no CUDA GPU is available here; use --device cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); pick another")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device '{name}' is not supported; use cpu or cuda")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when ``enabled``; a no-op context on the CPU."""
    if device.type == "cuda" and enabled:
        import torch

        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place_model(model: nn.Module, device: torch.device, runtime: RuntimeConfig, *, training: bool = False) -> list[str]:
    """Put ``model`` on ``device`` in its fastest layout (in place); returns the convolutions that now run as
    Winograd.

    On the CPU, with ``runtime.cpu_winograd``, the 3x3 convs with at least 128 channels run as Winograd
    F(4x4, 3x3) (``model.winograd``: same parameters and state-dict keys). With ``runtime.channels_last`` the
    convs run in NHWC: oneDNN (CPU inference) and cuDNN run 3x3 convs, ReLU and max pooling faster so, with
    the same values up to float summation order; CPU training stays NCHW (oneDNN's weight gradient is
    several times slower in NHWC). Shared by the ``Predictor`` (inference) and ``train/stage.py``.
    """
    import torch

    from .model.winograd import use_winograd

    model.to(device)
    layers = use_winograd(model) if device.type == "cpu" and runtime.cpu_winograd else []
    if runtime.channels_last and (device.type == "cuda" or not training):
        model.to(memory_format=torch.channels_last)
    return layers


def process_settings(device: torch.device, runtime: RuntimeConfig, *, autotune: bool = False) -> None:
    """The process-wide settings of a command, set once at its start: ``runtime.threads`` intra-op threads on
    the CPU (0: torch's default), and cuDNN's autotuner on CUDA when ``autotune`` (inference commands)."""
    import torch

    if device.type == "cpu" and runtime.threads > 0:
        torch.set_num_threads(runtime.threads)
    if device.type == "cuda" and autotune:
        torch.backends.cudnn.benchmark = True


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc maps every block over 32 MB (feature maps, their gradients) afresh and unmaps it
    when freed, so each forward and backward pays a page fault per 4 KB page touched: about a third of a
    CPU training step and 8 % of VGG16 inference were kernel time on the machine of docs/benchmarks.md.
    With mmap off (``M_MMAP_MAX`` 0) and the heap kept up to 1 GiB above need (``M_TRIM_THRESHOLD``) the
    process reuses its pages; its resident memory stays at its peak. The CLI calls this at start-up;
    ``FRCNN_SYSTEM_MALLOC=1`` in the environment, a non-glibc C library or another OS leave the defaults.
    Returns whether the settings took effect.
    """
    import ctypes
    import os
    import sys

    if os.environ.get("FRCNN_SYSTEM_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
