"""Odd but valid input works end to end through the command line: 0-based VOC boxes, boxes on the border,
every colour mode PIL decodes, images without objects, difficult-only images, a very large image, and file
names with spaces and non-ASCII letters.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import ImageRecord, Manifest, read_manifest, write_manifest
from frcnn_cli.model.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # faster on a busy 2-core machine

TINY = ["--config", "tiny", "--set", "input.train_scales=64", "--set", "input.test_scale=64",
        "--set", "input.max_size=96", "--set", "solver.num_workers=0", "--device", "cpu", "--init", "none"]


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _xml(objects, size) -> str:
    body = "".join(f"<object><name>{name}</name><difficult>{int(hard)}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for name, b, hard in objects)
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>"


def _odd_images(images: Path) -> dict[str, tuple[str, tuple[int, int], list]]:
    """stem -> (file name, (width, height), objects): one image per colour mode, each with an odd annotation."""
    yy, xx = np.mgrid[0:44, 0:60]
    palette = Image.new("P", (64, 48), 3)
    palette.putpalette([(i * 37) % 256 for i in range(768)])
    palette.info["transparency"] = 3
    specs = {
        "gray": ("gray.png", Image.new("L", (48, 40), 90), [("cat", (0, 0, 20, 20), False)]),  # 0-based box
        "rgba": ("rgba.png", Image.new("RGBA", (50, 40), (200, 30, 30, 100)),
                 [("dog", (1, 1, 50, 40), False)]),  # exactly the whole image
        "palette": ("palette.png", palette, []),  # no objects
        "sixteen": ("sixteen.png", Image.fromarray(((yy * 60 + xx) * 24).astype(np.uint16)),
                    [("cat", (5, 5, 30, 30), True), ("dog", (10, 10, 20, 40), True)]),  # difficult only
        "cmyk": ("cmyk.jpg", Image.new("CMYK", (56, 42), (0, 200, 200, 20)), [("dog", (3, 4, 40, 30), False)]),
        "la": ("la.png", Image.new("LA", (40, 40), (150, 200)), [("cat", (20, 1, 40, 12), False)]),  # right edge
        "name": ("été photo ünï 1.png", Image.new("RGB", (64, 48), (10, 100, 200)), [("cat", (8, 8, 40, 40), False)]),
    }
    out = {}
    for stem, (name, image, objects) in specs.items():
        path = images / ("photos d'été" if stem == "name" else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        out[Path(name).stem] = (str(path), image.size, objects)
    return out


@pytest.fixture()
def odd_folder(tmp_path):
    images, xml = tmp_path / "my images", tmp_path / "annotations ü"
    xml.mkdir()
    specs = _odd_images(images)
    for stem, (_, size, objects) in specs.items():
        (xml / f"{stem}.xml").write_text(_xml(objects, size), encoding="utf-8")
    return images, xml, specs


def _four_steps(data: Path, work: Path) -> None:
    """The paper's four steps by hand, 2 iterations each, ending in ``work/final.pt``."""
    _run("train-rpn", "--data", data, "--out", work / "rpn1.pt", *TINY, "--iters", "2")
    _run("dump-proposals", "--model", work / "rpn1.pt", "--data", data, "--out", work / "props1.h5")
    _run("train-detector", "--data", data, "--proposals", work / "props1.h5", "--out", work / "det1.pt", *TINY,
         "--iters", "2")
    _run("train-rpn", "--data", data, "--out", work / "rpn2.pt", "--init", work / "det1.pt", "--freeze-shared",
         "--iters", "2", "--device", "cpu")
    _run("dump-proposals", "--model", work / "rpn2.pt", "--data", data, "--out", work / "props2.h5")
    _run("train-detector", "--data", data, "--proposals", work / "props2.h5", "--out", work / "final.pt",
         "--init", work / "rpn2.pt", "--freeze-shared", "--iters", "2", "--device", "cpu")


def test_odd_images_prepare_train_evaluate_and_detect(odd_folder, tmp_path):
    images, xml, specs = odd_folder
    work = tmp_path / "work dir"
    manifest_path = work / "odd set.json"
    prepared = _run("prepare", "folder", "--images", images, "--annotations", xml, "--out", manifest_path)
    assert "0-based coordinates? VOC's are 1-based" in prepared.stderr  # the gray image's xmin=0, clipped
    m = read_manifest(manifest_path)
    recs = {rec.id: rec for rec in m.images}
    assert m.classes == ["cat", "dog"] and len(recs) == 7
    assert recs["gray"].boxes == [[0.0, 0.0, 20.0, 20.0]]  # -1 clipped to 0, never wrapped to the far side
    assert recs["rgba"].boxes == [[0.0, 0.0, 50.0, 40.0]]  # touching all four borders, kept exactly
    assert recs["la"].boxes == [[19.0, 0.0, 40.0, 12.0]]
    assert recs["palette"].boxes == [] and recs["sixteen"].difficult == [True, True]
    assert (recs["sixteen"].width, recs["sixteen"].height) == (60, 44)
    assert recs["été photo ünï 1"].path == "photos d'été/été photo ünï 1.png"

    _four_steps(manifest_path, work)
    result = _run("eval", "--model", work / "final.pt", "--data", manifest_path, "--json")
    summary = json.loads(result.stdout)
    assert set(summary["ap"]) == {"cat", "dog"} and (summary["map"] is None or 0 <= summary["map"] <= 1)

    out = work / "sortie à voir"
    result = _run("detect", images, "--model", work / "final.pt", "--out", out, "--json", "--score-thresh", "0")
    found = {Path(r["image"]).stem: r for r in json.loads(result.stdout)}
    assert set(found) == set(specs)
    for stem, (_, (w, h), _) in specs.items():
        assert (found[stem]["width"], found[stem]["height"]) == (w, h)
        for det in found[stem]["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    drawn = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "photos d'été/été photo ünï 1.png" in drawn and "detections.json" in drawn
    assert "cmyk.jpg" in drawn and len(drawn) == 8
    assert json.loads((out / "detections.json").read_text(encoding="utf-8")) == json.loads(result.stdout)


def _difficult_only_manifest(synth_set, path: Path) -> Path:
    """The synthetic training images with every object marked difficult (no foreground at all)."""
    m = read_manifest(synth_set[0])
    images = [ImageRecord(rec.id, str(Path(m.root) / rec.path), rec.width, rec.height, rec.boxes, rec.labels,
                          [True] * len(rec.boxes)) for rec in m.images]
    write_manifest(path, Manifest("hard-only", m.classes, m.root, images))
    return path


def _losses(metrics: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r for r in rows if r["stage"].startswith(stage)]


@pytest.fixture()
def batches_without_foreground(monkeypatch):
    """Training past the set-level check: a set without a non-difficult box is refused at the start
    (tests/test_train_guidance.py), but a batch of such images happens in any set, and its losses must stay
    finite; these tests train on nothing but such batches."""
    from frcnn_cli.train import stage

    monkeypatch.setattr(stage, "check_has_objects", lambda manifest, path: None)


def test_training_on_difficult_only_images_has_zero_foreground_and_finite_losses(synth_set, tmp_path,
                                                                                batches_without_foreground):
    manifest = _difficult_only_manifest(synth_set, tmp_path / "hard.json")
    work = tmp_path / "w"
    _run("train-rpn", "--data", manifest, "--out", work / "rpn.pt", *TINY, "--iters", "2")
    _run("dump-proposals", "--model", work / "rpn.pt", "--data", manifest, "--out", work / "props.h5")
    _run("train-detector", "--data", manifest, "--proposals", work / "props.h5", "--out", work / "det.pt", *TINY,
         "--iters", "2")
    rpn, det = _losses(work / "metrics.jsonl", "rpn"), _losses(work / "metrics.jsonl", "detector")
    assert rpn and det
    assert rpn[-1]["loss_rpn_box"] == 0.0 and math.isfinite(rpn[-1]["loss_rpn_cls"])  # negatives only
    assert det[-1]["loss_box"] == 0.0 and math.isfinite(det[-1]["loss_cls"])  # background RoIs only
    for name in ("rpn.pt", "det.pt"):
        ckpt = read_checkpoint(work / name)
        assert all(torch.isfinite(t).all() for part in ckpt["parts"].values() for t in part.values()
                   if t.is_floating_point())


def test_images_without_any_object_train(synth_set, tmp_path, batches_without_foreground):
    m = read_manifest(synth_set[0])
    images = [ImageRecord(rec.id, str(Path(m.root) / rec.path), rec.width, rec.height, [], [], [])
              for rec in m.images[:4]]
    manifest = tmp_path / "empty.json"
    write_manifest(manifest, Manifest("nothing", m.classes, m.root, images))
    _run("train-rpn", "--data", manifest, "--out", tmp_path / "rpn.pt", *TINY, "--iters", "2")
    rows = _losses(tmp_path / "metrics.jsonl", "rpn")
    assert rows[-1]["loss_rpn_box"] == 0.0 and math.isfinite(rows[-1]["loss_rpn_cls"])


LARGE = """
import json, resource, sys
from frcnn_cli.cli.main import cli
from frcnn_cli.model.checkpoint import load_model
load_model(sys.argv[1])  # imports and the model's own memory before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    cli.main(["detect", sys.argv[2], "--model", sys.argv[1], "--json", "--score-thresh", "0"], standalone_mode=False)
finally:
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(f"PEAK_GROWTH_MB {growth:.0f}", file=sys.stderr)
"""


def test_a_very_large_image_is_rescaled_without_exhausting_memory(tmp_path, tiny_checkpoint):
    """6000x4000 (24 Mpixel): decoded once as uint8 (72 MB), detected at the test scale (1000x667)."""
    big = tmp_path / "big flat.png"
    Image.new("RGB", (6000, 4000), (30, 120, 200)).save(big, compress_level=1)
    model = tiny_checkpoint("large.pt", overrides=("input.test_scale=600", "input.max_size=1000"))
    proc = subprocess.run([sys.executable, "-c", LARGE, str(model), str(big)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert (result["width"], result["height"]) == (6000, 4000)
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 6000 and 0 <= y1 <= y2 <= 4000
    growth = float(proc.stderr.split("PEAK_GROWTH_MB")[1].split()[0])
    # the decoded image is 72 MB; its float copy at full size 288 MB. Far less than this means the
    # image was scaled down before anything big was made from it.
    assert growth < 600, proc.stderr
