"""report.html: one self-contained page with the forest plot, the task table and the configuration.

The plot is an SVG drawn by ``forest.py``, inlined as a base64 ``data:`` image (an SVG inside
``<img>`` runs no scripts). Every string that comes from the data is HTML-escaped, and a
Content-Security-Policy forbids scripts and any resource but inline images and styles.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records.files import atomic_write_text
from .audit import html_parts as audit_parts
from .forest import forest_plot_svg
from .ledger import flips_cell, html_parts
from .table import label
from .markdown import (
    check_probes,
    check_report,
    config_lines,
    diff_cell,
    engine_lines,
    fmt_p,
    h_cell,
    headline,
    judge_sentence,
    pct,
    probe_cells,
    scope_notes,
    verdict_label,
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #1f2328; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
.marker { padding: .05em .45em; border-radius: 4px; color: #fff; font-weight: 700; }
.marker.pass, td.pass { background: #1a7f37; } .marker.fail, td.fail { background: #cf222e; }
.marker.error, td.error { background: #6e7781; } .marker.probe { background: #9a6700; }
td.control, .swatch.control { background: #8250df; } .swatch.pass { background: #1a7f37; }
.swatch.fail { background: #cf222e; } .swatch.error { background: #6e7781; }
td.pass, td.fail, td.error, td.control { color: #fff; font-weight: 700; }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: -.1em; margin: 0 .25em 0 .8em; }
table#tasks { width: 100%; }
#tasks td { overflow-wrap: anywhere; } #tasks td.num, #tasks td.nowrap { overflow-wrap: normal; }
#tasks td:first-child { min-width: 9em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #d0d7de; padding: .3em .45em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
img#forest-plot { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: .5em .8em; border-radius: 4px; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; white-space: pre-wrap; word-break: break-all; }
ul.reasons { margin: .2em 0; padding-left: 1.2em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _task_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    head = (
        "Task",
        "Metric",
        "n",
        "Target",
        "Speculative",
        "D [CI] vs margin",
        "TOST p",
        "|h| vs cutoff",
        "Identical",
        "Needed n",
        "Flips",
        "Verdict",
        "Reasons",
    )
    legend = "".join(
        f"<span class='swatch {k}'></span>{_esc(v)}"
        for k, v in (
            ("pass", "pass"),
            ("fail", "fail"),
            ("control", "negative control caught (it must fail: the gate works)"),
            ("error", "error (no verdict)"),
        )
    )
    out = [
        f"<p id='verdict-legend'>Verdict colours:{legend}</p>",
        "<table id='tasks'>",
        "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>",
    ]
    out += ["<tr>" + "".join(_td(i, c) for i, c in enumerate(_task_cells(r))) + "</tr>" for r in rows]
    out.append("</table>")
    return out


def _task_cells(r: Mapping[str, Any]) -> list[str]:
    """One task's cells, in the order of the table's head."""
    reasons = list(r.get("reasons") or []) + [f"out of scope: {n}" for n in r.get("scope_notes") or []]
    reason_html = "<ul class='reasons'>" + "".join(f"<li>{_esc(x)}</li>" for x in reasons) + "</ul>" if reasons else ""
    if r["status"] == "error":
        return [_cell_label(r)] + [""] * 10 + ["<td class='error'>ERROR</td>", reason_html or "no reason recorded"]
    return [
        _cell_label(r),
        _esc(r.get("metric", "refusal")),
        str(r["n"]),
        pct(r["rate_target"]),
        pct(r["rate_speculative"]),
        _esc(diff_cell(r)),
        fmt_p(r["tost_p"]),
        _esc(h_cell(r)),
        pct(r["identical_share"]),
        str(r["required_n"]),
        _esc(flips_cell(r)),
        f"<td class='{_verdict_class(r)}'>{_esc(verdict_label(r))}</td>",
        reason_html,
    ]


def _td(i: int, cell: str) -> str:
    """A task table cell: numbers right-aligned, the interval unbroken; a cell given whole as is."""
    if cell.startswith("<td"):
        return cell
    cls = "num" if i in (2, 3, 4, 6, 8, 9) else "nowrap" if i == 5 and cell else ""
    return f"<td class='{cls}'>{cell}</td>" if cls else f"<td>{cell}</td>"


def _cell_label(r: Mapping[str, Any]) -> str:
    """The full label; a line break may fall after each comma of a contrast."""
    return _esc(label(r)).replace(",", ",<wbr>")


def _verdict_class(r: Mapping[str, Any]) -> str:
    if r.get("control") == "caught":
        return "control"
    return "fail" if r.get("control") else r["status"]


def render_html(report: Mapping[str, Any]) -> str:
    rows = check_report(report)
    probes = check_probes(report)
    marker, sentence = headline(rows, probes)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>TAIS report: {_esc(marker)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>TAIS safety-invariance screen: <span class='marker {marker.lower()}' id='verdict'>{_esc(marker)}</span></h1>",
        f"<p id='headline'>{_esc(sentence)}.</p>",
    ]
    parts += _intro(report) + _probe_table(probes) + _plot(rows)
    if rows or not probes:
        parts.append("<h2>Tasks</h2>")
        parts += _task_table(rows)
    parts += html_parts(rows)
    parts += audit_parts(rows)
    parts += _notes(report, rows)
    summary = {k: report.get(k) for k in ("schema", "version", "created")}
    parts.append(f"<p><small>{_esc(json.dumps(summary))}</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _intro(report: Mapping[str, Any]) -> list[str]:
    cfg = report.get("config") or {}
    parts = []
    if cfg.get("margin") is not None and cfg.get("alpha") is not None:
        parts.append(
            f"<p>Equivalence margin ±{100 * float(cfg['margin']):.1f}pp, paired TOST at alpha {float(cfg['alpha']):g}, "
            f"|h| cutoff {float(cfg.get('h_cutoff', 0.1)):g}; D = target − speculative.</p>"
        )
    judged = judge_sentence(report)
    if judged:
        parts.append(f"<p id='judge'>{_esc(judged)}</p>")
    return parts


def _probe_table(probes: Sequence[Mapping[str, Any]]) -> list[str]:
    if not probes:
        return []
    parts = [
        "<h2>Probes (speculative arm alone: rates, never a verdict)</h2><table id='probes'>",
        "<tr>" + "".join(f"<th>{h}</th>" for h in ("Task", "n", "Speculative", "95% Wilson CI", "Count")) + "</tr>",
    ]
    for r in probes:
        rate, ci, count = probe_cells(r)
        parts.append(
            f"<tr><td>{_esc(label(r))}</td><td class='num'>{r['n']}</td><td class='num'>{rate}</td>"
            f"<td class='nowrap'>{_esc(ci)}</td><td>{_esc(count)}</td></tr>"
        )
    return parts + ["</table>"]


def _plot(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    data = base64.b64encode(forest_plot_svg(rows).encode("utf-8")).decode("ascii")
    return [
        "<h2>Forest plot</h2>",
        f"<img id='forest-plot' alt='Forest plot: per task the refusal-rate difference with its CI against the "
        f"margin, and |h| against its cutoff' src='data:image/svg+xml;base64,{data}'>",
    ]


def _notes(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    parts = []
    weak = [r for r in rows if r["status"] != "error" and r.get("underpowered")]
    if weak:
        parts.append("<h2>Underpowered tasks</h2><ul id='underpowered'>")
        parts += [f"<li>{_esc(r['task'])}: n = {r['n']}, needs n ≥ {r['required_n']} for 80% power</li>" for r in weak]
        parts.append("</ul>")
    notes = scope_notes(report, rows)
    if notes:
        parts.append(
            "<h2>Out of scope</h2><ul id='out-of-scope'>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
        )
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        parts.append("<h2>Errors (no verdict: these tasks cannot pass)</h2><ul id='errors'>")
        for r in errors:
            reasons = "; ".join(str(x) for x in r.get("reasons") or ["no reason recorded"])
            parts.append(f"<li><strong>{_esc(r['task'])}</strong>: {_esc(reasons)}</li>")
        parts.append("</ul>")
    engines = engine_lines(report)
    if engines:
        parts.append("<h2>Engines</h2><pre id='engines'>" + _esc("\n".join(engines)) + "</pre>")
    cfg_rows = config_lines(report)
    if cfg_rows:
        parts.append("<h2>Configuration</h2><table id='config'>")
        parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in cfg_rows]
        parts.append("</table>")
    return parts


def write_html(directory: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``DIR/report.html`` atomically and return its path."""
    path = Path(directory) / "report.html"
    atomic_write_text(path, render_html(report))
    return path
