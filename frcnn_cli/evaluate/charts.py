"""Charts of the evaluation report as inline SVG text: line charts and horizontal stacked bars.

Written directly (no matplotlib, no script): a chart is a string to put inside an HTML page, sized by its
``viewBox`` so that it scales with the page, with every label escaped. A curve of many thousands of points
is thinned to at most ``MAX_POINTS`` (the page of a 5,000-image test set stays small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

MAX_POINTS = 300
_FONT = 'font-family="system-ui, sans-serif"'
_MARGIN = (34, 8, 18, 30)  # left, right, top, bottom


@dataclass(frozen=True)
class Series:
    """One line of a chart: ``x`` and ``y`` of equal length, a CSS colour, dashed or not."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str
    dashed: bool = False


def thin(x: Sequence[float], y: Sequence[float], max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve, its first and last always among them; points
    with a non-finite coordinate are dropped."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) > max_points:
        keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return x, y


def _axes(width: int, height: int, x_range, y_range, x_label: str, y_label: str) -> tuple[list[str], object]:
    """Frame, grid, ticks and axis labels; and the function mapping data to pixel coordinates."""
    left, right, top, bottom = _MARGIN
    pw, ph = width - left - right, height - top - bottom
    (x0, x1), (y0, y1) = x_range, y_range

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for i in range(6):
        fx, fy = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        (gx, _), (_, gy) = to_px(fx, y0), to_px(x0, fy)
        parts.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{top + ph}" stroke="#eee"/>')
        parts.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{left + pw}" y2="{gy:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{gx:.1f}" y="{top + ph + 10}" font-size="8" text-anchor="middle">{fx:.1f}</text>')
        parts.append(f'<text x="{left - 3}" y="{gy + 3:.1f}" font-size="8" text-anchor="end">{fy:.1f}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" font-size="9" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="9" y="{top + ph / 2:.1f}" font-size="9" text-anchor="middle" '
                 f'transform="rotate(-90 9 {top + ph / 2:.1f})">{escape(y_label)}</text>')
    return parts, to_px


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, width: int = 260,
               height: int = 200, x_range: tuple[float, float] = (0.0, 1.0),
               y_range: tuple[float, float] = (0.0, 1.0), legend: bool = True) -> str:
    """An SVG line chart of ``series`` (thinned to ``MAX_POINTS`` each) with a title and, if asked, a
    legend in its lower left corner."""
    parts, to_px = _axes(width, height, x_range, y_range, x_label, y_label)
    for s in series:
        xs, ys = thin(s.x, s.y)
        if len(xs) == 0:
            continue
        points = " ".join("{:.1f},{:.1f}".format(*to_px(x, y)) for x, y in zip(xs.tolist(), ys.tolist()))
        dash = ' stroke-dasharray="4 2"' if s.dashed else ""
        parts.append(f'<polyline points="{points}" fill="none" stroke="{s.colour}" stroke-width="1.5"{dash}/>')
    if legend:
        left, _, top, bottom = _MARGIN
        for i, s in enumerate(reversed(series)):
            y = height - bottom - 6 - 10 * i
            dash = ' stroke-dasharray="4 2"' if s.dashed else ""
            parts.append(f'<line x1="{left + 5}" y1="{y - 3}" x2="{left + 17}" y2="{y - 3}" stroke="{s.colour}" '
                         f'stroke-width="2"{dash}/>')
            parts.append(f'<text x="{left + 20}" y="{y}" font-size="8">{escape(s.label)}</text>')
    return _svg(width, height, title, parts)


def _svg(width: int, height: int, title: str, parts: list[str]) -> str:
    head = (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" {_FONT}>'
            f'<title>{escape(title)}</title>'
            f'<text x="{width / 2:.1f}" y="12" font-size="10" font-weight="bold" text-anchor="middle">'
            f'{escape(title)}</text>')
    return head + "".join(parts) + "</svg>"


def stacked_bars(rows: Sequence[tuple[str, Sequence[float]]], segments: Sequence[tuple[str, str]], *,
                 title: str, width: int = 560, unit: str = "") -> str:
    """Horizontal stacked bars, one per ``(label, values)`` row; ``segments`` names and colours the values
    in order. Bars are scaled to the longest total; each row ends with its total."""
    bar_h, label_w, legend_h = 14, 110, 16
    height = 18 + legend_h + bar_h * len(rows) + 4
    longest = max([sum(v) for _, v in rows] + [0.0])
    scale = (width - label_w - 50) / longest if longest > 0 else 0.0
    parts = []
    x = label_w
    for name, colour in segments:
        parts.append(f'<rect x="{x}" y="20" width="9" height="9" fill="{colour}"/>'
                     f'<text x="{x + 12}" y="28" font-size="9">{escape(name)}</text>')
        x += 14 + 6 * len(name) + 10
    for i, (label, values) in enumerate(rows):
        y = 18 + legend_h + i * bar_h
        parts.append(f'<text x="{label_w - 4}" y="{y + 10}" font-size="9" text-anchor="end">'
                     f'{escape(_short(label))}</text>')
        x = float(label_w)
        for (name, colour), v in zip(segments, values):
            if v > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y + 1}" width="{v * scale:.1f}" height="{bar_h - 3}" '
                             f'fill="{colour}"><title>{escape(label)}: {escape(name)} {_fmt(v)}{unit}</title></rect>')
                x += v * scale
        parts.append(f'<text x="{x + 3:.1f}" y="{y + 10}" font-size="8">{_fmt(sum(values))}{unit}</text>')
    return _svg(width, height, title, parts)


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return str(int(v)) if float(v).is_integer() else f"{v:.3f}"
