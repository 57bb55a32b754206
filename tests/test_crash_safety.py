"""Crashes and failed writes: a real ``kill -9`` during ``dump-proposals`` and during ``frcnn train``, then
the same command again, gives results bit-identical to an uninterrupted run (CPU, same seed), and no file
under a final name is ever partial; a full disk leaves the previous file intact with one ``Error:`` line;
a non-finite loss stops training naming the stage and the iteration and keeps the last good state; box
coding never makes NaN.

The killed runs are real processes: ``frcnn`` with a short pause after each proposal image and each
checkpoint, so that the SIGKILL lands while work is under way (it may land anywhere in the next image or
iteration too).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frcnn_cli.boxes import BoxCoder, clip_boxes
from frcnn_cli.cli.main import cli
from frcnn_cli.data.proposal_store import ProposalStore
from frcnn_cli.model.checkpoint import file_sha256, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--config", "tiny", "--set", "input.train_scales=64", "--set", "input.test_scale=64",
        "--set", "input.max_size=96", "--set", "solver.num_workers=0", "--device", "cpu"]
TRAIN = [*TINY, "--mode", "alternating", "--iters", "4", "--checkpoint-every", "1"]
STEPS = ("rpn1", "props1", "det1", "rpn2", "props2", "final")

WRAPPER = r"""
import os, sys, time
import torch
torch.set_num_threads(1)  # as the reference run in the test process
from frcnn_cli.data import proposal_store as proposals
from frcnn_cli.train import stage
delay = float(os.environ["FRCNN_TEST_PAUSE"])
write, save = proposals.ProposalWriter.write, stage.save_checkpoint

def paused_write(self, key, boxes, scores):
    write(self, key, boxes, scores)
    print(f"wrote {self.path.name} {key}", flush=True)
    time.sleep(delay)

def paused_save(path, *args, **kwargs):
    save(path, *args, **kwargs)
    print(f"saved {os.path.basename(path)}", flush=True)
    time.sleep(delay)

proposals.ProposalWriter.write = paused_write
stage.save_checkpoint = paused_save
from frcnn_cli.cli.main import cli
cli.main(sys.argv[1:], prog_name="frcnn")
"""


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(*args):
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result


def _kill_when(args: list, trigger: str, log: Path, on_kill=None) -> list[str]:
    """Run ``frcnn ARGS`` (paused) in a real process; SIGKILL it when it prints ``trigger``; call ``on_kill()``
    while it is dead and nothing was cleaned up. Returns the lines it printed."""
    env = {**os.environ, "FRCNN_TEST_PAUSE": "0.2", "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *map(str, args)], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line.strip())
                if line.strip() == trigger:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed ({proc.returncode}): {lines}\n{log.read_text()}"
    if on_kill is not None:
        on_kill()
    return lines


def _assert_final_files_load(folder: Path) -> None:
    """Every file under a final name (not hidden, not ``.partial``) reads back whole."""
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.endswith(".partial") or not path.is_file():
            continue
        if path.suffix == ".pt":
            read_checkpoint(path)
        elif path.suffix == ".h5":
            with ProposalStore(path) as store:
                [store.get(k) for k in range(len(store))]
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert (ca["stage"], ca["classes"], ca["config"]) == (cb["stage"], cb["classes"], cb["config"])
    assert ca["train_state"] == cb["train_state"]
    assert ca["parts"].keys() == cb["parts"].keys()
    for part in ca["parts"]:
        sa, sb = ca["parts"][part], cb["parts"][part]
        assert sa.keys() == sb.keys(), part
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"{a.name}: {part}.{key}"


def _hdf5_contents(path: Path) -> dict:
    """Every attribute and dataset of an HDF5 file, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = value
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj[()])
        visit("/", f)
        f.visititems(visit)
    return out


def _assert_same_hdf5(a: Path, b: Path, *, ignore: tuple[str, ...] = ()) -> None:
    ca, cb = _hdf5_contents(a), _hdf5_contents(b)
    ca = {k: v for k, v in ca.items() if k not in ignore}
    cb = {k: v for k, v in cb.items() if k not in ignore}
    assert ca.keys() == cb.keys()
    for key in ca:
        va, vb = ca[key], cb[key]
        if isinstance(va, tuple):
            assert va[0] == vb[0] and np.array_equal(va[1], vb[1]), key
        else:
            assert np.array_equal(np.asarray(va), np.asarray(vb)), key


@pytest.fixture(scope="module")
def reference(synth_set, tmp_path_factory) -> Path:
    """An uninterrupted ``frcnn train`` run folder (4 iterations per step, a resume state every iteration)."""
    work = tmp_path_factory.mktemp("reference") / "run"
    _ok("train", "--data", synth_set[0], "--workdir", work, *TRAIN)
    return work


# --------------------------------------------------------------------------------------------------
# kill -9


def test_kill_9_during_dump_proposals_then_rerun_gives_the_same_file(reference, synth_set, tmp_path, monkeypatch):
    model, out = reference / "rpn1.pt", tmp_path / "props.h5"
    args = ["dump-proposals", "--model", model, "--data", synth_set[0], "--out", out]

    def while_dead():
        assert not out.exists() and Path(f"{out}.partial").is_file()
        _assert_final_files_load(tmp_path)

    lines = _kill_when(args, "wrote props.h5 2", tmp_path / "log.txt", while_dead)
    assert lines == ["wrote props.h5 0", "wrote props.h5 1", "wrote props.h5 2"]

    from frcnn_cli.data import proposal_store as proposals

    written, write = [], proposals.ProposalWriter.write
    monkeypatch.setattr(proposals.ProposalWriter, "write",
                        lambda self, k, b, s: (written.append(k), write(self, k, b, s)))
    _ok(*args)
    assert written and min(written) >= 3 and written == list(range(min(written), 8))  # only what was missing
    assert not Path(f"{out}.partial").exists()
    # the pipeline's own dump of the same model and manifest, never interrupted
    _assert_same_hdf5(out, reference / "props1.h5")


def test_kill_9_during_the_train_pipeline_then_rerun_is_bit_identical(reference, synth_set, tmp_path, monkeypatch):
    work = tmp_path / "run"
    args = ["train", "--data", synth_set[0], "--workdir", work, *TRAIN]
    at_kill = {}

    def while_dead():
        names = {p.name for p in work.iterdir()}
        assert {"rpn1.pt", "props1.h5", "state.json", "det1.pt.resume.pt"} <= names
        assert not names & {"det1.pt", "rpn2.pt", "props2.h5", "final.pt"}
        _assert_final_files_load(work)
        assert json.loads((work / "state.json").read_text())["done"] == ["rpn1", "props1"]
        at_kill["iteration"] = read_checkpoint(work / "det1.pt.resume.pt")["train_state"]["iteration"]

    _kill_when(args, "saved det1.pt.resume.pt", tmp_path / "log.txt", while_dead)
    from frcnn_cli.train import stage

    saves, save = [], stage.save_checkpoint
    monkeypatch.setattr(stage, "save_checkpoint", lambda path, model, **kw: (
        saves.append((Path(path).name, (kw.get("train_state") or {}).get("iteration"))), save(path, model, **kw)))
    _ok(*args)  # the same command again: skips rpn1 and props1, resumes det1 where it stopped
    # the SIGKILL came in the pause after iteration 1 (on a very busy machine, maybe an iteration later)
    assert 1 <= at_kill["iteration"] < 4
    assert saves[0][0].startswith("det1.pt") and saves[0][1] == at_kill["iteration"] + 1
    assert not [name for name, _ in saves if name.startswith("rpn1")]

    for name in ("rpn1", "det1", "rpn2", "final"):
        _assert_same_checkpoint(work / f"{name}.pt", reference / f"{name}.pt")
    for name, model in (("props1", "rpn1"), ("props2", "rpn2")):
        # the attributes that name files of the run folder (and their digest) differ: each is this folder's own
        ignore = ("/@checkpoint", "/@checkpoint_hash", "/@settings_digest")
        _assert_same_hdf5(work / f"{name}.h5", reference / f"{name}.h5", ignore=ignore)
        with h5py.File(work / f"{name}.h5", "r") as f:
            assert f.attrs["checkpoint_hash"] == file_sha256(work / f"{model}.pt")
    state = json.loads((work / "state.json").read_text())
    assert state["done"] == list(STEPS)
    assert not [p.name for p in work.iterdir() if p.name.endswith((".resume.pt", ".partial"))]

    def last_losses(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {(r["stage"], r["iteration"]): {k: v for k, v in r.items() if k.startswith("loss")} for r in rows}

    assert last_losses(work) == last_losses(reference)


# --------------------------------------------------------------------------------------------------
# a full disk


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_a_manifest_keeps_the_old_one(tmp_path, monkeypatch, assert_clean_error):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    (tmp_path / "xml").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "xml" / "a.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>2</xmin>"
                                            "<ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
                                            "</annotation>")
    out = tmp_path / "out" / "m.json"
    args = ["prepare", "folder", "--images", tmp_path / "imgs", "--annotations", tmp_path / "xml", "--out", out]
    _ok(*args)
    before = out.read_bytes()
    (tmp_path / "xml" / "a.xml").write_text((tmp_path / "xml" / "a.xml").read_text().replace("cat", "dog"))
    monkeypatch.setattr("frcnn_cli.atomic.os.replace", _enospc)
    assert_clean_error(_run(*args), f"cannot write {out}: No space left on device", "free some space")
    assert out.read_bytes() == before and _temporaries(tmp_path) == []


def _failing_torch_save(after: int):
    """``torch.save`` that writes ``after`` files, then writes half a file and fails as a full disk does."""
    real, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= after:
            return real(obj, path, *args, **kwargs)
        path.write(b"PK\x03\x04 half a checkpoint")  # save_checkpoint hands torch.save an open file
        _enospc()

    return save


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_old_one(synth_set, tmp_path, monkeypatch,
                                                                 assert_clean_error):
    out = tmp_path / "rpn.pt"
    _ok("train-rpn", "--data", synth_set[0], "--out", out, *TINY, "--init", "none", "--iters", "1")
    before = out.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_torch_save(after=0))
    result = _run("train-rpn", "--data", synth_set[0], "--out", out, *TINY, "--init", "none", "--iters", "2")
    assert_clean_error(result, f"cannot write {out}: No space left on device", "free some space")
    assert out.read_bytes() == before and _temporaries(tmp_path) == []
    read_checkpoint(out)


def test_a_full_disk_during_training_keeps_the_last_resume_state(synth_set, tmp_path, monkeypatch,
                                                                assert_clean_error):
    out = tmp_path / "rpn.pt"
    monkeypatch.setattr(torch, "save", _failing_torch_save(after=1))  # iteration 1's state, then a full disk
    result = _run("train-rpn", "--data", synth_set[0], "--out", out, *TINY, "--init", "none", "--iters", "3",
                  "--checkpoint-every", "1")
    resume = tmp_path / "rpn.pt.resume.pt"
    assert_clean_error(result, f"cannot write {resume}: No space left on device")
    assert not out.exists() and _temporaries(tmp_path) == []
    assert read_checkpoint(resume)["train_state"]["iteration"] == 1


def test_a_full_disk_while_writing_result_files_keeps_the_old_ones(synth_set, tmp_path, tiny_checkpoint,
                                                                  monkeypatch, assert_clean_error):
    from frcnn_cli import atomic
    from frcnn_cli.data.manifest import read_manifest

    out = tmp_path / "results"
    model = tiny_checkpoint()
    _ok("eval", "--model", model, "--data", synth_set[1], "--out", out)
    files = [out / f"comp4_det_test_{name}.txt" for name in read_manifest(synth_set[1]).classes]  # write order
    for path in files:
        path.write_text("an older result\n")
    real, calls = atomic.fsync_path, []

    def fsync(path):
        calls.append(path)
        if len([p for p in calls if p.name.endswith(".tmp")]) == 2:  # the second result file's data
            _enospc()
        real(path)

    monkeypatch.setattr(atomic, "fsync_path", fsync)
    result = _run("eval", "--model", model, "--data", synth_set[1], "--out", out)
    assert_clean_error(result, f"cannot write {files[1]}: No space left on device", "free some space")
    assert files[0].read_text() != "an older result\n"  # written before the disk filled up
    assert all(p.read_text() == "an older result\n" for p in files[1:]) and _temporaries(tmp_path) == []


def test_a_full_disk_during_a_dump_keeps_what_was_written_and_a_rerun_finishes_it(reference, synth_set, tmp_path,
                                                                                   monkeypatch, assert_clean_error):
    out = tmp_path / "props.h5"
    real, calls = h5py.Group.create_dataset, []

    def create_dataset(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 8:  # /image_ids, then boxes and scores of each image: the 4th image's boxes
            _enospc()
        return real(self, *args, **kwargs)

    args = ["dump-proposals", "--model", reference / "rpn1.pt", "--data", synth_set[0], "--out", out]
    with monkeypatch.context() as m:
        m.setattr(h5py.Group, "create_dataset", create_dataset)
        assert_clean_error(_run(*args), f"cannot write {out}.partial at image 000003", "No space left on device",
                           "rerun the same command")
    assert not out.exists() and Path(f"{out}.partial").exists()
    _ok(*args)
    _assert_same_hdf5(out, reference / "props1.h5")


# --------------------------------------------------------------------------------------------------
# numerics


def test_a_non_finite_loss_stops_training_naming_stage_and_iteration(synth_set, tmp_path, assert_clean_error):
    out = tmp_path / "rpn.pt"
    result = _run("train-rpn", "--data", synth_set[0], "--out", out, *TINY, "--init", "none", "--iters", "6",
                  "--checkpoint-every", "1", "--set", "solver.lr=1e30", "--set", "solver.warmup_iters=0")
    message = assert_clean_error(result, "training stage rpn: the loss became non-finite (NaN or inf) at iteration",
                                 "Lower the learning rate")
    bad = int(message.split("at iteration ")[1].split(";")[0])
    resume = tmp_path / "rpn.pt.resume.pt"
    assert f"the last good state is in {resume}" in message and not out.exists()
    ckpt = read_checkpoint(resume)
    assert ckpt["train_state"]["iteration"] == bad - 1  # the state before the first bad iteration
    for part in ckpt["parts"].values():
        assert all(torch.isfinite(t).all() for t in part.values() if t.is_floating_point())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_box_coding_of_degenerate_boxes_and_huge_deltas_never_makes_nan(dtype):
    coder = BoxCoder(means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))
    reference = torch.tensor([[5, 5, 5, 5], [10, 10, 4, 4], [0, 0, 10, 10], [3, 3, 3, 9], [0, 0, 1e6, 1e-6],
                              [-1e4, -1e4, 1e4, 1e4]], dtype=dtype)
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 2, 2], [3, 3, 3, 3], [7, 7, 1, 1], [0, 0, 1e-7, 1e6],
                          [2, 2, 2, 2]], dtype=dtype)
    deltas = coder.encode(reference, boxes)
    assert not torch.isnan(deltas).any() and torch.isfinite(deltas).all()
    huge = torch.tensor([1e30, -1e30, 3e38, -3e38, 0.0, 1e-30], dtype=torch.float32).to(dtype)
    grid = torch.stack(torch.meshgrid(huge, huge, indexing="ij"), -1).reshape(-1, 2)
    wild = torch.cat([grid, grid.flip(1)], 1)  # every pair in (dx, dy) and in (dw, dh)
    for ref in reference:
        decoded = coder.decode(wild, ref.expand(len(wild), 4))
        assert not torch.isnan(decoded).any()
        assert torch.isfinite(clip_boxes(decoded, 600, 1000)).all()
    assert torch.isfinite(coder.decode(deltas, reference)).all()


def test_decode_clamps_huge_scales_to_a_finite_size():
    coder = BoxCoder()
    boxes = coder.decode(torch.tensor([[0.0, 0.0, 1e30, 1e30]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    width = float(boxes[0, 2] - boxes[0, 0])
    assert math.isclose(width, 1000.0, rel_tol=1e-5)  # 16 * exp(log(1000/16))
