"""Images/s of ``dump-proposals`` and ``eval`` shared among 2 processes (gloo, CPU) against one process.

The sharded runs are what ``torchrun --nproc-per-node 2 -m frcnn_cli dump-proposals|eval …`` runs
(``sharded_inference.dump_sharded`` / ``predict_sharded`` on a ``sharding.RankGroup``); the peer is the
single-process path of the same commands (``inference.dump_proposals`` / ``predict_manifest``), with one
intra-op thread (the same cores per image as each rank) and with two (all of this machine's cores in one
process). Every variant runs in a process forked from this one (no import in the timing), loads the model,
waits at a barrier, and is timed from there to the end of the command's work (rank 0's wall clock, the
results gathered or the file renamed into place). Variants take turns (A, B, C, C, B, A, …) and the median
of ``--repeats`` is reported.

Model: ``--config`` (the tiny preset by default, at its own test scale 192), random weights; images:
``make_synthetic_set`` scenes of ``--image-size``. With ``--device cuda`` the variants are one process and
``--processes N`` processes, one GPU each (NCCL as under torchrun; the exchanges over gloo), which is the
scaling measurement of docs/benchmarks.md's GPU section.

    python benchmarks/sharded_inference.py --quick     # 12 images, 1 repeat
    python benchmarks/sharded_inference.py             # 48 images, 3 repeats
    python benchmarks/sharded_inference.py --device cuda --processes 2,4,8 --config vgg16 --image-size 500x375 \
        --images 2000 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from harness import environment

CPU_VARIANTS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, threads: int, command: str, work: Path, out: Path, report: Path,
          opts: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo")
    if world == 1:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(key)
    if threads:
        torch.set_num_threads(threads)
    from frcnn_cli.config import RuntimeConfig
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.inference import InferenceSettings, Predictor
    from frcnn_cli.model.checkpoint import load_model
    from frcnn_cli.sharded_inference import dump_sharded, predict_sharded
    from frcnn_cli.sharding import Outcome, RankGroup

    group, device = RankGroup.join(torch.device(opts.device))
    manifest = read_manifest(work / "set" / "trainval.json")
    model, _ = load_model(work / "model.pt", device=device, require=("rpn", "roi_head"))
    mode = "dump" if command == "dump-proposals" else "test"
    runtime = RuntimeConfig(num_workers=opts.workers, threads=threads, amp=device.type == "cuda")
    predictor = Predictor(model, device, InferenceSettings.from_config(model.cfg, mode=mode), runtime, owned=True)
    group.gather(Outcome())  # everyone ready
    start, cpu = time.perf_counter(), time.process_time()
    if command == "dump-proposals":
        dump_sharded(predictor, manifest, out, group, checkpoint_path=work / "model.pt", batch_size=opts.batch_size)
    else:
        predict_sharded(predictor, manifest, group, batch_size=opts.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if group.is_main:
        report.write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "images": len(manifest.images)}))
    os._exit(0)


def run_variant(world: int, threads: int, command: str, work: Path, opts: argparse.Namespace) -> dict:
    ctx, port, report = multiprocessing.get_context("fork"), free_port(), work / "report.json"
    report.unlink(missing_ok=True)
    out = work / f"p-{world}-{threads}-{time.monotonic_ns()}.h5"  # one name for every rank, a new one each run
    procs = [ctx.Process(target=_rank, args=(r, world, port, threads, command, work, out, report, opts))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if not report.exists():
        raise RuntimeError(f"{command} on {world} process(es) failed (exit codes {[p.exitcode for p in procs]})")
    return json.loads(report.read_text())


def make_inputs(work: Path, images: int, preset: str, size: tuple[int, int]) -> None:
    from frcnn_cli.config import get_preset
    from frcnn_cli.data.synthetic import make_synthetic_set
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    make_synthetic_set(work / "set", n_train=images, n_test=1, seed=0, image_size=size)
    torch.manual_seed(0)
    save_checkpoint(work / "model.pt", FasterRCNN(get_preset(preset), ["circle", "bottle", "car", "triangle",
                                                                       "donut"]), stage="final", provenance={})


def merge_rate(work: Path, images: int = 300, proposals: int = 2000) -> dict:
    """What the one file costs its one writer, per image of ``proposals`` boxes: written by a dump
    (``ProposalWriter.write``, flushed per image: what one process and every rank's segment pay) and copied in
    from a finished segment by rank 0's helper (``proposal_segments.absorb``: the serial part of a sharded dump).
    CPU seconds of this process (h5py holds the GIL; the copies are HDF5's object copy)."""
    import numpy as np

    from frcnn_cli.data.proposal_segments import SegmentWriter, absorb, segment_path
    from frcnn_cli.data.proposal_store import ProposalWriter

    ids = [f"{i:06d}" for i in range(images)]
    attrs = {"checkpoint_hash": "0" * 64, "nms_thresh": 0.7, "pre_nms_top_n": 0, "post_nms_top_n": proposals,
             "min_size": 16.0, "scale": 600, "max_size": 1000, "config": {}}
    rng = np.random.default_rng(0)
    boxes, scores = rng.random((proposals, 4), np.float32) * 500, rng.random(proposals, np.float32)
    single = work / "single.h5"
    with ProposalWriter(single, manifest_hash="m", attrs=attrs, image_ids=ids) as writer:
        start = time.process_time()
        for i in range(images):
            writer.write(i, boxes, scores)
        write = (time.process_time() - start) / images
    out = work / "merged.h5"
    with ProposalWriter(out, manifest_hash="m", attrs=attrs, image_ids=ids) as writer:
        segment = SegmentWriter(segment_path(out, 0, 1), digest=writer.digest, manifest_hash="m", image_ids=ids)
        for i in range(images):
            segment.write(i, boxes, scores)
        segment.finish()
        start = time.process_time()
        absorb(writer, segment_path(out, 0, 1))
        copy = (time.process_time() - start) / images
    return {"write_ms": write * 1e3, "copy_ms": copy * 1e3, "images": images, "proposals": proposals}


def variants(opts: argparse.Namespace) -> tuple:
    if opts.device == "cpu":
        return CPU_VARIANTS
    counts = [1, *(n for n in opts.processes if n > 1 and n <= torch.cuda.device_count())]
    return tuple((f"{n} process{'es' if n > 1 else ''}, one GPU each", n, 0) for n in counts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--commands", default="dump-proposals,eval")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--processes", default="2", help="cuda: process counts to run besides one (one GPU each)")
    p.add_argument("--config", default="tiny", help="the preset (random weights)")
    p.add_argument("--image-size", default="320x240", help="WxH of the synthetic images")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="runtime.num_workers of every process")
    p.add_argument("--quick", action="store_true", help="12 images, 1 repeat")
    args = p.parse_args(argv)
    args.processes = [int(n) for n in args.processes.split(",")]
    if args.quick:
        args.images, args.repeats = 12, 1
    # one thread here: an OpenMP team made in this process would deadlock the first parallel region of a forked
    # child (each variant sets its own threads); no CUDA here either (the children are forked)
    torch.set_num_threads(1)
    print(environment(torch.device("cpu")))
    width, height = (int(v) for v in args.image_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_inputs(work, args.images, args.config, (width, height))
        for command in args.commands.split(","):
            chosen = variants(args)
            runs: dict[str, list] = {name: [] for name, _, _ in chosen}
            for k in range(args.repeats):  # A, B, C, C, B, A, …: a change of load hits every variant
                for name, world, threads in chosen if k % 2 == 0 else chosen[::-1]:
                    runs[name].append(run_variant(world, threads, command, work, args))
            report(command, args, runs)
        rate = merge_rate(work)
        print(f"\nthe one proposal file, per image of {rate['proposals']} proposals (CPU ms, {rate['images']} "
              f"images): written by a dump {rate['write_ms']:.2f}, copied in from a segment by rank 0's helper "
              f"{rate['copy_ms']:.2f} (ratio {rate['copy_ms'] / rate['write_ms']:.2f}); the helper keeps up with "
              f"up to {1000 / rate['copy_ms']:.0f} images/s of all ranks together")


def report(command: str, args: argparse.Namespace, runs: dict) -> None:
    print(f"\n{command}, {args.images} images of {args.image_size} ({args.config} preset, batch "
          f"{args.batch_size}, {args.device}), median of {args.repeats}:")
    print("| variant | images/s | rank 0 CPU s/image |")
    rate = {}
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        cpu = statistics.median(r["cpu_seconds"] for r in results) / args.images
        rate[name] = args.images / seconds
        print(f"| {name} | {rate[name]:.2f} | {cpu:.3f} |")
    names = list(rate)
    for name in names[1:]:
        print(f"ratio {name} / {names[0]}: {rate[name] / rate[names[0]]:.2f}x")


if __name__ == "__main__":
    main()
