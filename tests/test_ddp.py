"""Several processes under DistributedDataParallel on a CPU (gloo): every rank ends with the same weights,
each trains on its own share of every global batch, and only rank 0 writes.

The ranks are forked from the test process (the environment torchrun would give them, no second import of
torch: seconds instead of half a minute); one slow test runs the real ``torchrun -m frcnn_cli``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from frcnn_cli.model.checkpoint import read_checkpoint
from frcnn_cli.model.detector import FasterRCNN

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods(),
                       reason="needs torch.distributed (gloo) and fork"),
]
ITERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spy(stage, record: dict) -> None:
    """Record in ``record`` what this rank trains on, what it saves and the model it trains."""
    real_batches, real_save, real_loop = stage.device_batches, stage.save_checkpoint, stage.run_loop

    def device_batches(loader, device, **kwargs):
        for batch, targets, proposals in real_batches(loader, device, **kwargs):
            record["seen"].append(list(zip(batch.indices.tolist(), batch.flipped.tolist())))
            yield batch, targets, proposals

    def save_checkpoint(path, model, **kwargs):
        record["saves"].append(str(path))
        real_save(path, model, **kwargs)

    def run_loop(**kwargs):
        record["core"], record["wrapper"] = kwargs["core"], type(kwargs["model"]).__name__
        real_loop(**kwargs)

    stage.device_batches, stage.save_checkpoint, stage.run_loop = device_batches, save_checkpoint, run_loop


def _kill_after_saving(stage, at: int, report: Path) -> None:
    """Every rank dies (as if killed) right after the checkpoint step ``at``."""
    real_saver = stage._saver

    def saver(*args, **kwargs):
        save = real_saver(*args, **kwargs)

        def save_then_die(done: int, final: bool) -> None:
            save(done, final)
            if done == at:
                torch.save({"killed": at}, report)
                os._exit(0)

        return save_then_die

    stage._saver = saver


def train_stage(stage, cfg, manifest_path: Path, out: Path, report: Path, options: dict) -> None:
    """``train-rpn`` on this rank; ``options``: StageRequest fields and ``kill_at`` (an iteration)."""
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.model.checkpoint import read_init
    from frcnn_cli.train.steps import stage_spec

    options = {"iters": ITERS, "checkpoint_every": 2, **options}
    if "kill_at" in options:
        _kill_after_saving(stage, options.pop("kill_at"), report)
    stage.run_stage(stage.StageRequest(
        cfg=cfg, spec=stage_spec("rpn"), manifest=read_manifest(manifest_path), manifest_path=manifest_path,
        out=out, init=read_init("none"), device=torch.device("cpu"), runtime=_runtime(),
        metrics_path=out.parent / "metrics.jsonl", **options))


def _runtime():
    from frcnn_cli.config import RuntimeConfig

    return RuntimeConfig(num_workers=0, log_every=1)


def train_pipeline(stage, cfg, manifest_path: Path, out: Path, report: Path, options: dict) -> None:
    """``frcnn train --workdir out.parent`` on this rank; ``record["dumps"]`` counts its proposal dumps."""
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.train import pipeline

    real_dump, dumps = pipeline.dump_proposals, []
    pipeline.dump_proposals = lambda *args, **kwargs: dumps.append(real_dump(*args, **kwargs))
    pipeline.run_pipeline(pipeline.PipelineRequest(
        cfg=cfg, manifest=read_manifest(manifest_path), manifest_path=manifest_path, workdir=out.parent,
        device=torch.device("cpu"), runtime=_runtime(), iters=2, checkpoint_every=1))
    options["dumps"] = len(dumps)


def rank_main(rank: int, port: int, job, cfg, manifest_path: Path, out: Path, report: Path, options: dict) -> None:
    """One of 2 ranks, as torchrun would start it: run ``job`` and write what this rank saw to ``report``."""
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo")
        import torch.distributed as dist

        from frcnn_cli.train import stage

        record = {"seen": [], "saves": []}
        _spy(stage, record)
        job(stage, cfg, manifest_path, out, report, options)
        torch.save({"state": record["core"].state_dict(), "seen": record["seen"], "saves": record["saves"],
                    "wrapper": record["wrapper"], "rank": dist.get_rank(), "dumps": options.get("dumps")}, report)
        dist.destroy_process_group()
    except BaseException:
        report.with_suffix(".error").write_text(traceback.format_exc())
        raise


def run_two_ranks(work: Path, cfg, manifest_path: Path, out: Path, job=train_stage, **options) -> list[dict]:
    """``job`` in 2 forked processes (no second torch import); each rank's report."""
    ctx, port = multiprocessing.get_context("fork"), free_port()
    reports = [work / f"rank{r}.pt" for r in range(2)]
    procs = [ctx.Process(target=rank_main, args=(r, port, job, cfg, manifest_path, out, reports[r], options))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = [f.read_text() for f in sorted(work.glob("*.error"))]
    assert all(p.exitcode == 0 for p in procs) and not errors, "\n".join(errors) or "a rank hung"
    return [torch.load(path, weights_only=True) for path in reports]


@pytest.fixture(scope="module")
def ddp_config(train_config):
    return train_config("solver.rpn_images_per_batch=2", "rpn.batch_size_per_image=32")


@pytest.fixture(scope="module")
def two_ranks(train_set, ddp_config, tmp_path_factory, one_thread) -> tuple[Path, list[dict]]:
    """A 2-process DDP ``train-rpn`` of 3 iterations, 2 images per rank, a resumable state at 2."""
    work = tmp_path_factory.mktemp("ddp")
    out = work / "rpn.pt"
    return out, run_two_ranks(work, ddp_config, train_set[0], out)


def test_both_ranks_end_with_identical_weights(two_ranks, ddp_config):
    _, (rank0, rank1) = two_ranks
    assert (rank0["rank"], rank1["rank"], rank0["wrapper"]) == (0, 1, "DistributedDataParallel")
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    torch.manual_seed(ddp_config.seed)
    start = FasterRCNN(ddp_config, ["a"] * 5).state_dict()
    assert not torch.equal(rank0["state"]["rpn.conv.weight"], start["rpn.conv.weight"])  # it did learn


def test_each_rank_trains_on_its_own_share_of_every_batch(two_ranks):
    _, (rank0, rank1) = two_ranks
    assert len(rank0["seen"]) == len(rank1["seen"]) == ITERS
    for mine, theirs in zip(rank0["seen"], rank1["seen"]):
        assert len(mine) == len(theirs) == 2 and not set(mine) & set(theirs)
    everything = [entry for batch in rank0["seen"] + rank1["seen"] for entry in batch]
    assert len(set(everything)) == 2 * 2 * ITERS  # 12 of the 24 (image, flipped) entries, none twice


def test_only_rank_0_writes_checkpoints_and_metrics(two_ranks):
    out, (rank0, rank1) = two_ranks
    assert rank0["saves"] == [f"{out}.resume.pt", str(out)] and rank1["saves"] == []
    for name, state in read_checkpoint(out)["parts"].items():
        assert all(torch.equal(v, rank0["state"][f"{name}.{k}"]) for k, v in state.items())
    rows = [json.loads(line) for line in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1))


def test_the_whole_pipeline_runs_on_two_ranks_with_one_rank_dumping(train_set, ddp_config, tmp_path):
    reports = run_two_ranks(tmp_path, ddp_config, train_set[0], tmp_path / "final.pt", job=train_pipeline)
    assert [r["dumps"] for r in reports] == [2, 0]
    assert json.loads((tmp_path / "state.json").read_text())["done"] == [
        "rpn1", "props1", "det1", "rpn2", "props2", "final"]
    assert reports[1]["saves"] == [] and str(tmp_path / "final.pt") in reports[0]["saves"]
    final = read_checkpoint(tmp_path / "final.pt")["parts"]
    flat = {f"{name}.{k}": v for name, sd in final.items() for k, v in sd.items()}
    for rank in reports:  # the unified model each rank ended step 4 with
        assert rank["state"].keys() == flat.keys()
        assert all(torch.equal(v, rank["state"][k]) for k, v in flat.items())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_train_rpn_runs_under_torchrun_with_two_processes(train_set, train_options, tmp_path):
    out = tmp_path / "rpn.pt"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "frcnn_cli", "train-rpn",
           "--data", str(train_set[0]), "--out", str(out), "--init", "none", "--iters", "2", "--device", "cpu",
           *train_options("solver.rpn_images_per_batch=1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(out)]  # rank 1 prints nothing
    assert result.stderr.count("training rpn on 12 images") == 1
    assert sorted(read_checkpoint(out)["parts"]) == ["backbone", "rpn"]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [1, 2]


def test_a_killed_ddp_run_resumes_every_rank_exactly(two_ranks, train_set, ddp_config, tmp_path):
    """Each rank samples its own anchors: the resumable state keeps every rank's RNG, not only rank 0's."""
    out = tmp_path / "rpn.pt"
    assert [r["killed"] for r in run_two_ranks(tmp_path, ddp_config, train_set[0], out, kill_at=2)] == [2, 2]
    assert not out.exists() and out.with_name("rpn.pt.resume.pt").exists()
    resumed = run_two_ranks(tmp_path, ddp_config, train_set[0], out, resume=True)
    assert [len(r["seen"]) for r in resumed] == [ITERS - 2] * 2
    assert [r["seen"] for r in resumed] == [r["seen"][2:] for r in two_ranks[1]]
    whole = read_checkpoint(two_ranks[0])["parts"]
    for name, state in read_checkpoint(out)["parts"].items():
        assert all(torch.equal(v, whole[name][k]) for k, v in state.items()), name


def test_rank_0_validates_and_every_rank_drops_the_lr_and_stops_at_the_same_iteration(train_set, ddp_config,
                                                                                     tmp_path, monkeypatch):
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.train import validation

    def measure(self, model):  # a figure that never improves: patience 1 drops the lr, then stops
        return 0.5, {"val_recall": {"0.5": 0.5, "0.7": 0.5}, "val_seconds": 0.0}

    monkeypatch.setattr(validation.Validator, "measure", measure)
    out = tmp_path / "rpn.pt"  # 24 entries, 2 ranks x 2 images: 6 iterations an epoch, 24 in all
    reports = run_two_ranks(tmp_path, ddp_config, train_set[0], out, iters=24, val_manifest=read_manifest(train_set[1]),
                            val_path=train_set[1], val_every=1, patience=1, checkpoint_every=0)
    assert [len(r["seen"]) for r in reports] == [18, 18]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["event"], r["iteration"]) for r in rows if "event" in r] == [("lr_drop", 12), ("early_stop", 18)]
    assert reports[1]["saves"] == [] and str(tmp_path / "rpn.best.pt") in reports[0]["saves"]
    assert all(torch.equal(v, reports[1]["state"][k]) for k, v in reports[0]["state"].items())


# --------------------------------------------------------------------------------------------------
# a non-finite loss on one rank stops every rank


def train_with_nan_on_rank_1(stage, cfg, manifest_path: Path, out: Path, report: Path, options: dict) -> None:
    """``train-rpn`` where rank 1's loss (only) becomes NaN at its 2nd iteration; what each rank then raises is
    written to ``<report>.stopped``."""
    from frcnn_cli.errors import TrainingError
    from frcnn_cli.train import loop

    if os.environ["RANK"] == "1":
        real, calls = loop._forward_losses, []

        def forward_losses(*args, **kwargs):
            losses = real(*args, **kwargs)
            calls.append(1)
            return {k: v * float("nan") for k, v in losses.items()} if len(calls) == 2 else losses

        loop._forward_losses = forward_losses
    try:
        train_stage(stage, cfg, manifest_path, out, report, {**options, "checkpoint_every": 1})
    except TrainingError as exc:  # rank_main then writes its report as after a finished run
        report.with_suffix(".stopped").write_text(str(exc))


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_message(train_set, ddp_config, tmp_path):
    """Before, only rank 1 stopped; rank 0 went on into the next all-reduce and died on a closed connection."""
    ctx, port = multiprocessing.get_context("fork"), free_port()
    out = tmp_path / "rpn.pt"
    reports = [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [ctx.Process(target=rank_main, args=(r, port, train_with_nan_on_rank_1, ddp_config, train_set[0], out,
                                                 reports[r], {})) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        if p.is_alive():
            p.kill()
            p.join()
    errors = [f.read_text() for f in sorted(tmp_path.glob("*.error"))]
    assert not errors, "\n".join(errors)
    messages = [r.with_suffix(".stopped").read_text() for r in reports]
    assert messages[0] == messages[1]
    assert messages[0].startswith("training stage rpn: the loss became non-finite (NaN or inf) at iteration 2;")
    assert f"the last good state is in {out}.resume.pt" in messages[0]
    assert read_checkpoint(f"{out}.resume.pt")["train_state"]["iteration"] == 1  # saved before the bad one


def test_more_processes_than_gpus_is_refused_on_every_rank_before_nccl(monkeypatch):
    """NCCL gives each process its own GPU: ``torchrun --nproc-per-node 2`` on a one-GPU machine is a clean
    error on each rank (rank 0 too, so that none waits for the other), not an invalid device inside NCCL."""
    from frcnn_cli.errors import DeviceError
    from frcnn_cli.train import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device was reached"))
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(DeviceError, match=r"2 processes .* 1 GPU\(s\).*use --nproc-per-node 1"):
            distributed.setup(torch.device("cuda"))
    assert not torch.distributed.is_initialized()
