"""``dump-proposals``, ``eval`` and ``detect`` under torchrun (2 gloo processes forked from the test, ``ranks.py``):
the outputs equal one process's, for an odd number of images, more processes than images, a corrupt image on one
rank, and a kill followed by a rerun; and the pieces: the plan, the lazy image finder, the resumable results file.

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
from frcnn_cli.data.discovery import ImageSource
from frcnn_cli.detect import OutputNames, output_paths
from frcnn_cli.detect_results import ResultsLog
from frcnn_cli.errors import DataError
from frcnn_cli.sharding import Outcome, RankGroup, batches_of, capture, contiguous_split, image_cost, plan_chunks

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
# the plan


def test_a_vgg_sized_image_costs_its_decoded_plus_its_rescaled_pixels():
    cfg = tiny_config("input.test_scale=600", "input.max_size=1000").input
    assert image_cost(375, 500, cfg) == 375 * 500 + 600 * 800  # shorter side 375 -> 600: scale 1.6
    assert image_cost(100, 1000, cfg) == 100 * 1000 + 100 * 1000  # longer side capped at 1000: scale 1


def test_contiguous_shares_are_within_one_item_of_the_fair_share():
    assert contiguous_split([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert contiguous_split([3, 1, 1, 1], 2) == [range(0, 1), range(1, 4)]
    assert contiguous_split([1, 1, 1], 2) in ([range(0, 1), range(1, 3)], [range(0, 2), range(2, 3)])
    assert [len(r) for r in contiguous_split([5.0], 3)].count(1) == 1  # more ranks than images: the others idle
    costs = [7, 1, 4, 4, 2, 9, 3, 3, 5, 1]
    for parts in (2, 3, 4):
        shares = contiguous_split(costs, parts)
        assert [i for r in shares for i in r] == list(range(len(costs)))
        for r in shares:
            assert abs(sum(costs[i] for i in r) - sum(costs) / parts) <= max(costs)


def test_chunks_keep_one_process_batches_and_concatenate_in_image_order():
    batches = batches_of(list(range(7)), 2)
    assert batches == [[0, 1], [2, 3], [4, 5], [6]]
    plan = plan_chunks(batches, [2, 2, 2, 1], 2, per_rank=2)
    assert plan == [[[[0, 1]], [[2, 3]]], [[[4, 5]], [[6]]]]
    assert [i for chunk in plan for share in chunk for batch in share for i in batch] == list(range(7))


def test_one_process_exchanges_are_local_and_raise_the_error_itself():
    group = RankGroup()
    assert group.gather(Outcome(3), reply=lambda values: values[0] + 1) == ([3], 4)
    error = DataError("image x.jpg is corrupt; replace it")
    outcome = capture(lambda: (_ for _ in ()).throw(error))
    assert outcome.failure == ("DataError", "image x.jpg is corrupt; replace it", 1)
    with pytest.raises(DataError) as raised:
        group.gather(outcome)
    assert raised.value is error
    rebuilt = outcome.error(quiet=True)
    assert isinstance(rebuilt, DataError) and rebuilt.quiet and str(rebuilt) == str(error)


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


# --------------------------------------------------------------------------------------------------
# finding images lazily, naming drawings, the results file


def test_images_are_found_one_folder_at_a_time_in_sorted_order(tmp_path, monkeypatch):
    for name in ("b/2.png", "b/1.png", "a.png", "c/x/3.png", "c/.h/4.png", "d.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_file(tmp_path / name, b"")
    listed = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(Path(path).name) or real(path))
    found = iter(ImageSource([tmp_path]))
    assert next(found).key == (0, "a.png") and listed == [tmp_path.name]  # the first image: one folder read
    rest = [(image.key, image.path.relative_to(tmp_path).as_posix()) for image in found]
    assert rest == [((0, "b", "1.png"), "b/1.png"), ((0, "b", "2.png"), "b/2.png"),
                    ((0, "c", "x", "3.png"), "c/x/3.png")]
    assert [k for k, _ in rest] == sorted(k for k, _ in rest)


def test_drawing_names_in_walk_order_match_the_list_version(tmp_path):
    rels = [Path("a/x.jpg"), Path("b/anim.gif"), Path("b/c/y.png"), Path("b/anim.gif.png"), Path("B/z.jpg"),
            Path("d/X.JPG"), Path("d/x.jpg")]
    names = OutputNames(tmp_path / "out", walk_order=True)
    walked = [names(rel).relative_to(tmp_path / "out").as_posix() for rel in rels]
    listed = [p.relative_to(tmp_path / "out").as_posix() for p in output_paths([tmp_path / r for r in rels],
                                                                                tmp_path / "out")]
    assert walked == listed == ["a/x.jpg", "b/anim.gif.png", "b/c/y.png", "b/anim.gif (2).png", "B/z.jpg",
                                "d/X.JPG", "d/x (2).jpg"]


def test_the_results_file_keeps_whole_lines_and_is_taken_up_only_with_the_same_digest(tmp_path):
    notes = []
    log = ResultsLog(tmp_path, "abc", on_note=notes.append)
    log.append([((0, "a.png"), '{"image": "a.png"}'), ((0, "b.png"), '{"image": "b.png"}')])
    log._file.write('[0, "c.png"]\t{"ima')  # a line cut by a kill
    log.close()
    again = ResultsLog(tmp_path, "abc", on_note=notes.append)
    assert [k for k, _ in again.previous()] == [(0, "a.png"), (0, "b.png")] and notes == []
    again.append([((0, "a.png"), '{"image": "a.png"}')])
    again.close()  # killed again: its partial (a) and the older previous (a, b) are joined
    third = ResultsLog(tmp_path, "abc")
    assert [e for _, e in third.previous()] == ['{"image": "a.png"}', '{"image": "b.png"}']
    third.append(list(third.previous()))
    assert third.finish().read_text() == '[\n{"image": "a.png"},\n{"image": "b.png"}\n]\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.json"]
    ResultsLog(tmp_path, "abc").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.json"]  # a run that wrote nothing leaves nothing
    fourth = ResultsLog(tmp_path, "abc")
    fourth.append([((0, "a.png"), '{"image": "a.png"}')])
    fourth.close()
    other = ResultsLog(tmp_path, "xyz", on_note=notes.append)
    assert list(other.previous()) == [] and "another model, settings or inputs" in notes[0]


def test_absorbing_a_segment_copies_its_finished_images_and_a_foreign_one_is_discarded(synth_set, tmp_path):
    from frcnn_cli.data.manifest import manifest_hash, read_manifest
    from frcnn_cli.data.proposal_segments import SegmentWriter, absorb, segment_path
    from frcnn_cli.data.proposal_store import ProposalStore, ProposalWriter

    manifest = read_manifest(synth_set[1])
    ids, mhash, out = [r.id for r in manifest.images], manifest_hash(manifest), tmp_path / "p.h5"
    attrs = {"checkpoint_hash": "0" * 64, "nms_thresh": 0.7, "pre_nms_top_n": 0, "post_nms_top_n": 300,
             "min_size": 4.0, "scale": 64, "max_size": 96, "config": {}}
    boxes = np.array([[1, 2, 30, 40], [0, 0, 10, 10]], np.float32)
    with ProposalWriter(out, manifest=manifest, manifest_hash=mhash, attrs=attrs) as writer:
        ours = SegmentWriter(segment_path(out, 0, 1), digest=writer.digest, manifest_hash=mhash, image_ids=ids)
        for index in (1, 2):
            ours.write(index, boxes * index, np.array([0.2, 0.9], np.float32))
        ours.finish()
        theirs = SegmentWriter(segment_path(out, 1, 0), digest="another", manifest_hash=mhash, image_ids=ids)
        theirs.write(0, boxes, np.array([0.5, 0.4], np.float32))
        theirs.finish()
        notes = []
        assert absorb(writer, segment_path(out, 0, 1)) == 2 and writer.pending() == [0, 3]
        assert absorb(writer, segment_path(out, 1, 0), notes.append) == 0 and writer.pending() == [0, 3]
        assert "another manifest, model or settings" in notes[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5.partial"]
        for index in (0, 3):
            writer.write(index, boxes, np.array([0.5, 0.4], np.float32))
        writer.finish()
    with ProposalStore(out) as store:
        got_boxes, got_scores = store.get(2)
        np.testing.assert_array_equal(got_boxes.numpy(), boxes[::-1] * 2)  # sorted by score when written
        np.testing.assert_array_equal(got_scores.numpy(), np.array([0.9, 0.2], np.float32))


def test_drawings_of_files_named_apart_never_collide_with_a_folder_walked_between(tmp_path):
    """``a.gif`` is drawn as ``a.gif.png``: a real ``a.gif.png`` named later gets ``(2)``, although a folder's
    walk came between them (walk-order names forget finished folders, named files are pinned)."""
    from frcnn_cli.detect_stream import ChunkPlanner

    for name in ("x/a.gif", "x/a.gif.png", "x/y/b.png", "x/y/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_file(tmp_path / name, b"")
    source = ImageSource([tmp_path / "x" / "a.gif", tmp_path / "x" / "y", tmp_path / "x" / "a.gif.png"])
    planner = ChunkPlanner(source, iter(()), tmp_path / "out", world=1, batch_size=1, per_rank=10)
    drawn = [Path(task[2]).relative_to(tmp_path / "out").as_posix() for share in planner.next_shares()
             for batch in share for task in batch]
    assert drawn == ["a.gif.png", "y/b.png", "y/c.png", "a.gif (2).png"]
