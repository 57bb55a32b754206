"""PNG plots: per-class PR curves, the AP summary, recall vs IoU; and the message without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from frcnn_cli.errors import FrcnnError
from frcnn_cli.evaluate.plots import plot_ap_summary, plot_file_name, plot_pr_curves, plot_recall_vs_iou

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    from matplotlib.image import imread

    height, width = imread(path).shape[:2]
    return width, height


def test_pr_curves_and_summary(tmp_path):
    pytest.importorskip("matplotlib")
    curves = {"cat": (np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), 2),
              "traffic/light": (np.zeros(0), np.zeros(0), 1),
              "fish": (np.zeros(0), np.zeros(0), 0)}
    ap = {"cat": 0.8333, "traffic/light": 0.0, "fish": float("nan")}
    paths = plot_pr_curves(curves, ap, tmp_path)
    assert [p.name for p in paths] == ["pr_cat.png", "pr_traffic_light.png", "pr_fish.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG
        assert _png_size(p) == (500, 400)  # 5 x 4 inches at 100 dpi
    summary = plot_ap_summary(ap, tmp_path / "summary.png", map_value=0.41665, metric="area")
    assert summary.read_bytes()[:8] == PNG and _png_size(summary)[0] == 700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pr_cat.png", "pr_fish.png", "pr_traffic_light.png",
                                                          "summary.png"]  # no temporary files left


def test_recall_vs_iou_plot(tmp_path):
    pytest.importorskip("matplotlib")
    result = {"iou_thresholds": [0.5, 0.75, 0.95], "top_ns": [100, 300],
              "recall": {100: [0.9, 0.5, 0.1], 300: [0.95, 0.6, 0.12]},
              "average_recall": {100: 0.5, 300: 0.557}}
    path = plot_recall_vs_iou(result, tmp_path / "sub" / "recall.png")
    assert path.read_bytes()[:8] == PNG and _png_size(path) == (500, 400)


def test_file_names_are_safe():
    assert plot_file_name("a b/c:d") == "pr_a_b_c_d.png"
    assert plot_file_name("pottedplant") == "pr_pottedplant.png"


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(FrcnnError, match=r"pip install frcnn\[plot\]"):
        plot_ap_summary({"cat": 0.5}, tmp_path / "s.png", map_value=0.5)
    assert not (tmp_path / "s.png").exists()
