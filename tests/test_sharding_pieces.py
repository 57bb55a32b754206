"""The pieces of inference shared among ranks, each on its own: the plan (costs, shares, chunks), one process's
exchanges, the lazy image finder, the names of drawings, detect's resumable results file, and the absorption of a
dump's segments (the runs on two ranks: tests/test_sharded_inference.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, write_file

from frcnn_cli.data.discovery import ImageSource
from frcnn_cli.detect import OutputNames, output_paths
from frcnn_cli.detect_results import ResultsLog
from frcnn_cli.errors import DataError
from frcnn_cli.sharding import Outcome, RankGroup, batches_of, capture, contiguous_split, image_cost, plan_chunks

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
