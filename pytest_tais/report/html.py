"""report.html: one self-contained page with the forest plot, the task table and the configuration.

The plot is an inline PNG drawn with matplotlib (the ``[plot]`` extra), imported only here and
only when a page is written; without it the page says how to get the plot. Every string that
comes from the data is HTML-escaped, and a Content-Security-Policy forbids scripts and any
resource but inline images and styles.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records.files import atomic_write_text
from .audit import html_parts as audit_parts
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

PLOT_MISSING_NOTE = (
    "The forest plot needs matplotlib, which is not installed: "
    "pip install 'pytest-tais[plot]' and rerun with --tais-report to get it."
)

#: "control": a negative control that was caught (it failed, as it must): not a failure of the run.
_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "error": "#8c959f", "control": "#8250df"}
_H_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#d4a72c"}
#: Plot labels wrap at this many characters (never cut: a cut label hides the contrast that failed).
_LABEL_WRAP = 34

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


def _import_matplotlib():
    """matplotlib's Figure, Line2D and Patch, or None when the [plot] extra is not installed."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        return None
    return Figure, Line2D, Patch


def _label(name: str) -> str:
    """The whole label, wrapped after commas or spaces (or inside a word longer than a line)."""
    lines, line = [], ""
    for token in re.findall(r"[^, ]*[, ]?", name):
        while len(token) > _LABEL_WRAP:
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(token[:_LABEL_WRAP])
            token = token[_LABEL_WRAP:]
        if len(line) + len(token.rstrip()) > _LABEL_WRAP and line:
            lines.append(line.rstrip())
            line = ""
        line += token
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return "\n".join(lines)


def row_colour(r: Mapping[str, Any]) -> str:
    """A caught negative control in its own colour; a control NOT caught is a failure of the run."""
    if r.get("control") == "caught":
        return _COLOURS["control"]
    if r.get("control"):
        return _COLOURS["fail"]
    return _COLOURS[r["status"]]


#: Intervals reaching past this many margins are clipped at the axis, with an arrow: the +/-margin
#: band stays readable when one task's interval is tens of points wide.
_CLIP_MARGINS = 8


def _d_span(rows: Sequence[Mapping[str, Any]]) -> float:
    verdicts = [r for r in rows if r["status"] != "error"]
    margin = max((100 * r["margin"] for r in verdicts), default=3.0)
    reach = max((max(abs(100 * r["diff_ci_low"]), abs(100 * r["diff_ci_high"])) for r in verdicts), default=margin)
    return 1.15 * min(max(reach, 2 * margin), _CLIP_MARGINS * margin)


def _draw_row(ax_d: Any, ax_h: Any, y: int, r: Mapping[str, Any], span: float) -> None:
    colour = row_colour(r)
    if r["status"] == "error":
        for ax in (ax_d, ax_h):
            ax.text(
                0.5,
                y,
                "error: no verdict",
                transform=ax.get_yaxis_transform(),
                ha="center",
                va="center",
                color=colour,
                fontsize=9,
                style="italic",
                parse_math=False,
            )
        return
    m, d, lo, hi = (100 * r[k] for k in ("margin", "diff", "diff_ci_low", "diff_ci_high"))
    edge = span / 1.15
    d, lo, hi = (max(-edge, min(edge, x)) for x in (d, lo, hi))
    ax_d.barh(y, 2 * m, left=-m, height=0.8, color="#d0e8d8", edgecolor="none", zorder=0)
    ax_d.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", color=colour, ecolor=colour, capsize=4, lw=2, zorder=3)
    for x, clipped, marker in ((lo, 100 * r["diff_ci_low"] < -edge, "<"), (hi, 100 * r["diff_ci_high"] > edge, ">")):
        if clipped:  # the interval goes on past the axis
            ax_d.plot([x], [y], marker=marker, color=colour, ms=9, zorder=4, linestyle="none")
    h, cut, q = abs(r["cohens_h"]), r["h_cutoff"], r["h_null_quantile"]
    ax_h.barh(y, h, height=0.5, color=_H_COLOURS[r["h_check"]], zorder=2)
    ax_h.plot([cut, cut], [y - 0.4, y + 0.4], color="#1f2328", lw=2, zorder=3)
    if r["h_check"] == "inconclusive":
        ax_h.plot([q], [y], marker="D", color="#1f2328", ms=6, zorder=4, linestyle="none")


def forest_plot_png(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The forest plot as PNG bytes; None when matplotlib is missing.

    Left: D with its CI per task against the shaded +/-margin band; the axis spans the data and
    the margin, and intervals past 8 margins are clipped with an arrow. Right: |h| against its
    cutoff, with the swap-null quantile where the h check is inconclusive. Errors get a label, no bar.
    """
    mpl = _import_matplotlib()
    if mpl is None:
        return None
    Figure, Line2D, Patch = mpl
    n = len(rows)
    labels = [_label(label(r)) for r in rows]
    depth = max([x.count("\n") + 1 for x in labels] or [1])  # wrapped labels need taller rows
    fig = Figure(
        figsize=(11, 1.6 + 0.45 * max(n, 1) * max(1.0, 0.6 * depth)), dpi=100
    )  # no pyplot: no global state, Agg canvas
    ax_d, ax_h = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    ys = list(range(n))[::-1]  # first task on top
    span = _d_span(rows)
    for y, r in zip(ys, rows):
        _draw_row(ax_d, ax_h, y, r, span)
    ax_d.axvline(0, color="#57606a", lw=1, zorder=1)
    ax_d.set_xlim(-span, span)
    ax_d.set_xlabel("D = target − speculative (pp) with its CI; shaded: ±margin; arrow: clipped")
    ax_d.set_title("Refusal-rate difference (colour: task verdict)", fontsize=11)
    ax_h.set_xlim(left=0)
    ax_h.locator_params(axis="x", nbins=5)
    ax_h.set_xlabel("|Cohen's h| (colour: h check)")
    ax_h.set_title("Effect size against its cutoff", fontsize=11)
    ax_d.set_yticks(ys)
    ax_d.set_yticklabels(labels, fontsize=9 if depth > 1 else None)
    for t in ax_d.get_yticklabels():
        t.set_parse_math(False)  # task names are data: "$" must not start TeX
    ax_d.set_ylim(-0.7, n - 0.3)
    for ax in (ax_d, ax_h):
        ax.grid(axis="x", color="#eaeef2", zorder=0)
    _legend(fig, Line2D, Patch)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _legend(fig: Any, Line2D: Any, Patch: Any) -> None:
    handles = [
        Line2D([], [], marker="o", color=_COLOURS["pass"], label="pass"),
        Line2D([], [], marker="o", color=_COLOURS["fail"], label="fail"),
        Line2D([], [], marker="o", color=_COLOURS["control"], label="control caught (meant to fail)"),
        Line2D([], [], marker="o", color=_COLOURS["error"], linestyle="none", label="error (no bar)"),
        Patch(color=_H_COLOURS["inconclusive"], label="h inconclusive"),
        Line2D([], [], marker="|", color="#1f2328", linestyle="none", ms=10, mew=2, label="h cutoff"),
        Line2D([], [], marker="D", color="#1f2328", linestyle="none", ms=6, label="h null quantile"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    top = 1 - 0.35 / fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, top))


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
    png = forest_plot_png(rows)
    if png is None:
        return ["<h2>Forest plot</h2>", f"<p class='note' id='plot-missing'>{_esc(PLOT_MISSING_NOTE)}</p>"]
    data = base64.b64encode(png).decode("ascii")
    return [
        "<h2>Forest plot</h2>",
        f"<img id='forest-plot' alt='Forest plot: per task the refusal-rate difference with its CI against the "
        f"margin, and |h| against its cutoff' src='data:image/png;base64,{data}'>",
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
