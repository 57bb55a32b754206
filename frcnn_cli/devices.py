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
