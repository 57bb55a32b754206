"""Backbone initialisation: torchvision ImageNet weights (offline and cached), local files, refusals.

No network here: torch.hub's download is monkeypatched to fail (offline) or to "download" a file the
test makes itself; the hub cache is a temporary folder.
"""

from __future__ import annotations

import os
import urllib.error

import pytest
import torch
import torchvision
from conftest import PicklePayload

from frcnn_cli.errors import CheckpointError
from frcnn_cli.model.backbones import build_backbone
from frcnn_cli.model.weights import hub_cache_file, init_backbone


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache; downloads fail as they do offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub", calls


def _meta(name):
    with torch.device("meta"):  # for the error paths: no memory, no init time
        return build_backbone(name)


def _merged_state(parts):
    return {**parts.shared.state_dict(), **parts.head_top.state_dict()}


def _assert_same(parts, state):
    ours = _merged_state(parts)
    assert set(ours) <= set(state)
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key


def test_hub_cache_file_is_torch_hub_checkpoints_with_the_url_file_name(hub):
    folder, _ = hub
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    assert hub_cache_file(url) == folder / "checkpoints" / "vgg16-397923af.pth"


def test_none_keeps_the_random_initialisation():
    torch.manual_seed(0)
    parts = build_backbone("tiny")
    before = {k: v.clone() for k, v in _merged_state(parts).items()}
    init_backbone(parts, "tiny", "none")
    _assert_same(parts, before)


@pytest.mark.parametrize("name, file_name", [("vgg16", "vgg16-397923af.pth"),
                                             ("resnet50", "resnet50-0676ba61.pth"),
                                             ("resnet101", "resnet101-63fe2227.pth")])
def test_offline_imagenet_names_the_cache_file_and_the_alternatives(hub, name, file_name):
    folder, calls = hub
    parts = build_backbone("tiny")  # never touched: the error comes first
    with pytest.raises(CheckpointError) as info:
        init_backbone(parts, name, "imagenet")
    message = str(info.value)
    assert str(folder / "checkpoints" / file_name) in message
    assert "--init FILE.pth" in message and "--init none" in message
    assert "URLError" in message
    assert len(calls) == 1


def test_offline_torch_hub_prints_nothing_before_the_error(hub, capsys):
    """torch.hub writes "Downloading: …" before it tries: offline that line came before frcnn's Error."""
    with pytest.raises(CheckpointError):
        init_backbone(build_backbone("tiny"), "vgg16", "imagenet")
    assert capsys.readouterr() == ("", "")


def test_a_corrupt_cached_file_is_an_error_naming_it(hub):
    folder, calls = hub
    cached = folder / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="vgg16-397923af.pth"):
        init_backbone(build_backbone("tiny"), "vgg16", "imagenet")
    assert calls == []  # a cached file is never downloaded again


@pytest.mark.parametrize("name", ["zf", "tiny"])
def test_backbones_without_torchvision_weights_ask_for_a_local_file(name):
    with pytest.raises(CheckpointError, match="--init FILE.pth"):
        init_backbone(_meta(name), name, "imagenet")


def test_imagenet_resnet50_loads_torchvision_weights_through_the_hub_cache(hub, monkeypatch, capsys):
    folder, _ = hub
    torch.manual_seed(1)
    reference = torchvision.models.resnet50().state_dict()
    for key in reference:  # make the BatchNorm statistics distinctive too
        if key.endswith(("running_mean", "running_var")):
            reference[key] = torch.rand_like(reference[key]) + 0.5
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append((url, dst))
        torch.save(reference, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    parts = build_backbone("resnet50")
    init_backbone(parts, "resnet50", "imagenet")
    _assert_same(parts, reference)
    assert fetched[0][0] == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert (folder / "checkpoints" / "resnet50-0676ba61.pth").is_file()
    assert capsys.readouterr().out == ""  # torch.hub's "Downloading" note goes to stderr, not stdout

    fresh = build_backbone("resnet50")  # second time: from the cache, no download
    init_backbone(fresh, "resnet50", "imagenet")
    assert len(fetched) == 1
    _assert_same(fresh, reference)


def test_vgg16_torchvision_layout_maps_onto_shared_and_head_top_by_name():
    with torch.device("meta"):
        tv = torchvision.models.vgg16().state_dict()
        parts = build_backbone("vgg16")
    assert set(parts.shared.state_dict()) == {k for k in tv if k.startswith("features.")}
    assert set(parts.head_top.state_dict()) == {"classifier.0.weight", "classifier.0.bias",
                                                "classifier.3.weight", "classifier.3.bias"}


@pytest.mark.slow
def test_vgg16_local_torchvision_file_loads_fc6_fc7_and_drops_fc8(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.vgg16().state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    parts = build_backbone("vgg16")
    init_backbone(parts, "vgg16", str(path))
    _assert_same(parts, state)
    assert torch.equal(parts.head_top.classifier[3].weight, state["classifier.3.weight"])


def _tiny_file(tmp_path, transform=lambda s: s, name="tiny.pth"):
    torch.manual_seed(3)
    source = build_backbone("tiny")
    state = {k: v + 1.0 for k, v in _merged_state(source).items()}  # differs from any fresh init
    path = tmp_path / name
    torch.save(transform(state), path)
    return path, state


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 3},
                                  lambda s: {f"module.{k}": v for k, v in s.items()}])
def test_a_local_state_dict_loads_exactly(tmp_path, wrap):
    path, state = _tiny_file(tmp_path, wrap)
    parts = build_backbone("tiny")
    init_backbone(parts, "tiny", str(path))
    _assert_same(parts, state)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    def damage(s):
        s = dict(s)
        del s["conv3.weight"]
        s["conv9.weight"] = torch.zeros(1)
        return s

    path, _ = _tiny_file(tmp_path, damage)
    with pytest.raises(CheckpointError) as info:
        init_backbone(build_backbone("tiny"), "tiny", str(path))
    message = str(info.value)
    assert "missing keys: conv3.weight" in message and "unexpected keys: conv9.weight" in message
    assert str(path) in message


def test_a_wrong_shape_is_an_error_not_a_partial_load(tmp_path):
    path, _ = _tiny_file(tmp_path, lambda s: {**s, "fc7.weight": torch.zeros(10, 256)})
    parts = build_backbone("tiny")
    before = {k: v.clone() for k, v in _merged_state(parts).items()}
    with pytest.raises(CheckpointError, match=r"fc7.weight \(10, 256\) vs \(256, 256\)"):
        init_backbone(parts, "tiny", str(path))
    _assert_same(parts, before)


def test_weights_of_another_backbone_do_not_fit(tmp_path):
    path, _ = _tiny_file(tmp_path)
    with pytest.raises(CheckpointError, match="do not fit the zf backbone"):
        init_backbone(_meta("zf"), "zf", str(path))


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        init_backbone(build_backbone("tiny"), "tiny", str(tmp_path / "nope.pth"))


def test_a_file_that_is_not_a_state_dict_is_an_error(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        init_backbone(build_backbone("tiny"), "tiny", str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        init_backbone(build_backbone("tiny"), "tiny", str(garbage))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": PicklePayload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        init_backbone(build_backbone("tiny"), "tiny", str(path))
    assert not marker.exists()


def test_a_frcnn_checkpoint_initialises_backbone_and_head_top(tmp_path):
    from frcnn_cli.config import get_preset
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    torch.manual_seed(4)
    model = FasterRCNN(get_preset("tiny"), ["a", "b"])
    path = tmp_path / "det.pt"
    save_checkpoint(path, model, stage="detector", provenance={})
    parts = build_backbone("tiny")
    init_backbone(parts, "tiny", str(path))
    _assert_same(parts, {**model.backbone.state_dict(), **model.roi_head.head_top.state_dict()})
    with pytest.raises(CheckpointError, match="'tiny' backbone, the model is 'zf'"):
        init_backbone(_meta("zf"), "zf", str(path))
