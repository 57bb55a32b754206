"""The HDF5 proposal store: layout, attributes, single-image reads, resume after a crash, hostile files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from frcnn_cli.data.manifest import ImageRecord, Manifest, manifest_hash
from frcnn_cli.data.proposal_store import ProposalStore, ProposalWriter, bytes_per_proposal
from frcnn_cli.errors import ProposalStoreError

IDS = ["000001", "sub/dir/000002", "é 3", "000004", "000005"]
ATTRS = {"checkpoint_hash": "c" * 64, "nms_thresh": 0.7, "pre_nms_top_n": 0, "post_nms_top_n": 2000,
         "min_size": 16.0, "scale": 600, "max_size": 1000, "config": {"rpn": {"nms_thresh": 0.7}}}


def _manifest(ids=IDS, box=(1.0, 2.0, 30.0, 40.0)):
    images = [ImageRecord(id=i, path=f"{n}.jpg", width=100, height=80, boxes=[list(box)], labels=[0],
                          difficult=[False]) for n, i in enumerate(ids)]
    return Manifest(name="m", classes=["cat"], root="/data", images=images)


def _proposals(index, r=None):
    """Deterministic proposals of image ``index``: R = 3 * index rows, scores NOT sorted."""
    rng = np.random.default_rng(index)
    r = 3 * index if r is None else r
    xy = rng.uniform(0, 50, (r, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (r, 2))], 1).astype(np.float32)
    return boxes, rng.random(r).astype(np.float32)


def _writer(path, manifest, **attrs):
    return ProposalWriter(path, manifest_hash=manifest_hash(manifest), attrs={**ATTRS, **attrs},
                          manifest=manifest)


def _write(path, manifest, indices, finish=True):
    writer = _writer(path, manifest)
    for i in indices:
        writer.write(i, *_proposals(i))
    if finish:
        writer.finish()
    else:
        writer.close()
    return writer


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "props.h5"
    _write(path, _manifest(), range(len(IDS)))
    return path


def test_every_image_is_stored_sorted_by_score_with_its_attributes(store_path):
    assert not os.path.exists(f"{store_path}.partial")
    store = ProposalStore(store_path)
    assert len(store) == 5 and store.image_ids == IDS
    assert store.manifest_hash == manifest_hash(_manifest())
    assert store.attrs["nms_thresh"] == 0.7 and store.attrs["post_nms_top_n"] == 2000
    assert store.attrs["checkpoint_hash"] == "c" * 64 and store.attrs["scale"] == 600
    assert store.attrs["config"] == {"rpn": {"nms_thresh": 0.7}}
    for i in range(5):
        boxes, scores = store.get(i)
        want_boxes, want_scores = _proposals(i)
        order = np.argsort(-want_scores, kind="stable")
        assert boxes.dtype == torch.float32 and boxes.shape == (3 * i, 4) and scores.shape == (3 * i,)
        assert torch.all(scores[:-1] >= scores[1:])
        np.testing.assert_array_equal(scores.numpy(), want_scores[order])
        np.testing.assert_array_equal(boxes.numpy(), want_boxes[order])
    with h5py.File(store_path, "r") as f:  # the layout other HDF5 tools see
        assert f.attrs["format"] == "frcnn-proposals" and f.attrs["version"] == 1 and f.attrs["complete"] == 1
        assert [s.decode() for s in f["image_ids"][()]] == IDS
        assert f["images/1"].attrs["id"] == "sub/dir/000002" and f["images/1"].attrs["done"] == 1
        assert f["images/0/boxes"].shape == (0, 4)


def test_get_by_id_get_many_and_unknown_images(store_path):
    store = ProposalStore(store_path)
    assert torch.equal(store.get("é 3")[0], store.get(2)[0])
    assert [b.shape[0] for b, _ in [store.get(k) for k in (4, "sub/dir/000002")]] == [12, 3]
    with pytest.raises(ProposalStoreError, match=r"props\.h5 has no image 'nope'"):
        store.get("nope")
    with pytest.raises(ProposalStoreError, match="image index 5 .it has 5 images"):
        store.get(5)


def test_a_pickled_store_reopens_in_another_process(store_path):
    store = ProposalStore(store_path)
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone.get(3)[1], store.get(3)[1])


def test_one_image_is_read_without_the_others(store_path):
    # Overwrite image 3's box data in the file with 0xFF bytes (NaN): image 4 still reads exactly,
    # image 3 is refused by name.
    with h5py.File(store_path, "r") as f:
        offset, nbytes = f["images/3/boxes"].id.get_offset(), f["images/3/boxes"].id.get_storage_size()
    with open(store_path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * nbytes)
    store = ProposalStore(store_path)
    want = _proposals(4)
    np.testing.assert_array_equal(store.get(4)[0].numpy(), want[0][np.argsort(-want[1], kind="stable")])
    with pytest.raises(ProposalStoreError, match="non-finite boxes for image '000004'"):
        store.get(3)


def test_resume_after_an_interrupted_write_gives_the_same_content(tmp_path, store_path):
    manifest, path = _manifest(), tmp_path / "resumed.h5"
    first = _write(path, manifest, [0, 1, 2], finish=False)
    assert not path.exists() and os.path.exists(f"{path}.partial") and first.pending() == [3, 4]
    writer = _writer(path, manifest)
    assert writer.resumed_images == 3 and writer.done(2) and writer.done("é 3") and not writer.done(3)
    assert writer.pending() == [3, 4]
    for i in writer.pending():
        writer.write(i, *_proposals(i))
    writer.finish()
    resumed, straight = ProposalStore(path), ProposalStore(store_path)
    for i in range(5):
        for a, b in zip(resumed.get(i), straight.get(i)):
            assert torch.equal(a, b)


def test_resume_after_kill_9_rewrites_only_the_missing_images(tmp_path):
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_proposals import _manifest, _proposals, _writer
        w = _writer({str(path)!r}, _manifest())
        for i in range(3):
            w.write(i, *_proposals(i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    notes = []
    writer = ProposalWriter(path, manifest_hash=manifest_hash(_manifest()), attrs=ATTRS, manifest=_manifest(),
                            on_note=notes.append)
    assert writer.resumed_images == 3 and notes == []
    for i in writer.pending():
        writer.write(i, *_proposals(i))
    writer.finish()
    assert ProposalStore(path).get(2)[0].shape == (6, 4)


def test_a_half_written_image_is_written_again(tmp_path):
    manifest, path = _manifest(), tmp_path / "p.h5"
    _write(path, manifest, [0, 1, 2], finish=False)
    with h5py.File(f"{path}.partial", "a") as f:
        del f["images/1"].attrs["done"]  # the crash came before the image's last write
    writer = _writer(path, manifest)
    assert writer.pending() == [1, 3, 4] and writer.resumed_images == 2
    writer.close()


def test_a_partial_file_of_other_settings_or_damaged_is_discarded_with_a_note(tmp_path):
    manifest, path = _manifest(), tmp_path / "p.h5"
    _write(path, manifest, [0, 1], finish=False)
    notes = []
    writer = ProposalWriter(path, manifest_hash=manifest_hash(manifest), attrs={**ATTRS, "nms_thresh": 0.6},
                            manifest=manifest, on_note=notes.append)
    assert writer.resumed_images == 0 and writer.pending() == [0, 1, 2, 3, 4]
    assert "another manifest, model or settings" in notes[0] and "p.h5.partial" in notes[0]
    writer.close()
    with open(f"{path}.partial", "wb") as fh:
        fh.write(os.urandom(2000))
    notes.clear()
    writer = ProposalWriter(path, manifest_hash=manifest_hash(manifest), attrs=ATTRS, manifest=manifest,
                            on_note=notes.append)
    assert writer.resumed_images == 0 and "cannot be read" in notes[0]
    writer.close()


def test_finish_refuses_a_file_with_images_missing(tmp_path):
    writer = _write(tmp_path / "p.h5", _manifest(), [0, 1], finish=False)
    writer = _writer(tmp_path / "p.h5", _manifest())
    with pytest.raises(ProposalStoreError, match="3 of 5 images have no proposals yet .first: é 3"):
        writer.finish()
    writer.close()
    assert not (tmp_path / "p.h5").exists()


def test_a_store_of_another_manifest_is_refused_naming_both_files(store_path, tmp_path):
    store = ProposalStore(store_path)
    store.check_manifest(_manifest(), tmp_path / "train.json")  # the same manifest: fine
    other = _manifest(box=(1.0, 2.0, 30.0, 41.0))
    with pytest.raises(ProposalStoreError) as err:
        store.check_manifest(other, tmp_path / "other.json")
    assert str(store_path) in str(err.value) and str(tmp_path / "other.json") in str(err.value)
    assert "another manifest" in str(err.value)
    bigger = _manifest([*IDS, "000006"])
    with pytest.raises(ProposalStoreError, match="1 of its 6 images are not in it"):
        store.check_manifest(bigger, tmp_path / "bigger.json")


def test_a_store_lacking_an_image_of_its_manifest_is_refused(store_path, tmp_path):
    with h5py.File(store_path, "a") as f:
        del f["images/2"]
    with pytest.raises(ProposalStoreError, match=r"lacks 1 of the 5 images of .*m\.json .first: 'é 3'"):
        ProposalStore(store_path).check_manifest(_manifest(), tmp_path / "m.json")


def _refused(path, match):
    with pytest.raises(ProposalStoreError, match=match) as err:
        ProposalStore(path)
    assert str(path) in str(err.value)


def test_missing_truncated_random_foreign_future_and_incomplete_files_are_refused(store_path, tmp_path):
    _refused(tmp_path / "none.h5", "does not exist; make it with `frcnn dump-proposals")
    _write(tmp_path / "half.h5", _manifest(), [0], finish=False)
    _refused(tmp_path / "half.h5", "unfinished dump")
    data = store_path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "cut.h5", "not a readable HDF5 file")
    (tmp_path / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(tmp_path / "random.h5", "not a readable HDF5 file")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros(3)
    _refused(tmp_path / "foreign.h5", "not a frcnn proposal file")
    for name, key, value, match in [("future.h5", "version", 2, "version 2, newer than this frcnn"),
                                    ("incomplete.h5", "complete", 0, "is incomplete"),
                                    ("nohash.h5", "manifest_hash", None, "lacks the attribute")]:
        (tmp_path / name).write_bytes(data)
        with h5py.File(tmp_path / name, "a") as f:
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
        _refused(tmp_path / name, match)


def test_hostile_datasets_are_refused_before_they_are_read(store_path):
    with h5py.File(store_path, "a") as f:
        del f["images/1/boxes"]  # claims 10^9 rows (16 GB) in a few bytes of file
        f["images/1"].create_dataset("boxes", shape=(10**9, 4), dtype="f4", chunks=(1024, 4),
                                     compression="gzip")
        del f["images/2/boxes"]
        f["images/2/boxes"] = np.zeros((6, 3), np.float32)
        del f["images/3/scores"]
        f["images/3/scores"] = np.zeros(4, np.float32)  # 9 boxes, 4 scores
        del f["images/4/boxes"]
        f["images/4/boxes"] = np.array(["x"] * 12, dtype=object).reshape(3, 4).astype("S1")
    store = ProposalStore(store_path)
    with pytest.raises(ProposalStoreError, match=r"boxes dataset for image 'sub/dir/000002' .shape \(1000"):
        store.get(1)
    with pytest.raises(ProposalStoreError, match=r"invalid boxes dataset .* \(shape \(6, 3\)\)"):
        store.get(2)
    with pytest.raises(ProposalStoreError, match=r"invalid scores dataset for image '000004'"):
        store.get(3)
    with pytest.raises(ProposalStoreError, match="invalid boxes dataset for image '000005'"):
        store.get(4)


def test_tensors_are_accepted_and_bytes_per_proposal_is_near_20(tmp_path):
    manifest, path = _manifest(IDS[:3]), tmp_path / "big.h5"
    writer = _writer(path, manifest)
    for i in range(3):
        boxes, scores = _proposals(i, r=2000)
        writer.write(i, torch.from_numpy(boxes).double(), torch.from_numpy(scores))
    writer.finish()
    # 16 bytes of box + 4 of score per proposal, plus a little HDF5 metadata per image
    assert 20.0 <= bytes_per_proposal(path) < 24.0
    with pytest.raises(ValueError, match="3 boxes, 2 scores"):
        _writer(tmp_path / "x.h5", manifest).write(0, np.zeros((3, 4)), np.zeros(2))
