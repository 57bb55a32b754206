"""Augmentation of training images (``input.scale_jitter``, ``input.photometric``): boxes follow the pixels
exactly and stay inside the image, the colour jitter is torchvision's ``ColorJitter`` arithmetic, every draw
is fixed by (seed, epoch, entry), and validation and test images are never augmented."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_cli.config import get_preset
from frcnn_cli.data.augment import colour_factors, jitter_colours, training_scale
from frcnn_cli.data.images import DetectionDataset, compute_scale, resized_size
from frcnn_cli.data.manifest import ImageRecord, Manifest


def _input(**changes):
    return replace(get_preset("vgg16").input, **changes)


def _cfg(**input_changes):
    cfg = get_preset("vgg16")
    return replace(cfg, input=replace(cfg.input, **input_changes))


def _border_set(tmp_path: Path) -> Manifest:
    """One 101 x 77 image with a box inside it and one touching its right and bottom borders."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (77, 101, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    rec = ImageRecord("odd", "odd.png", 101, 77, [[10.0, 20.0, 30.0, 40.0], [60.0, 41.0, 101.0, 77.0]], [0, 0],
                      [False, False])
    return Manifest(name="t", classes=["a"], root=str(tmp_path), images=[rec])


def test_scale_jitter_draws_any_shorter_side_between_the_train_scales_fixed_by_seed_epoch_and_entry():
    jitter = _input(train_scales=(160, 224), scale_jitter=True)
    draws = [training_scale(jitter, 3, epoch, entry) for epoch in range(5) for entry in range(20)]
    assert all(160 <= d <= 224 for d in draws) and len(set(draws)) == len(draws)  # a continuum, not two values
    assert training_scale(jitter, 3, 2, 7) == training_scale(jitter, 3, 2, 7)
    assert training_scale(jitter, 4, 2, 7) != training_scale(jitter, 3, 2, 7)
    listed = _input(train_scales=(160, 224))  # without the jitter: one of the listed scales, as always
    expected = (160, 224)[int(np.random.default_rng([3, 2, 7]).integers(2))]
    assert training_scale(listed, 3, 2, 7) == expected
    assert training_scale(_input(train_scales=(600,), scale_jitter=True), 3, 2, 7) == 600


def test_jittered_boxes_are_the_boxes_times_the_scale_flipped_exactly_and_inside_the_image(tmp_path):
    manifest = _border_set(tmp_path)
    ds = DetectionDataset(manifest, _cfg(train_scales=(50, 90), scale_jitter=True, max_size=1000), train=True)
    outside = 0
    for epoch in range(12):
        for entry, flipped in ((0, False), (1, True)):
            item = ds[(entry, epoch)]
            scale = compute_scale(77, 101, ds.target_size(entry, epoch), 1000)
            h, w = resized_size(77, 101, scale)
            assert item["scale"] == scale and tuple(item["image"].shape[-2:]) == (h, w)
            boxes = torch.tensor(manifest.images[0].boxes)
            if flipped:
                boxes = torch.stack([101 - boxes[:, 2], boxes[:, 1], 101 - boxes[:, 0], boxes[:, 3]], 1)
            expected = boxes * scale
            outside += int((expected[:, 2:] > torch.tensor([w, h])).any())
            expected = torch.minimum(expected, torch.tensor([w, h, w, h], dtype=torch.float32))
            assert torch.equal(item["boxes"], expected)
            b = item["boxes"]
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert outside > 0  # the border box did reach past a rounded-down image: the clip was needed


def test_colour_factors_lie_within_one_plus_minus_the_strength_and_are_fixed_by_seed_epoch_and_entry():
    cfg = _input(photometric=0.3)
    factors = [colour_factors(cfg, 3, epoch, entry) for epoch in range(4) for entry in range(25)]
    assert all(0.7 <= f <= 1.3 for triple in factors for f in triple)
    assert colour_factors(cfg, 3, 1, 2) == colour_factors(cfg, 3, 1, 2) != colour_factors(cfg, 3, 1, 3)
    assert colour_factors(_input(), 3, 1, 2) is None


def test_colour_jitter_is_torchvisions_brightness_contrast_saturation_on_0_255_pixels():
    from torchvision.transforms import functional as tvf

    image = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(0))
    b, c, s = 1.25, 0.8, 1.3
    expected = tvf.adjust_saturation(tvf.adjust_contrast(tvf.adjust_brightness(image, b), c), s) * 255
    assert torch.allclose(jitter_colours(image * 255, (b, c, s)), expected, atol=1e-3)
    assert torch.allclose(jitter_colours(image * 255, (1.0, 1.0, 1.0)), image * 255, atol=1e-4)
    gray = jitter_colours(image * 255, (1.0, 1.0, 0.0))  # no saturation: every channel the luma
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])


def test_a_two_pixel_image_by_hand():
    # pixels (R, G, B) = (100, 200, 50) and (0, 0, 0); brightness x2 clamps G at 255
    image = torch.tensor([[[100.0, 0.0]], [[200.0, 0.0]], [[50.0, 0.0]]])
    bright = jitter_colours(image, (2.0, 1.0, 1.0))
    assert bright[:, 0, 0].tolist() == [200.0, 255.0, 100.0]
    luma = 0.2989 * 200 + 0.587 * 255 + 0.114 * 100  # of the brightened first pixel; the second stays 0
    flat = jitter_colours(image, (2.0, 0.0, 1.0))  # no contrast: every pixel the mean luma
    assert flat.flatten().tolist() == pytest.approx([luma / 2] * 6, abs=1e-3)


def test_validation_and_test_images_are_never_augmented(tmp_path):
    manifest = _border_set(tmp_path)
    plain = _cfg(train_scales=(77,), max_size=1000)
    augmented = _cfg(train_scales=(50, 90), scale_jitter=True, photometric=0.4, max_size=1000, test_scale=77)
    train_item = DetectionDataset(manifest, augmented, train=True)[(0, 1)]
    reference = DetectionDataset(manifest, plain, train=True)[(0, 1)]
    assert train_item["image"].shape != reference["image"].shape or not torch.equal(train_item["image"],
                                                                                     reference["image"])
    test_item = DetectionDataset(manifest, augmented, train=False)[0]
    assert test_item["scale"] == 1.0 and torch.equal(test_item["image"], reference["image"])


def test_the_paper_presets_augment_nothing_and_tiny_jitters():
    for name in ("vgg16", "zf", "resnet50", "resnet101"):
        cfg = get_preset(name).input
        assert (cfg.scale_jitter, cfg.photometric, cfg.train_scales) == (False, 0.0, (600,))
    tiny = get_preset("tiny").input
    assert tiny.scale_jitter and tiny.photometric > 0 and min(tiny.train_scales) < tiny.test_scale < max(
        tiny.train_scales)
