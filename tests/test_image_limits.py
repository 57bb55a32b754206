"""Image sizes at the edges: intact images over Pillow's decompression-bomb limit are read (frcnn's own limit,
``data/decode.py``, is larger and says why it refuses), an image over 65,535 px is named at ``prepare`` with
what to do, and a 1x1 image makes no library warning reach the user."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data import decode
from frcnn_cli.data.images import load_image
from frcnn_cli.errors import DataError


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _xml(path, width, height):
    path.write_text(f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>cat"
                    "</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>1</ymax></bndbox></object>"
                    "</annotation>")


@pytest.fixture()
def pillow_limit_of_1000_pixels(monkeypatch):
    """Pillow's bomb limit scaled down (the real one, 89 Mpx, would take seconds and gigabytes to reach):
    Pillow refuses images over twice it, 2,000 px here."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    return 1000


def test_an_intact_image_over_pillows_limit_is_read(tmp_path, pillow_limit_of_1000_pixels):
    pixels = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)  # 4,800 px: Pillow would call it a bomb
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / "aerial.png")
    with pytest.raises(Image.DecompressionBombError):  # what Pillow alone says
        Image.open(tmp_path / "aerial.png")
    assert torch.equal(load_image(tmp_path / "aerial.png"), pixels)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit_of_1000_pixels  # Pillow's setting is left as it was


def test_prepare_reads_an_image_over_pillows_limit(tmp_path, pillow_limit_of_1000_pixels):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "xml").mkdir()
    Image.new("RGB", (80, 60)).save(tmp_path / "imgs" / "big.png")
    _xml(tmp_path / "xml" / "big.xml", 80, 60)
    result = _run("prepare", "folder", "--images", tmp_path / "imgs", "--annotations", tmp_path / "xml", "--out",
                  tmp_path / "m.json")
    assert result.exit_code == 0, result.output


def test_an_image_over_frcnns_pixel_limit_says_why_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_PIXELS", 1000)
    Image.new("RGB", (50, 40)).save(tmp_path / "huge.png")
    with pytest.raises(DataError, match=r"huge\.png is 50x40 px \(0 Mpx\), over frcnn's limit of 0 Mpx .*; shrink it"):
        load_image(tmp_path / "huge.png")


def test_an_image_wider_than_65535_px_is_named_at_prepare_with_what_to_do(tmp_path, assert_clean_error):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "xml").mkdir()
    Image.new("L", (70_000, 1)).save(tmp_path / "imgs" / "strip.png")  # 70 KB of pixels: cheap
    _xml(tmp_path / "xml" / "strip.xml", 70_000, 1)
    out = tmp_path / "m.json"
    result = _run("prepare", "folder", "--images", tmp_path / "imgs", "--annotations", tmp_path / "xml", "--out", out)
    message = assert_clean_error(result, f"image {tmp_path / 'imgs' / 'strip.png'} is 70000x1 px, over frcnn's "
                                 "limit of 65,535 px a side", "shrink it", "run frcnn prepare again")
    assert "manifest" not in message and not out.exists()
    with pytest.raises(DataError, match="over frcnn's limit of 65,535 px a side; shrink it"):
        load_image(tmp_path / "imgs" / "strip.png")


def test_a_1x1_image_is_detected_without_any_warning(tmp_path, tiny_checkpoint):
    """Every warning a user would see made an error (``-W error``, less the deprecation warnings Python hides
    outside ``__main__``): PyTorch's "non-writable NumPy array" UserWarning of a 1x1 image was one."""
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "one.png")
    model = tiny_checkpoint()
    warnings = ["-W", "error", "-W", "ignore::DeprecationWarning", "-W", "ignore::PendingDeprecationWarning"]
    proc = subprocess.run([sys.executable, *warnings, "-m", "frcnn_cli", "detect", str(tmp_path / "one.png"),
                           "--model", str(model), "--set", "runtime.num_workers=0", "--device", "cpu", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "warn" not in proc.stderr.lower(), proc.stderr
    assert load_image(tmp_path / "one.png").numpy().flags.writeable
