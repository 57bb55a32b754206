"""Bilinear resizing (frcnn_cli.data.resize) against the former pipeline, ``interpolate`` of the whole
float image, kept here as the reference: the same values to float rounding, on any thread count, and large
photos shrunk without a whole float copy.

"The same values to float rounding" is asserted as what matters for a detector, not as ATen's bit pattern:
ATen computes the source coordinate and the two weights of a band of rows in another order than of the
whole image, and versions differ in which products they fuse (torch 2.14.1: 689 of 159,552 values of one
case differ, by up to 2.1e-4). A weight that moves by one float32 rounding of a coordinate below 2048 px
(1.2e-4) moves a pixel by at most 255 x 1.2e-4 = 0.03 grey levels. So every value must be within
``PIXEL_TOLERANCE`` = 1/16 grey level of the reference: what cv2 (py-faster-rcnn's resize) itself errs by
in rounding its weights to 1/2048 (up to 255/4096 grey level), a sixteenth of the input's own quantisation;
a wrong sampling grid or band seam is off by whole grey levels. Thread counts must still agree bit for bit.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from frcnn_cli.config import get_preset
from frcnn_cli.data import resize
from frcnn_cli.data.images import compute_scale, normalize, prepare_image, resized_size
from frcnn_cli.data.resize import resize_image

# (H, W) -> (h, w): upscaling (VOC at 600, the tests' 64 px), a slight shrink, three shrinks by rows (a
# photo, a panorama, odd sizes), and an output small enough for ATen's other kernel
CASES = [((75, 100), (120, 160)), ((48, 64), (64, 85)), ((200, 300), (120, 180)), ((1200, 1800), (300, 450)),
         ((150, 2000), (24, 320)), ((901, 1299), (192, 277)), ((7, 5), (3, 2))]


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


PIXEL_TOLERANCE = 1 / 16  # grey levels (pixel values 0..255): see the module docstring


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)


def _reference(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The former resize: the whole image to float, then interpolate (on 2 threads: ATen's generic kernel)."""
    with _threads(2):
        return F.interpolate(image.float()[None], size=size, mode="bilinear", align_corners=False,
                             antialias=False)[0]


def _reference_prepare(image: torch.Tensor, scale: float, input_cfg) -> torch.Tensor:
    height, width = image.shape[-2:]
    size = resized_size(height, width, scale)
    x = image.float() if size == (height, width) else _reference(image, size)
    return normalize(x, input_cfg)


@pytest.mark.parametrize("source, size", CASES)
def test_resize_equals_interpolating_the_float_image(source, size):
    image = _image(*source)
    got = resize_image(image, size)
    assert got.dtype == torch.float32 and got.shape == (3, *size)
    torch.testing.assert_close(got, _reference(image, size), rtol=0, atol=PIXEL_TOLERANCE)


@pytest.mark.parametrize("source, size", CASES)
def test_resize_does_not_depend_on_the_thread_count(source, size):
    image = _image(*source, seed=1)
    with _threads(1):  # a DataLoader worker
        one = resize_image(image, size)
    with _threads(2):
        two = resize_image(image, size)
    assert torch.equal(one, two)


def test_a_photo_is_prepared_as_before_within_a_sixteenth_of_a_grey_level():
    input_cfg = get_preset("vgg16").input
    image = _image(1500, 2000, seed=2)
    scale = compute_scale(1500, 2000, input_cfg.test_scale, input_cfg.max_size)
    got = prepare_image(image, scale, input_cfg)
    assert got.shape == (3, 600, 800)
    grey_level = input_cfg.pixel_range / 255 / min(input_cfg.pixel_std)  # after normalisation
    assert (got - _reference_prepare(image, scale, input_cfg)).abs().max() <= PIXEL_TOLERANCE * grey_level


def test_a_large_shrink_converts_only_bands_of_rows_to_float(monkeypatch):
    seen = []
    bilinear = resize._bilinear

    def spy(planes, size):
        seen.append(planes.numel() * planes.element_size())
        return bilinear(planes, size)

    monkeypatch.setattr(resize, "_bilinear", spy)
    monkeypatch.setattr(resize, "_ROW_BAND_BYTES", 310_000)  # 7 output rows (2 x 7 source rows) a band
    image = _image(1200, 1800, seed=3)
    got = resize_image(image, (300, 450))
    assert len(seen) == 43 and max(seen) <= 310_000  # the last band short; never the whole image
    torch.testing.assert_close(got, _reference(image, (300, 450)), rtol=0, atol=PIXEL_TOLERANCE)
