"""Devices and process settings: which device to run on, the autocast policy (``amp_enabled``, ``autocast``: bf16
on CUDA and on CPUs that compute bf16 natively), how a model is placed on a device (``place_model``), and the
process-wide settings a command sets once (``process_settings``).

Process-wide state (threads, cuDNN autotuning, the allocator) is set here and only from the command line's
entry points (``cli/``), never from library code, so that a library caller keeps its own.
"""

from __future__ import annotations

import contextlib
import os
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


CPU_BF16_ENV = "FRCNN_CPU_BF16"  # "1" / "0": take the CPU for one that computes bf16 natively, or not


def cpu_bf16_kind() -> str | None:
    """How this CPU computes bf16 natively, as torch reports it: ``"amx"`` (AMX tiles: Intel Sapphire Rapids
    and later), ``"avx512_bf16"`` (AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake), or None (bf16 would be
    emulated in float32 arithmetic: slower than float32 itself). ``FRCNN_CPU_BF16=1`` / ``=0`` in the
    environment overrides the report (``"forced"`` / None): the tests pin it, and a user may."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return "forced" if forced == "1" else None
    import torch

    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return None


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``cpu_bf16_kind`` is not None)."""
    return cpu_bf16_kind() is not None


def amp_enabled(device: torch.device, amp: bool | None = None) -> bool:
    """Whether a run on ``device`` uses bf16 autocast under ``runtime.amp`` = ``amp``: True or False as given
    (``--set runtime.amp=true`` forces it even where the CPU would emulate bf16), None (the default) for the
    policy: on CUDA, and on CPUs that compute bf16 natively (``cpu_computes_bf16``)."""
    if amp is not None:
        return bool(amp) and device.type in ("cpu", "cuda")
    return device.type == "cuda" or (device.type == "cpu" and cpu_computes_bf16())


def precision_name(device: torch.device, amp: bool | None = None) -> str:
    """``"bfloat16"`` (autocast) or ``"float32"``: what a run on ``device`` under ``runtime.amp`` computes in."""
    return "bfloat16" if amp_enabled(device, amp) else "float32"


def autocast(device: torch.device, amp: bool | None = None):
    """bf16 autocast on ``device`` where ``amp_enabled(device, amp)``, else a no-op context.

    What stays float32 under it, on the CPU as on CUDA: the RPN's 1x1 score and delta convs at test time
    (``RPNHead.forward``), the losses (``model/losses.py`` casts their inputs), RoI pooling (the pooled
    features take the RoIs' float32) and RoIAlign's CPU backward (``model/roialign_grad.py``), the box
    decoding and NMS (``rpn.generate_proposals``, ``postprocess``), and on the CPU the Winograd convs that
    ``place_model`` keeps in float32 (``model/winograd.py:bf16_conv_path``)."""
    import torch

    if not amp_enabled(device, amp):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def place_model(model: nn.Module, device: torch.device, runtime: RuntimeConfig, *, training: bool = False) -> list[str]:
    """Put ``model`` on ``device`` in its fastest layout (in place); returns the convolutions that now run as
    Winograd.

    On the CPU, with ``runtime.cpu_winograd``, the 3x3 convs with at least 128 channels run as Winograd
    F(4x4, 3x3) (``model.winograd``: same parameters and state-dict keys); under bf16 autocast each of them
    runs the path measured faster on this kind of CPU (``winograd.bf16_conv_path``: Winograd in float32, or
    oneDNN's bf16 convolution). With ``runtime.channels_last`` the
    convs run in NHWC: oneDNN (CPU inference) and cuDNN run 3x3 convs, ReLU and max pooling faster so, with
    the same values up to float summation order; CPU training stays NCHW (oneDNN's weight gradient is
    several times slower in NHWC). Shared by the ``Predictor`` (inference) and ``train/stage.py``.
    """
    import torch

    from .model.winograd import choose_bf16_paths, use_winograd

    model.to(device)
    layers = use_winograd(model) if device.type == "cpu" and runtime.cpu_winograd else []
    if layers:
        choose_bf16_paths(model, cpu_bf16_kind())
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
