"""One unreadable photo no longer aborts a ``detect`` run: the readable ones are detected and written, the
unreadable ones are listed at the end (one ``Error:`` line, exit 1) and in ``detections.json`` as
``{"image", "error", "detections": []}`` (docs/formats.md)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import cpu_predictor, truncate_file
from PIL import Image

from frcnn_cli.cli.main import cli
from frcnn_cli.detect import detect_images, unreadable


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def photos(tmp_path):
    """``a.png`` (fine), ``b.jpg`` (cut in half), ``c.png`` (fine), ``d.png`` (text): in this order."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder / "a.png")
    Image.new("RGB", (80, 60), (200, 100, 30)).save(folder / "b.jpg", quality=95)
    truncate_file(folder / "b.jpg", 0.5)
    Image.new("RGB", (50, 40), (30, 30, 200)).save(folder / "c.png")
    (folder / "d.png").write_text("not an image")
    return folder


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_the_readable_photos_are_detected_and_the_others_listed(photos, tmp_path, tiny_checkpoint, workers,
                                                               batch_size, assert_clean_error):
    out = tmp_path / "out"
    result = _run("detect", photos, "--model", tiny_checkpoint(), "--out", out, "--json", "--score-thresh", "0",
                  "--batch-size", batch_size, "--set", f"runtime.num_workers={workers}", "--device", "cpu")
    message = assert_clean_error(result, "2 of 4 images could not be read", f"first: image {photos / 'b.jpg'} cannot "
                                 "be decoded", f"in {out / 'detections.json'} they have an \"error\"",
                                 "the other images were detected")
    assert result.exit_code == 1 and "run detect again" in message
    written = json.loads((out / "detections.json").read_text())
    assert json.loads(result.stdout) == written  # --json prints the same list, errors included
    assert [e["image"] for e in written] == [str(photos / n) for n in ("a.png", "b.jpg", "c.png", "d.png")]
    good, bad = [written[0], written[2]], [written[1], written[3]]
    assert all("error" not in e and e["detections"] and (e["width"], e["height"]) in ((40, 30), (50, 40))
               for e in good)
    assert [sorted(e) for e in bad] == [["detections", "error", "image"]] * 2
    assert bad[0]["error"].startswith(f"image {photos / 'b.jpg'} cannot be decoded")
    assert bad[1]["error"].startswith(f"image {photos / 'd.png'} cannot be decoded") and bad[1]["detections"] == []
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "detections.json"]


def test_the_detections_of_the_readable_photos_are_those_of_a_run_without_the_others(photos, tiny_checkpoint):
    from frcnn_cli.model.checkpoint import load_model

    predictor = cpu_predictor(load_model(tiny_checkpoint(), "cpu")[0])
    seen = []
    mixed = detect_images(predictor, sorted(photos.iterdir()), batch_size=2, score_thresh=0.0,
                          progress=lambda done, total: seen.append((done, total)))
    # each readable photo was left alone in its batch of 2: as a run of batches of 1
    alone = detect_images(predictor, [photos / "a.png", photos / "c.png"], batch_size=1, score_thresh=0.0)
    assert [mixed[0], mixed[2]] == alone
    assert [r["image"] for r in unreadable(mixed)] == [str(photos / "b.jpg"), str(photos / "d.png")]
    assert seen[-1] == (4, 4)  # the count reaches the end though the last photo is unreadable


def test_a_run_where_no_photo_is_readable_still_writes_the_list(photos, tmp_path, tiny_checkpoint,
                                                                assert_clean_error):
    out = tmp_path / "out"
    result = _run("detect", photos / "b.jpg", photos / "d.png", "--model", tiny_checkpoint(), "--out", out,
                  "--set", "runtime.num_workers=0", "--device", "cpu")
    assert_clean_error(result, "2 of 2 images could not be read")
    assert [e["image"] for e in json.loads((out / "detections.json").read_text())] == [
        str(photos / "b.jpg"), str(photos / "d.png")]
    assert [p.name for p in out.iterdir()] == ["detections.json"]
