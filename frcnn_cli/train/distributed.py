"""Several GPUs (or CPU processes) under ``torchrun --nproc-per-node N``: DDP, data sharding, rank 0 writes.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DeviceError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); the device of this rank."""
    if world_size() <= 1:
        return device
    if device.type == "cuda":
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        if per_node > gpus:  # every rank refuses (none waits for the others); NCCL wants a GPU per process
            raise DeviceError(f"torchrun started {per_node} processes on this machine but it has {gpus} GPU(s), "
                              f"and each process needs its own GPU; use --nproc-per-node {gpus} (or fewer)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when several processes train together."""
    if world_size() <= 1 or not dist.is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard_kwargs() -> dict:
    """Arguments that make each rank's loader take its own share of every global batch."""
    if world_size() <= 1:
        return {}
    return {"rank": rank(), "world_size": world_size()}


def all_gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (a collective: every rank must call it)."""
    if world_size() <= 1 or not dist.is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def earliest_flag(first: torch.Tensor) -> int:
    """The smallest flag (a 0-d integer tensor; -1: none) over every rank, -1 when no rank raised one.

    A collective: every rank calls it at the same step (the loop's non-finite check), so when one rank's loss
    became NaN every rank stops there with the same message, and none waits in the next collective for a
    rank that has left.
    """
    if world_size() <= 1 or not dist.is_initialized():
        return int(first.item())
    none = torch.iinfo(torch.int64).max
    value = torch.where(first >= 0, first, torch.full_like(first, none)).to(torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    result = int(value.item())
    return -1 if result == none else result


def barrier() -> None:
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()
