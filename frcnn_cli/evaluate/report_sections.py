"""The report's sections as HTML fragments: per-class table, precision-recall curves, proposal recall, error
breakdown and the confusion table. Every name from a manifest is escaped; numbers sort by ``data-v``."""

from __future__ import annotations

import math
from html import escape

import numpy as np

from .charts import Series, line_chart, stacked_bars
from .error_analysis import FP_KINDS
from .error_fixes import FIXES, SUMMARY_FIXES

KIND_COLOURS = {"localisation": "#f58231", "confusion": "#911eb4", "duplicate": "#e6c619", "background": "#808080",
                "both": "#42a5a5", "missed": "#e6194b"}
LINE_COLOURS = ("#0082c8", "#f58231", "#3cb44b", "#911eb4", "#e6194b", "#808080")


def pct(value: float | None, digits: int = 1) -> str:
    """``value`` as a percentage, ``n/a`` for None or NaN."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def _cell(value: float | None, text: str | None = None) -> str:
    """A number cell that sorts by value (n/a sorts below everything)."""
    v = -1.0 if value is None or math.isnan(value) else float(value)
    return f'<td class="num" data-v="{v:.6g}">{escape(text if text is not None else pct(value))}</td>'


def best_f1(rec: np.ndarray, prec: np.ndarray, scores: np.ndarray) -> tuple[float, float, float, float]:
    """``(f1, precision, recall, score)`` at the detection (in score order) with the highest F1; NaNs when
    there is none (no detections, or no positives)."""
    if len(rec) == 0 or np.isnan(rec).all():
        return (math.nan,) * 4
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(prec[i]), float(rec[i]), float(scores[i])


def class_table(rows: list[dict], *, map_value: float, coco_column: dict | None) -> str:
    """The sortable per-class table. ``rows``: per class ``name, ap, npos, detections, tp, fp, f1, precision,
    recall, score``; ``coco_column``: class -> COCO AP, shown when given."""
    head = ["class", "AP", "objects", "detections", "TP", "FP", "best F1", "precision", "recall", "at score"]
    if coco_column is not None:
        head.append("COCO AP")
    out = ['<table class="sortable" id="class-table"><thead><tr>']
    out += [f'<th scope="col" title="click to sort">{h}</th>' for h in head]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cells = [f'<th scope="row" data-v="{escape(r["name"])}">{escape(r["name"])}</th>', _cell(r["ap"])]
        cells += [_cell(r[key], str(r[key])) for key in ("npos", "detections", "tp", "fp")]
        cells += [_cell(r[key]) for key in ("f1", "precision", "recall")]
        cells.append(_cell(r["score"], "n/a" if math.isnan(r["score"]) else f"{r['score']:.2f}"))
        if coco_column is not None:
            cells.append(_cell(coco_column.get(r["name"])))
        out.append("<tr>" + "".join(cells) + "</tr>")
    total = sum(r["npos"] for r in rows)
    out.append(f'</tbody><tfoot><tr><th scope="row">mAP</th><td class="num"><b>{pct(map_value)}</b></td>'
               f'<td class="num">{total}</td><td colspan="{len(head) - 3}"></td></tr></tfoot></table>')
    return "".join(out)


def pr_curves(curves: dict, ap: dict) -> str:
    """One small precision-recall chart per class (precision and its envelope, which the AP integrates)."""
    charts = []
    for name, (rec, prec, npos) in curves.items():
        value = ap.get(name, math.nan)
        title = f"{name}: " + ("no positives" if not npos else f"AP {pct(value)}")
        series = []
        if npos and len(rec):
            envelope = np.maximum.accumulate(np.asarray(prec)[::-1])[::-1]
            series = [Series("precision", rec, prec, LINE_COLOURS[0]),
                      Series("envelope", rec, envelope, LINE_COLOURS[1], dashed=True)]
        charts.append(f"<figure>{line_chart(series, title=title, x_label='recall', y_label='precision')}</figure>")
    return '<div class="charts">' + "".join(charts) + "</div>"


def proposal_recall_html(recall: dict | None) -> str:
    """The paper's Fig. 2 (recall of the top N proposals against the IoU) and the average recalls."""
    if recall is None:
        return ('<p class="note">Not in this report: the evaluation did not keep the proposals of its forward '
                "passes. <code>frcnn eval --proposals P.h5</code> gives this curve for a proposal file.</p>")
    t = recall["iou_thresholds"]
    series = [Series(f"{n} proposals", t, recall["recall"][n], LINE_COLOURS[i % len(LINE_COLOURS)])
              for i, n in enumerate(recall["top_ns"])]
    chart = line_chart(series, title="recall vs IoU", x_label="IoU", y_label="recall", width=360, height=260,
                       x_range=(min(t, default=0.5), max(t, default=1.0)))
    rows = "".join(f'<tr><th scope="row">{n}</th><td class="num">{pct(recall["average_recall"][n])}</td></tr>'
                   for n in recall["top_ns"])
    return (f'<div class="charts"><figure>{chart}</figure><table><thead><tr><th>N</th><th>average recall</th>'
            f"</tr></thead><tbody>{rows}</tbody></table></div>"
            f'<p class="note">{recall["num_objects"]} objects, {recall["mean_proposals"]:.0f} proposals per image '
            "on average; recall at IoU t: the share of objects whose best proposal among the top N has IoU ≥ t.</p>")


def error_breakdown(counts: dict, fixes: dict) -> str:
    """Counts of each kind per class (a stacked bar chart and a table) and the AP each kind costs."""
    kinds = (*FP_KINDS, "missed")
    rows = [(name, [c[k] for k in kinds]) for name, c in counts.items()]
    chart = stacked_bars(rows, [(k, KIND_COLOURS[k]) for k in kinds],
                         title="false positives by kind, and missed objects")
    head = "".join(f"<th>{k}</th>" for k in kinds)
    dap_head = "".join(f"<th>{k}</th>" for k in (*FIXES, "all FP", "all FN"))
    out = [f'<figure class="wide">{chart}</figure>',
           '<table class="sortable"><thead><tr><th>class</th>' + head + "</tr></thead><tbody>"]
    for name, c in counts.items():
        out.append(f'<tr><th scope="row" data-v="{escape(name)}">{escape(name)}</th>'
                   + "".join(_cell(c[k], str(c[k])) for k in kinds) + "</tr>")
    out.append("</tbody></table><h3>AP gained by fixing each kind (dAP, points)</h3>")
    out.append('<table class="sortable"><thead><tr><th>class</th>' + dap_head + "</tr></thead><tbody>")
    for name in counts:
        out.append(f'<tr><th scope="row" data-v="{escape(name)}">{escape(name)}</th>'
                   + "".join(_cell(fixes["delta_ap"][f][name]) for f in (*FIXES, *SUMMARY_FIXES)) + "</tr>")
    gains = "".join(f'<td class="num"><b>{pct(fixes["delta_map"][f])}</b></td>' for f in (*FIXES, *SUMMARY_FIXES))
    out.append(f'</tbody><tfoot><tr><th scope="row">mAP</th>{gains}</tr></tfoot></table>')
    return "".join(out)


def confusion_html(table: np.ndarray, classes: list[str]) -> str:
    """The confusion table, each cell shaded by its share of its row."""
    cols = [*classes, "missed"]
    out = ['<table class="confusion"><thead><tr><th>object \\ detected</th>']
    out += [f'<th scope="col">{escape(c)}</th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for i, name in enumerate([*classes, "background"]):
        total = max(int(table[i].sum()), 1)
        cells = []
        for j, v in enumerate(table[i].tolist()):
            hue = "120,60%" if i == j else "0,70%"
            shade = f' style="background:hsla({hue},50%,{0.6 * v / total:.2f})"' if v else ""
            cells.append(f'<td class="num"{shade}>{v}</td>')
        out.append(f'<tr><th scope="row">{escape(name)}</th>{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "".join(out)
