"""PNG plots of an evaluation: precision-recall per class, the AP summary, recall against IoU (paper Fig. 2).

matplotlib is optional (``pip install frcnn[plot]``) and imported only when a plot is drawn; figures are
drawn with the Agg canvas directly (no pyplot, no global backend switch) and written atomically.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import FrcnnError
from ..output_paths import short_stem

DPI = 100


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise FrcnnError("plots need matplotlib, which is not installed: `pip install frcnn[plot]` "
                         "(or leave out the plots)") from exc
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def plot_file_name(class_name: str, folder: str | os.PathLike = ".") -> str:
    """``pr_<class>.png`` with characters other than letters, digits, '.', '-' and '_' replaced by '_' (a name too
    long for ``folder``'s file system cut and tagged with a hash: ``output_paths.short_stem``)."""
    return short_stem("pr_" + re.sub(r"[^\w.-]", "_", class_name), len(".png"), folder) + ".png"


def plot_pr_curves(curves: dict, ap: dict[str, float], out_dir: str | os.PathLike) -> list[Path]:
    """One precision-recall PNG per class: ``curves`` as from ``precision_recall`` (class -> (rec, prec,
    npos)), ``ap`` class -> AP. Returns the paths in the order of ``curves``."""
    out_dir = Path(out_dir)
    paths = []
    for name, (rec, prec, npos) in curves.items():
        fig = _figure(5, 4)
        ax = fig.add_subplot()
        value = ap.get(name, float("nan"))
        if npos and len(rec):
            envelope = np.maximum.accumulate(np.asarray(prec)[::-1])[::-1]
            ax.plot(rec, prec, color="tab:blue", linewidth=1, label="precision")
            ax.plot(rec, envelope, color="tab:orange", linewidth=1, linestyle="--", label="envelope")
            ax.legend(loc="upper right", fontsize=8)
        label = "no positives" if not npos else f"AP {value:.3f}"
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"{name}: {label}")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir / plot_file_name(name, out_dir)))
    return paths


def plot_ap_summary(ap: dict[str, float], out_path: str | os.PathLike, *, map_value: float,
                    metric: str = "11point") -> Path:
    """Horizontal bar chart of AP per class with the mAP as a vertical line (NaN classes marked n/a)."""
    names = list(ap)
    values = [0.0 if math.isnan(v) else v for v in ap.values()]
    fig = _figure(7, max(2.5, 0.3 * len(names) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, values, color="tab:blue")
    for i, v in enumerate(ap.values()):
        text = "n/a" if math.isnan(v) else f"{v:.3f}"
        ax.text(min(values[i], 0.9) + 0.01, i, text, va="center", fontsize=8)
    if not math.isnan(map_value):
        ax.axvline(map_value, color="tab:red", linestyle="--", label=f"mAP {map_value:.3f}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel=f"AP ({metric})", title="VOC average precision per class")
    return _save(fig, Path(out_path))


def plot_recall_vs_iou(result: dict, out_path: str | os.PathLike, *, title: str = "Recall vs IoU") -> Path:
    """The paper's Fig. 2: recall against the IoU threshold, one line per number of proposals N.

    ``result`` is :func:`frcnn_cli.evaluate.recall.proposal_recall`'s return value.
    """
    fig = _figure(5, 4)
    ax = fig.add_subplot()
    thresholds = result["iou_thresholds"]
    for n in result["top_ns"]:
        ax.plot(thresholds, result["recall"][n], marker="o", markersize=3,
                label=f"{n} proposals (AR {result['average_recall'][n]:.3f})")
    ax.set(xlim=(min(thresholds, default=0.5), max(thresholds, default=1.0)), ylim=(0, 1.02),
           xlabel="IoU", ylabel="recall", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, Path(out_path))
