"""``dump-proposals``, ``eval`` and ``detect`` under torchrun (2 gloo processes forked from the test, ``ranks.py``):
the outputs equal one process's, for an odd number of images, more processes than images, a corrupt image on one
rank, and a kill followed by a rerun (the pieces on their own: tests/test_sharding_pieces.py).

Every sharded run uses chunks of one image a rank, so that 5 images take 3 chunks and several exchanges.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_config, write_file
from ranks import KILLED, free_port, kill_after, run_ranks

from frcnn_cli import sharding
from frcnn_cli.sharding import RankGroup

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods(),
                       reason="needs torch.distributed (gloo) and fork"),
]
RUNTIME = ["--set", "runtime.num_workers=0", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny model at 64 px and a synthetic set: ``trainval`` 5 images (odd), ``test`` 1 image."""
    from frcnn_cli.data.synthetic import make_synthetic_set
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    work = tmp_path_factory.mktemp("sharded")
    trainval, test = make_synthetic_set(work / "set", n_train=5, n_test=1, seed=0, image_size=(64, 48))
    torch.manual_seed(0)
    model_path = work / "model.pt"
    save_checkpoint(model_path, FasterRCNN(tiny_config(), ["circle", "bottle", "car", "triangle", "donut"]),
                    stage="final", provenance={})
    return {"work": work, "model": model_path, "trainval": trainval, "test": test,
            "images": work / "set" / "JPEGImages"}


def small_chunks(rank: int) -> None:
    from frcnn_cli import detect_stream

    sharding.CHUNK_IMAGES = detect_stream.CHUNK_IMAGES = 1


def one_process(frcnn, *args):
    return frcnn(*args, *RUNTIME)


def two_ranks(work: Path, *args, prepare=small_chunks, ok: bool = True) -> list[dict]:
    ranks = run_ranks(2, [*args, *RUNTIME], work, prepare=prepare)
    if ok:
        for r in ranks:
            assert r["exit_code"] == 0 and r["crash"] is None, r
        assert ranks[1]["stdout"] == "" and ranks[1]["stderr"] == ""  # rank 1 says nothing
    return ranks


def proposal_file(path: Path) -> tuple[dict, list, dict]:
    with h5py.File(path, "r") as f:
        attrs = {k: v.item() if isinstance(v, np.generic) else v for k, v in f.attrs.items()}
        groups = {name: (dict(g.attrs), g["boxes"][()], g["scores"][()]) for name, g in f["images"].items()}
        return attrs, f["image_ids"][()].tolist(), groups


def assert_same_proposals(a: Path, b: Path) -> None:
    (attrs_a, ids_a, groups_a), (attrs_b, ids_b, groups_b) = proposal_file(a), proposal_file(b)
    assert attrs_a == attrs_b and ids_a == ids_b and groups_a.keys() == groups_b.keys()
    for name, (meta, boxes, scores) in groups_a.items():
        assert meta == groups_b[name][0]
        np.testing.assert_allclose(boxes, groups_b[name][1], atol=1e-3)
        np.testing.assert_allclose(scores, groups_b[name][2], atol=1e-5)


def result_rows(folder: Path) -> dict[str, list]:
    """The devkit result files of ``eval --out``: per file its rows ``[image id, score, x1, y1, x2, y2]``."""
    rows = {}
    for path in sorted(folder.glob("comp4_det_*.txt")):
        rows[path.name] = [[p[0], *map(float, p[1:])] for p in (line.split() for line in path.read_text().splitlines())]
    return rows


def assert_same_entries(a: list[dict], b: list[dict]) -> None:
    assert [e["image"] for e in a] == [e["image"] for e in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and [d["label"] for d in x["detections"]] == [d["label"] for d in y["detections"]]
        for d, e in zip(x["detections"], y["detections"]):
            assert d["score"] == pytest.approx(e["score"], abs=1e-5)
            assert d["box"] == pytest.approx(e["box"], abs=1e-3)


# --------------------------------------------------------------------------------------------------
# outputs equal one process's


def assert_same_summary(a: dict, b: dict) -> None:
    assert a["metric"] == b["metric"] and a["map"] == pytest.approx(b["map"], abs=1e-9)
    assert a["ap"].keys() == b["ap"].keys()
    for name, ap in a["ap"].items():
        assert ap == b["ap"][name] or ap == pytest.approx(b["ap"][name], abs=1e-9)


def _no_plots(rank: int | None = None) -> None:
    from frcnn_cli.cli import eval_outputs

    if rank is not None:
        small_chunks(rank)
    eval_outputs.have_matplotlib = lambda: False  # the result files only: plotting would take seconds


def test_eval_on_two_ranks_scores_the_same_detections_as_one_process(setup, frcnn, tmp_path, monkeypatch):
    args = ["eval", "--model", setup["model"], "--data", setup["trainval"], "--json", "--batch-size", "2"]
    monkeypatch.setattr("frcnn_cli.cli.eval_outputs.have_matplotlib", lambda: False)
    one = one_process(frcnn, *args, "--out", tmp_path / "one")
    ranks = two_ranks(tmp_path / "ranks", *args, "--out", tmp_path / "two", prepare=_no_plots)
    assert_same_summary(json.loads(ranks[0]["stdout"]), json.loads(one.stdout))
    single, shared = result_rows(tmp_path / "one"), result_rows(tmp_path / "two")
    assert single.keys() == shared.keys() and sum(map(len, single.values())) > 0
    for name, rows in single.items():
        assert [r[0] for r in rows] == [r[0] for r in shared[name]]
        np.testing.assert_allclose([r[1:] for r in rows], [r[1:] for r in shared[name]], atol=1e-3)


def test_dump_proposals_on_two_ranks_writes_one_process_file(setup, frcnn, tmp_path):
    args = ["dump-proposals", "--model", setup["model"], "--data", setup["trainval"]]
    one_process(frcnn, *args, "--out", tmp_path / "one.h5")
    ranks = two_ranks(tmp_path / "ranks", *args, "--out", tmp_path / "two.h5")
    assert ranks[0]["stdout"].split() == [str(tmp_path / "two.h5")]
    assert_same_proposals(tmp_path / "one.h5", tmp_path / "two.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "ranks", "two.h5"]  # no segment left


def _record_drawings(rank: int) -> None:
    from frcnn_cli import detect_stream

    small_chunks(rank)
    real = detect_stream.draw_detections

    def draw(image, detections, out_path, **kwargs):
        with open(Path(out_path).parents[1] / f".drawn-by-{rank}", "a") as f:
            f.write(Path(out_path).name + "\n")
        return real(image, detections, out_path, **kwargs)

    detect_stream.draw_detections = draw


def test_detect_on_two_ranks_writes_one_process_results_each_rank_drawing_its_images(setup, frcnn, tmp_path):
    """The 5 images of a manifest (an odd number), found and planned by rank 0, detected and drawn by both."""
    args = ["detect", setup["trainval"], "--model", setup["model"], "--score-thresh", "0.2"]
    one = one_process(frcnn, *args, "--json", "--out", tmp_path / "one")
    ranks = two_ranks(tmp_path / "ranks", *args, "--json", "--out", tmp_path / "two" / "out",
                      prepare=_record_drawings)
    single = json.loads((tmp_path / "one" / "detections.json").read_text())
    assert len(single) == 5 and sum(len(e["detections"]) for e in single) > 0
    assert_same_entries(json.loads(ranks[0]["stdout"]), json.loads(one.stdout))
    assert_same_entries(json.loads((tmp_path / "two" / "out" / "detections.json").read_text()), single)
    drawn = [set((tmp_path / "two" / f".drawn-by-{r}").read_text().split()) for r in range(2)]
    assert drawn[0] and drawn[1] and not drawn[0] & drawn[1]
    images = sorted(Path(e["image"]).name for e in single)
    assert drawn[0] | drawn[1] == set(images)
    assert sorted(p.name for p in (tmp_path / "two" / "out").iterdir()) == [*images, "detections.json"]


def test_more_ranks_than_images_gives_one_process_outputs(setup, frcnn, tmp_path):
    """One image, two ranks: rank 1 has nothing to run and still takes part in every exchange."""
    dump = ["dump-proposals", "--model", setup["model"], "--data", setup["test"]]
    one_process(frcnn, *dump, "--out", tmp_path / "one.h5")
    two_ranks(tmp_path / "r1", *dump, "--out", tmp_path / "two.h5")
    assert_same_proposals(tmp_path / "one.h5", tmp_path / "two.h5")
    evaluate = ["eval", "--model", setup["model"], "--data", setup["test"], "--json"]
    assert_same_summary(json.loads(two_ranks(tmp_path / "r2", *evaluate)[0]["stdout"]),
                        json.loads(one_process(frcnn, *evaluate).stdout))
    image = sorted(setup["images"].iterdir())[0]
    detect = ["detect", image, "--model", setup["model"], "--json", "--score-thresh", "0.2"]
    assert_same_entries(json.loads(two_ranks(tmp_path / "r3", *detect)[0]["stdout"]),
                        json.loads(one_process(frcnn, *detect).stdout))


# --------------------------------------------------------------------------------------------------
# failures stop every rank with one message


def _corrupt_copy(setup, tmp_path: Path) -> Path:
    """The 5-image manifest with its last image (rank 1's share) cut short."""
    manifest = json.loads(Path(setup["trainval"]).read_text())
    root = tmp_path / "set"
    (root / "JPEGImages").mkdir(parents=True)
    for record in manifest["images"]:
        (root / record["path"]).write_bytes((Path(manifest["root"]) / record["path"]).read_bytes())
    last = root / manifest["images"][-1]["path"]
    write_file(last, last.read_bytes()[:200])
    manifest["root"] = str(root)
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("command", ["dump-proposals", "eval"])
def test_a_corrupt_image_on_rank_1_stops_both_ranks_with_one_error_line(setup, tmp_path, command):
    data = _corrupt_copy(setup, tmp_path)
    out = ["--out", tmp_path / "props.h5"] if command == "dump-proposals" else []
    ranks = two_ranks(tmp_path / "ranks", command, "--model", setup["model"], "--data", data, *out, ok=False)
    assert [r["exit_code"] for r in ranks] == [1, 0] and not any(r["crash"] for r in ranks)  # rank 0 reports
    errors = [line for r in ranks for line in (r["stdout"] + r["stderr"]).splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and "000004.jpg" in errors[0]
    assert ranks[1]["stdout"] == ranks[1]["stderr"] == ""
    assert not (tmp_path / "props.h5").exists()


def test_detect_reports_a_corrupt_image_once_and_detects_the_others_on_two_ranks(setup, frcnn, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(setup["images"].iterdir())[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    write_file(folder / "000001.jpg", b"not a jpeg")
    args = ["detect", folder, "--model", setup["model"], "--json"]
    one = frcnn(*args, *RUNTIME, ok=False)
    ranks = two_ranks(tmp_path / "ranks", *args, ok=False)
    assert [r["exit_code"] for r in ranks] == [1, 0] and one.exit_code == 1
    assert ranks[0]["stdout"] == one.stdout and [e.get("error") is not None for e in json.loads(one.stdout)] == [
        False, True, False]
    assert sum("Error:" in line for line in ranks[0]["stderr"].splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_under_torchrun_a_corrupt_image_is_one_error_line_and_rank_0_is_not_cut_short(setup, tmp_path):
    """torchrun stops every process once one fails: the other ranks leave with status 0, rank 0 reports."""
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "frcnn_cli", "dump-proposals", "--model", str(setup["model"]), "--data",
           str(_corrupt_copy(setup, tmp_path)), "--out", str(tmp_path / "p.h5"), *RUNTIME]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    errors = [line for line in (bad.stdout + bad.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "000004.jpg" in errors[0], bad.stderr[-3000:]
    assert "SIGTERM" not in bad.stderr  # rank 0 left by itself, after its message
    assert not (tmp_path / "p.h5").exists() and (tmp_path / "p.h5.partial").exists()  # resumable


# --------------------------------------------------------------------------------------------------
# a kill, then a rerun


def _spy_run(record: Path):
    """``Predictor.run`` that first appends the manifest indices (or positions) of its batch to ``record``."""
    from frcnn_cli.inference import Predictor

    real = Predictor.run

    def run(self, batch, **kwargs):
        with open(record, "a") as f:
            f.write("".join(f"{i}\n" for i in batch.indices.tolist()))
        return real(self, batch, **kwargs)

    return run


def _count_images_run(record: Path):
    def prepare(rank: int) -> None:
        from frcnn_cli.inference import Predictor

        small_chunks(rank)
        Predictor.run = _spy_run(record)

    return prepare


def test_a_killed_two_rank_dump_resumes_in_one_process_without_running_an_image_twice(setup, frcnn, tmp_path,
                                                                                      monkeypatch):
    """Chunks of 2 images a rank: each rank dies after its first image, leaving two unfinished segments."""
    args = ["dump-proposals", "--model", setup["model"], "--data", setup["trainval"], "--out", tmp_path / "p.h5"]

    def die_after_first_image(rank: int) -> None:
        from frcnn_cli.data.proposal_segments import SegmentWriter

        sharding.CHUNK_IMAGES = 2
        kill_after(SegmentWriter, "write", 1)

    ranks = run_ranks(2, [*args, *RUNTIME], tmp_path / "ranks", prepare=die_after_first_image)
    assert [r["exit_code"] for r in ranks] == [KILLED, KILLED]
    assert not (tmp_path / "p.h5").exists()
    assert len(list(tmp_path.glob("p.h5.seg-*.partial"))) == 2
    record = tmp_path / "run.txt"
    monkeypatch.setattr("frcnn_cli.inference.Predictor.run", _spy_run(record))
    one_process(frcnn, *args)
    assert sorted(record.read_text().split()) == ["1", "3", "4"]  # 0 (rank 0) and 2 (rank 1) were kept
    frcnn("dump-proposals", "--model", setup["model"], "--data", setup["trainval"], "--out", tmp_path / "ref.h5",
          *RUNTIME)
    assert_same_proposals(tmp_path / "ref.h5", tmp_path / "p.h5")
    assert sorted(p.name for p in tmp_path.glob("p.h5*")) == ["p.h5"]


def test_a_killed_two_rank_detect_resumes_on_two_ranks_without_running_an_image_twice(setup, frcnn, tmp_path):
    """Both ranks die after the fourth exchange (set-up, first plan, two chunks): rank 0 has written the first
    chunk (2 images) and no more."""
    args = ["detect", setup["images"], "--model", setup["model"], "--out", tmp_path / "out", "--score-thresh", "0.2"]

    def die_after_fourth_exchange(rank: int) -> None:
        small_chunks(rank)
        kill_after(RankGroup, "gather", 4)

    ranks = run_ranks(2, [*args, *RUNTIME], tmp_path / "ranks", prepare=die_after_fourth_exchange)
    assert [r["exit_code"] for r in ranks] == [KILLED, KILLED]
    partial = (tmp_path / "out" / "detections.json.partial").read_text().splitlines()
    assert len(partial) == 1 + 2 and not (tmp_path / "out" / "detections.json").exists()
    record = tmp_path / "run.txt"
    two_ranks(tmp_path / "ranks2", *args, prepare=_count_images_run(record))
    assert len(record.read_text().split()) == 6 - 2
    one_process(frcnn, "detect", setup["images"], "--model", setup["model"], "--out", tmp_path / "ref",
                "--score-thresh", "0.2")
    assert_same_entries(json.loads((tmp_path / "out" / "detections.json").read_text()),
                        json.loads((tmp_path / "ref" / "detections.json").read_text()))
    images = sorted(p.name for p in setup["images"].iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [*images, "detections.json"]
