"""Which device to run on, and the autocast policy (bf16 on CUDA)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch


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
