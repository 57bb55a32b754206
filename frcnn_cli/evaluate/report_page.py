"""The report's page around its sections: styles (screen and print), the table-sorting script, the shell.

Everything is inline: the page loads nothing, so it opens offline, from a mail attachment or an archive.
The script only sorts tables (click a column head; again to reverse) and marks ``<html data-js="ready">``
when it has run.
"""

from __future__ import annotations

from html import escape

CSS = """
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #d9d9de; --head: #f3f4f6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: #fff; margin: 0 auto; padding: 16px 20px 40px; max-width: 1180px; }
h1 { font-size: 22px; margin: 4px 0 2px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-top: 6px; border-top: 2px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
nav { position: sticky; top: 0; background: #fffe; padding: 6px 0; border-bottom: 1px solid var(--line);
      font-size: 13px; z-index: 1; }
nav a { margin-right: 14px; color: #0b57d0; text-decoration: none; }
.headline { display: flex; gap: 28px; align-items: baseline; flex-wrap: wrap; margin: 10px 0; }
.big { font-size: 34px; font-weight: 700; }
.big small { font-size: 14px; font-weight: 400; color: var(--muted); margin-left: 4px; }
.note { color: var(--muted); font-size: 13px; max-width: 900px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--head); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { background: var(--head); font-weight: 600; white-space: nowrap; }
table.meta td { word-break: break-all; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BE"; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B4"; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 8px; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; max-width: 560px; }
figure.wide svg { max-width: 760px; }
.examples { display: flex; flex-wrap: wrap; gap: 10px; }
.examples figure { width: 204px; }
.examples img { display: block; max-width: 200px; border: 1px solid var(--line); }
figcaption { font-size: 11px; color: var(--muted); margin-top: 2px; }
table.confusion td, table.confusion th { text-align: center; min-width: 38px; }
@page { size: A4; margin: 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  h2 { break-after: avoid; }
  figure, table, tr { break-inside: avoid; }
  .charts { grid-template-columns: repeat(3, 1fr); }
  a { color: inherit; text-decoration: none; }
}
"""

JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    var n = parseFloat(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, col, th); } });
    });
  });
  document.documentElement.setAttribute("data-js", "ready");
})();
"""

SECTIONS = (("summary", "Summary"), ("classes", "Classes"), ("curves", "Precision–recall"),
            ("proposals", "Proposals"), ("errors", "Errors"), ("confusion", "Confusion"), ("examples", "Examples"))


def page(title: str, sections: dict[str, str]) -> str:
    """The whole HTML document: ``sections`` maps each id of ``SECTIONS`` to its body."""
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in SECTIONS)
    body = []
    for sid, label in SECTIONS:
        heading = f"<h1>{escape(title)}</h1>" if sid == "summary" else f"<h2>{label}</h2>"
        body.append(f'<section id="{sid}">{heading}{sections[sid]}</section>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<nav>{nav}</nav>{''.join(body)}<script>{JS}</script></body></html>\n")
