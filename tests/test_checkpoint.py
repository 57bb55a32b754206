"""Checkpoints: round trip, refusals (wrong model, corrupt, unsafe, missing, future), atomic writes."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from conftest import PicklePayload

from frcnn_cli.config import get_preset
from frcnn_cli.config_io import config_to_dict
from frcnn_cli.errors import CheckpointError
from frcnn_cli.model.checkpoint import (
    file_sha256,
    load_model,
    load_parts,
    read_checkpoint,
    save_checkpoint,
)
from frcnn_cli.model.detector import FasterRCNN

CLASSES = ["cat", "dog"]


def _model(name="tiny", classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    return FasterRCNN(get_preset(name), classes)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _model()
    path = tmp_path_factory.mktemp("ckpt") / "det.pt"
    save_checkpoint(path, model, stage="detector", provenance={"manifest": "ab" * 32, "iterations": 400},
                    train_state={"iteration": 7, "rng": torch.get_rng_state(), "lrs": [0.01, 0.001]})
    return model, path


def test_round_trip_gives_equal_tensors_config_classes_and_provenance(saved):
    model, path = saved
    loaded, ckpt = load_model(path)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.cfg == model.cfg and loaded.classes == CLASSES and not loaded.training
    assert ckpt["format"] == "frcnn-checkpoint" and ckpt["version"] == 1 and ckpt["stage"] == "detector"
    assert ckpt["provenance"] == {"manifest": "ab" * 32, "iterations": 400}
    assert ckpt["train_state"]["iteration"] == 7 and ckpt["train_state"]["lrs"] == [0.01, 0.001]
    assert ckpt["config"] == config_to_dict(model.cfg)
    assert sorted(ckpt["parts"]) == ["backbone", "roi_head", "rpn"]


def test_the_file_is_plain_enough_for_weights_only_loading(saved):
    _, path = saved
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["parts"]["rpn"]["conv.weight"], torch.Tensor)


def test_a_subset_of_parts_is_stored_and_loads_into_those_parts_only(tmp_path):
    rpn_model = _model(seed=1)
    path = tmp_path / "rpn1.pt"
    save_checkpoint(path, rpn_model, stage="rpn", provenance={}, parts=("backbone", "rpn"))
    ckpt = read_checkpoint(path)
    assert sorted(ckpt["parts"]) == ["backbone", "rpn"]
    target = _model(seed=2)
    head_before = {k: v.clone() for k, v in target.roi_head.state_dict().items()}
    load_parts(target, ckpt, ("backbone", "rpn"), path)
    assert torch.equal(target.rpn.conv.weight, rpn_model.rpn.conv.weight)
    assert torch.equal(target.backbone.conv1.weight, rpn_model.backbone.conv1.weight)
    assert all(torch.equal(v, head_before[k]) for k, v in target.roi_head.state_dict().items())
    with pytest.raises(CheckpointError, match="has no 'roi_head' part"):
        load_parts(target, ckpt, ("roi_head",), path)


def test_another_backbone_is_refused_naming_both(saved):
    _, path = saved
    with torch.device("meta"):
        zf = FasterRCNN(get_preset("zf"), CLASSES)
    with pytest.raises(CheckpointError) as info:
        load_parts(zf, read_checkpoint(path), ("backbone",), path)
    message = str(info.value)
    assert "'tiny'" in message and "'zf'" in message and str(path) in message


def test_another_class_count_is_refused_naming_both(saved):
    _, path = saved
    model = _model(classes=["cat", "dog", "bird"])
    with pytest.raises(CheckpointError) as info:
        load_parts(model, read_checkpoint(path), ("roi_head",), path)
    message = str(info.value)
    assert "2 classes" in message and "3 classes" in message and str(path) in message
    load_parts(model, read_checkpoint(path), ("backbone", "rpn"), path)  # class-agnostic parts still load


def test_a_part_of_another_shape_is_a_checkpoint_error(saved):
    _, path = saved
    ckpt = read_checkpoint(path)
    ckpt["parts"]["rpn"]["conv.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match="'rpn' part does not fit"):
        load_parts(_model(), ckpt, ("rpn",), path)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="noise.pt is not a readable torch file"):
        read_checkpoint(path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        read_checkpoint(empty)


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "frcnn-checkpoint", "version": 1, "parts": {}, "x": PicklePayload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert "refused" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")


def test_other_torch_files_and_future_versions_are_refused(saved, tmp_path):
    _, path = saved
    plain = tmp_path / "state.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a frcnn checkpoint"):
        read_checkpoint(plain)
    ckpt = read_checkpoint(path)
    future = tmp_path / "future.pt"
    torch.save({**ckpt, "version": 2}, future)
    with pytest.raises(CheckpointError, match="version 2.*upgrade frcnn"):
        read_checkpoint(future)
    broken = tmp_path / "broken.pt"
    torch.save({**ckpt, "classes": "cat"}, broken)
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(broken)


def test_the_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    model = _model()
    path = tmp_path / "out" / "model.pt"
    save_checkpoint(path, model, stage="rpn", provenance={}, parts=("backbone", "rpn"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    old = path.read_bytes()

    class Unstorable:
        pass

    with pytest.raises(TypeError, match="provenance.bad"):
        save_checkpoint(path, model, stage="rpn", provenance={"bad": Unstorable()})
    assert path.read_bytes() == old  # the previous file is untouched


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, stage="rpn", provenance={}, parts=("rpn",))
    old = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a file")  # an open file: see save_checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, stage="rpn", provenance={})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_unknown_parts_are_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="heads"):
        save_checkpoint(tmp_path / "x.pt", _model(), stage="rpn", provenance={}, parts=("heads",))


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 5)  # more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
