from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli.config import get_preset
from frcnn_cli.data.images import (
    DetectionDataset,
    ImageBatch,
    ImageFilesDataset,
    batch_from_images,
    collate,
    compute_scale,
    load_image,
    normalize,
    resized_size,
    scale_and_flip_proposals,
)
from frcnn_cli.data.loading import ResumableBatchSampler, inference_loader, make_loader
from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.data.targets import Targets
from frcnn_cli.errors import DataError


def _cfg(**input_changes):
    cfg = get_preset("vgg16")
    return replace(cfg, input=replace(cfg.input, **input_changes))


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _red_square_image(tmp_path: Path) -> Path:
    """100 x 80 grey image, red where the box [10, 20, 30, 40] is (columns 10..29, rows 20..39)."""
    pixels = np.full((80, 100, 3), 100, np.uint8)
    pixels[20:40, 10:30] = (255, 0, 0)
    return _save(tmp_path / "red.png", pixels)


def _manifest(tmp_path: Path, records: list[ImageRecord]) -> Manifest:
    return Manifest(name="t", classes=["a", "b", "c"], root=str(tmp_path), images=records)


# ------------------------------------------------------------------ geometry


def test_paper_rescale_sizes():
    assert compute_scale(375, 500, 600, 1000) == pytest.approx(1.6)
    assert resized_size(375, 500, 1.6) == (600, 800)
    scale = compute_scale(300, 1500, 600, 1000)
    assert scale == pytest.approx(1000 / 1500)
    assert resized_size(300, 1500, scale) == (200, 1000)
    assert compute_scale(192, 256, 192, 320) == 1.0


def test_flip_of_a_hand_box_in_a_100_pixel_image():
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    flipped = scale_and_flip_proposals(box, 1.0, True, 100)
    assert flipped.tolist() == [[70.0, 20.0, 90.0, 40.0]]
    assert scale_and_flip_proposals(box, 2.0, True, 100).tolist() == [[140.0, 40.0, 180.0, 80.0]]
    assert scale_and_flip_proposals(flipped, 1.0, True, 100).tolist() == box.tolist()
    assert scale_and_flip_proposals(box, 1.5, False, 100).tolist() == [[15.0, 30.0, 45.0, 60.0]]


@pytest.mark.parametrize("target, scale", [(80, 1.0), (160, 2.0)])
def test_flipped_item_mirrors_pixels_and_boxes_exactly(tmp_path, target, scale):
    path = _red_square_image(tmp_path)
    rec = ImageRecord("r", path.name, 100, 80, [[10.0, 20.0, 30.0, 40.0]], [1], [False])
    ds = DetectionDataset(_manifest(tmp_path, [rec]), _cfg(train_scales=(target,), max_size=1000), train=True)
    assert len(ds) == 2
    plain, flipped = ds[0], ds[1]
    assert (plain["flipped"], flipped["flipped"]) == (False, True)
    assert plain["scale"] == flipped["scale"] == scale
    assert plain["image"].shape == (3, 80 * scale, 100 * scale)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert plain["boxes"].tolist() == [[10 * scale, 20 * scale, 30 * scale, 40 * scale]]
    assert flipped["boxes"].tolist() == [[70 * scale, 20 * scale, 90 * scale, 40 * scale]]
    red = flipped["image"][0] > 1.0  # normalised red channel of pure red is (1 - 0.485) / 0.229 = 2.25
    cols = red.any(0).nonzero().flatten()
    rows = red.any(1).nonzero().flatten()
    assert (cols.min().item(), cols.max().item() + 1) == (70 * scale, 90 * scale)
    assert (rows.min().item(), rows.max().item() + 1) == (20 * scale, 40 * scale)


def test_normalisation_rgb_unit_range_and_caffe_bgr():
    pixel = torch.tensor([255.0, 0.0, 0.0]).reshape(3, 1, 1)
    rgb = normalize(pixel, _cfg().input).flatten().tolist()
    assert rgb == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    caffe = _cfg(pixel_order="bgr", pixel_range=255.0, pixel_mean=(102.9801, 115.9465, 122.7717),
                 pixel_std=(1.0, 1.0, 1.0)).input
    assert normalize(pixel, caffe).flatten().tolist() == pytest.approx([-102.9801, -115.9465, 255 - 122.7717])


# ------------------------------------------------------------------ decoding


def test_colour_modes_decode_to_three_channel_uint8(tmp_path):
    gray = Image.fromarray(np.full((4, 5), 100, np.uint8), "L")
    gray.save(tmp_path / "gray.png")
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[...] = (10, 20, 30, 40)
    _save(tmp_path / "rgba.png", rgba)
    palette = Image.new("P", (5, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "pal.png")
    _save(tmp_path / "deep.png", np.array([[0, 32768, 65535, 257]], dtype=np.uint16))
    expected = {"gray.png": (100, 100, 100), "rgba.png": (10, 20, 30), "pal.png": (200, 100, 50)}
    for name, colour in expected.items():
        image = load_image(tmp_path / name)
        assert image.dtype == torch.uint8 and image.shape == (3, 4, 5)
        assert image[:, 0, 0].tolist() == list(colour)
    deep = load_image(tmp_path / "deep.png")
    assert deep.dtype == torch.uint8 and deep.shape == (3, 1, 4)
    assert deep[0, 0].tolist() == [0, 128, 255, 1] and torch.equal(deep[0], deep[2])


def test_truncated_missing_and_non_image_files_name_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not an image")
    for name in ("cut.jpg", "notes.jpg", "missing.jpg"):
        with pytest.raises(DataError, match=name):
            load_image(tmp_path / name)


def test_image_size_disagreeing_with_the_manifest_is_an_error(tmp_path):
    path = _red_square_image(tmp_path)
    rec = ImageRecord("r", path.name, 90, 80, [], [], [])
    with pytest.raises(DataError, match="100x80 but the manifest says 90x80"):
        DetectionDataset(_manifest(tmp_path, [rec]), _cfg(), train=False)[0]


# ------------------------------------------------------------------ batches and targets


def _item(h: int, w: int, value: float, index: int) -> dict:
    return {"image": torch.full((3, h, w), value), "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64), "id": f"i{index}", "index": index,
            "flipped": bool(index % 2), "scale": 1.5, "original_size": (h // 2, w // 2)}


def test_collate_pads_mixed_sizes_to_a_multiple_of_16():
    batch, targets = collate([_item(50, 70, 1.0, 0), _item(65, 33, 2.0, 1)], size_divisor=16)
    assert batch.tensor.shape == (2, 3, 80, 80)
    assert batch.image_sizes.tolist() == [[50, 70], [65, 33]]
    assert batch.original_sizes.tolist() == [[25, 35], [32, 16]]
    assert batch.flipped.tolist() == [False, True] and batch.indices.tolist() == [0, 1]
    assert batch.ids == ["i0", "i1"] and batch.scales.tolist() == [1.5, 1.5]
    assert batch.tensor[0].sum().item() == 3 * 50 * 70
    assert batch.tensor[1].sum().item() == 2 * 3 * 65 * 33
    assert batch.tensor[0, :, 50:].abs().sum() == 0 and batch.tensor[1, :, :, 33:].abs().sum() == 0
    assert isinstance(targets, Targets) and len(targets) == 2
    moved = batch.to("cpu")
    assert isinstance(moved, ImageBatch) and moved.ids == batch.ids
    assert targets.to("cpu").boxes[0].shape == (0, 4)


def test_difficult_boxes_are_excluded_and_empty_images_kept(tmp_path):
    path = _red_square_image(tmp_path)
    recs = [ImageRecord("a", path.name, 100, 80, [[1, 2, 10, 12], [20, 20, 40, 40], [50, 5, 60, 70]],
                        [0, 2, 1], [False, True, False]),
            ImageRecord("b", path.name, 100, 80, [[5, 5, 20, 20]], [1], [True])]
    ds = DetectionDataset(_manifest(tmp_path, recs), _cfg(train_scales=(160,)), train=True)
    assert len(ds) == 4
    first = ds[0]
    assert first["labels"].tolist() == [1, 2]
    assert first["boxes"].tolist() == [[2.0, 4.0, 20.0, 24.0], [100.0, 10.0, 120.0, 140.0]]
    empty = ds[1]
    assert empty["id"] == "b" and empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_batch_from_images_uses_the_test_scale():
    batch = batch_from_images([torch.zeros((3, 375, 500), dtype=torch.uint8)], _cfg().input, ["x"])
    assert batch.image_sizes.tolist() == [[600, 800]] and batch.scales.tolist() == [pytest.approx(1.6)]
    # the paper's presets pad only to the largest image (py-faster-rcnn), not to a multiple of 16
    assert batch.tensor.shape == (1, 3, 600, 800) and batch.original_sizes.tolist() == [[375, 500]]


# ------------------------------------------------------------------ order and loading


def _order(sampler, n):
    out = []
    for batch in sampler:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_order_is_deterministic_by_seed_and_resumable():
    make = lambda seed, start=0: ResumableBatchSampler(10, batch_size=3, shuffle=True, seed=seed,
                                                      infinite=True, start_iteration=start)
    full = _order(make(7), 12)  # 4 batches per epoch (3, 3, 3, 1), 3 epochs
    assert full == _order(make(7), 12)
    assert full != _order(make(8), 12)
    assert [len(b) for b in full[:4]] == [3, 3, 3, 1]
    for epoch in range(3):
        entries = [e for b in full[4 * epoch:4 * epoch + 4] for e, ep in b if ep == epoch]
        assert sorted(entries) == list(range(10))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7 + 1)).tolist()
    assert [e for b in full[4:8] for e, _ in b] == perm
    for k in (1, 4, 6, 11):
        assert _order(make(7, k), 12 - k) == full[k:]


def test_processes_share_each_global_batch():
    one = list(ResumableBatchSampler(7, batch_size=4, shuffle=True, seed=1, infinite=False))
    ranks = [list(ResumableBatchSampler(7, batch_size=2, shuffle=True, seed=1, infinite=False, rank=r,
                                        world_size=2)) for r in (0, 1)]
    assert ranks[0][0] + ranks[1][0] == one[0]
    assert ranks[0][1] == one[1][:2]
    assert ranks[1][1] == [one[1][2], one[0][0]]  # the last global batch is filled from the start


def test_finite_sequential_order():
    sampler = ResumableBatchSampler(5, batch_size=2, shuffle=False, seed=0, infinite=False, start_iteration=1)
    assert list(sampler) == [[(2, 0), (3, 0)], [(4, 0)]] and len(sampler) == 2


def _tiny_manifest(tmp_path: Path, count: int) -> Manifest:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(count):
        h, w = 24 + 4 * i, 40 - 2 * i
        _save(tmp_path / f"{i}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        recs.append(ImageRecord(str(i), f"{i}.png", w, h, [[1.0, 2.0, 9.0, 12.0]], [i % 3], [False]))
    return _manifest(tmp_path, recs)


def _stream(loader, n):
    out = []
    for batch, targets in loader:
        out.append((batch.indices.tolist(), batch.flipped.tolist(), batch.image_sizes.tolist(),
                    [b.tolist() for b in targets.boxes]))
        if len(out) == n:
            break
    return out


def test_loader_resumes_mid_epoch_with_multi_scale(tmp_path):
    cfg = _cfg(train_scales=(24, 48), max_size=1000)
    ds = DetectionDataset(_tiny_manifest(tmp_path, 5), cfg, train=True)  # 10 entries with flips
    loader = lambda start: make_loader(ds, batch_size=4, shuffle=True, seed=3, num_workers=0,
                                       start_iteration=start)
    full = _stream(loader(0), 8)  # 3 batches per epoch: crosses two epoch boundaries
    assert full[5:] == _stream(loader(5), 3)
    assert full == _stream(loader(0), 8)
    mins = {min(size) for batch in full for size in batch[2]}
    assert mins == {24, 48}  # both scales drawn


def test_inference_loader_sees_each_image_once_unflipped_with_workers(tmp_path):
    cfg = _cfg(test_scale=24)
    cfg = replace(cfg, input=replace(cfg.input, size_divisor=16))
    ds = DetectionDataset(_tiny_manifest(tmp_path, 5), cfg, train=False)
    loader = make_loader(ds, batch_size=2, shuffle=False, seed=0, num_workers=2)
    assert len(loader) == 3
    batches = list(loader)
    assert [b.indices.tolist() for b, _ in batches] == [[0, 1], [2, 3], [4]]
    assert not any(b.flipped.any() for b, _ in batches)
    assert all(b.tensor.shape[-1] % 16 == 0 and b.tensor.shape[-2] % 16 == 0 for b, _ in batches)


def test_image_files_in_workers_come_in_order_as_without(tmp_path):
    cfg = _cfg(test_scale=24)
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    for i, path in enumerate(paths):
        _save(path, np.random.default_rng(i).integers(0, 255, (20 + 3 * i, 30, 3), dtype=np.uint8))
    ds = ImageFilesDataset(paths, cfg.input)
    runs = [list(inference_loader(ds, [[3, 1], [0, 4], [2]], size_divisor=16, num_workers=w, pin_memory=False))
            for w in (0, 2)]
    for plain, worked in zip(*runs):
        assert plain.ids == worked.ids and torch.equal(plain.tensor, worked.tensor)
        assert torch.equal(plain.original_sizes, worked.original_sizes)
    assert [b.indices.tolist() for b in runs[1]] == [[3, 1], [0, 4], [2]]
    assert runs[1][0].ids == [str(paths[3]), str(paths[1])] and runs[1][0].original_sizes.tolist()[0] == [29, 30]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_item_error_in_a_worker_is_raised_as_it_is(tmp_path, workers):
    """DataLoader would re-raise it as "Caught DataError in DataLoader worker process 0" and a traceback."""
    good = _red_square_image(tmp_path)
    (tmp_path / "bad.png").write_text("not an image")
    ds = ImageFilesDataset([good, tmp_path / "bad.png", good], _cfg().input)
    with pytest.raises(DataError) as caught:
        list(inference_loader(ds, [[0], [1, 2], [2]], size_divisor=16, num_workers=workers, pin_memory=False))
    assert str(caught.value).startswith(f"image {tmp_path / 'bad.png'} cannot be decoded (")
    message = str(caught.value)
    assert "\n" not in message and "Caught" not in message and "Traceback" not in message
    rec = ImageRecord("r", good.name, 90, 80, [], [], [])  # the file is 100x80: a training loader's error
    loader = make_loader(DetectionDataset(_manifest(tmp_path, [rec]), _cfg(), train=True), batch_size=1,
                         shuffle=True, seed=0, num_workers=workers)
    with pytest.raises(DataError, match=r"^image r \(.*red.png\) is 100x80 but the manifest says 90x80; .*re-run it$"):
        next(iter(loader))
