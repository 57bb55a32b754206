"""The report in a real browser: headless Chromium renders it offline, its script runs, nothing is logged to
the console, and the screenshot is not blank. Skipped when no Chromium is installed (.ci/run installs
Debian's ``chromium``)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cpu_predictor, tiny_config
from PIL import Image

from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.evaluate.report import write_report
from frcnn_cli.evaluate.voc import detections_by_class, evaluate_detections

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium installed (apt-get install chromium)")
# headless as root on a machine without network: no sandbox, no GPU, no background requests of its own
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
CONSOLE = re.compile(r":CONSOLE[:(]")  # Chromium's log line of a console message, uncaught errors included


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture(scope="module")
def report(synth_set, tmp_path_factory) -> Path:
    """The report of a random tiny model on the synthetic test set (4 images)."""
    from frcnn_cli.inference import predict_manifest
    from frcnn_cli.model.detector import FasterRCNN

    manifest = read_manifest(synth_set[1])
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(), list(manifest.classes))
    detections, proposals = predict_manifest(cpu_predictor(model), manifest, proposals=True)
    voc = evaluate_detections(detections_by_class(detections, len(manifest.classes)), manifest)
    return write_report(tmp_path_factory.mktemp("report") / "report.html", manifest=manifest, detections=detections,
                        voc_result=voc, proposals=proposals)


def test_console_messages_are_caught(tmp_path):
    """The check below would see a broken script: Chromium logs an uncaught error as a console line."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>x'
                    "<script>undefinedFunction();</script></body></html>", encoding="utf-8")
    result = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert any("undefinedFunction is not defined" in line for line in _console_lines(result.stderr)), result.stderr


def test_report_runs_its_script_without_console_messages(report, tmp_path):
    result = _chromium(report, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'data-js="ready"' in result.stdout  # the sorting script ran to its end,
    assert re.search(r'<th[^>]*tabindex="0"', result.stdout)  # made the column heads keyboard-sortable
    assert not re.search(r"<th[^>]*aria-sort", result.stdout)  # and sorted nothing by itself
    assert _console_lines(result.stderr) == []


def test_report_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    result = _chromium(report, tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={shot}")
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10  # text, tables and charts, not one colour
    assert (pixels < 100).mean() > 0.005  # dark ink: text was drawn
    assert _console_lines(result.stderr) == []


def test_clicking_a_column_head_sorts_the_table(tmp_path):
    from frcnn_cli.evaluate.report_page import SECTIONS, page
    from frcnn_cli.evaluate.report_sections import class_table

    nan = float("nan")
    rows = [{"name": name, "ap": ap, "npos": 1, "detections": 1, "tp": 1, "fp": 0, "f1": nan, "precision": nan,
             "recall": nan, "score": nan} for name, ap in (("b", 0.5), ("d", nan), ("a", 0.9), ("c", 0.1))]
    sections = {sid: "" for sid, _ in SECTIONS}
    sections["classes"] = class_table(rows, map_value=0.5, coco_column=None)
    clicks = """<script>
      var heads = document.querySelectorAll("#class-table thead th"), order = [];
      function names() { return Array.prototype.map.call(document.querySelectorAll("#class-table tbody th"),
                                                         function (th) { return th.textContent; }).join(""); }
      heads[1].click(); order.push(names()); heads[1].click(); order.push(names());
      heads[0].click(); order.push(names());
      document.body.setAttribute("data-order", order.join(" "));
    </script></body>"""
    html = page("sorting", sections).replace("</body>", clicks)
    path = tmp_path / "sort.html"
    path.write_text(html, encoding="utf-8")
    result = _chromium(path, tmp_path / "profile", "--dump-dom")
    # AP descending (n/a last), then ascending, then the class names descending
    assert 'data-order="abcd dcba dcba"' in result.stdout, result.stdout[-500:]
    assert _console_lines(result.stderr) == []
