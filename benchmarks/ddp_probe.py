"""Run frcnn's distributed training path under torchrun even with one process or one GPU: ``train/distributed.py``
(the process group, ``DistributedDataParallel``, the sharded loader, the gathered RNG states of a checkpoint,
the barrier) around a ``train-rpn`` stage of the tiny preset.

frcnn takes that path only when torchrun starts several processes (``WORLD_SIZE`` > 1): with one process it
trains without a process group, and NCCL wants one GPU per process. The probe makes frcnn believe it is one of
two ranks (``distributed.world_size``), so that a process group of the ranks torchrun really started (one, or
two on one GPU) carries DDP's broadcast and all-reduces. Each rank prints one line ``PROBE {json}``.

    python -m torch.distributed.run --nproc-per-node 1 benchmarks/ddp_probe.py --data M.json --out rpn.pt
    python -m torch.distributed.run --nproc-per-node 2 benchmarks/ddp_probe.py --data M.json --out rpn.pt \
        --same-device --backend gloo        # two processes on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's frcnn_cli

TINY = ("input.train_scales=96", "input.test_scale=96", "input.max_size=128", "solver.rpn_images_per_batch=2")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a manifest (e.g. frcnn prepare synth)")
    p.add_argument("--out", type=Path, required=True, help="the stage's checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                   help="process group (default: frcnn's choice, nccl on CUDA and gloo on the CPU)")
    p.add_argument("--same-device", action="store_true", help="every rank on cuda:0 (NCCL may refuse)")
    p.add_argument("--iters", type=int, default=2)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    import torch.distributed as dist

    from frcnn_cli.config import RuntimeConfig, get_preset
    from frcnn_cli.config_io import apply_overrides
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.devices import resolve_device
    from frcnn_cli.model.checkpoint import read_init
    from frcnn_cli.train import distributed, stage
    from frcnn_cli.train.steps import stage_spec

    real_world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed.world_size = lambda: max(2, real_world)  # frcnn's distributed path, whatever torchrun started
    if args.same_device:
        os.environ["LOCAL_RANK"] = "0"
        os.environ["LOCAL_WORLD_SIZE"] = "1"
    device = resolve_device(args.device)
    if args.backend is not None and args.backend != ("nccl" if device.type == "cuda" else "gloo"):
        dist.init_process_group(args.backend)  # distributed.setup then keeps it
    seen = {}
    real_loop = stage.run_loop

    def run_loop(**kwargs):
        seen["wrapper"] = type(kwargs["model"]).__name__
        real_loop(**kwargs)

    stage.run_loop = run_loop
    started = time.perf_counter()
    stage.run_stage(stage.StageRequest(
        cfg=apply_overrides(get_preset("tiny"), list(TINY)), spec=stage_spec("rpn"), manifest=read_manifest(args.data),
        manifest_path=args.data, out=args.out, init=read_init("none"), device=device,
        runtime=RuntimeConfig(num_workers=1, log_every=1), iters=args.iters, checkpoint_every=1))
    report = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
              "device": str(torch.cuda.current_device()) if device.type == "cuda" else "cpu",
              "wrapper": seen.get("wrapper"), "seconds": round(time.perf_counter() - started, 2),
              "checkpoint": args.out.exists()}
    print("PROBE " + json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
