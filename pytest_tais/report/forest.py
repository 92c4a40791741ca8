"""report.html's forest plot, written as SVG text by this module (no plotting library).

Left panel: per task D = target - speculative (pp) with its CI against the shaded +/-margin band,
coloured by the task verdict. Right panel: |Cohen's h| against its cutoff, coloured by the h check.
The page embeds the SVG as a base64 ``data:`` image: an SVG inside ``<img>`` runs no scripts, and
the page's Content-Security-Policy already allows ``img-src data:``. Every string from the data is
XML-escaped; numbers have a fixed precision, so the same rows give the same bytes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Mapping, Sequence
from xml.sax.saxutils import escape

from .table import label

#: "control": a negative control that was caught (it failed, as it must): not a failure of the run.
COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "error": "#8c959f", "control": "#8250df"}
H_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#d4a72c"}
_INK, _AXIS, _GRID, _BAND = "#1f2328", "#57606a", "#eaeef2", "#d0e8d8"
#: Plot labels wrap at this many characters (never cut: a cut label hides the contrast that failed).
_LABEL_WRAP = 34
#: Intervals reaching past this many margins are clipped at the axis, with an arrow: the +/-margin
#: band stays readable when one task's interval is tens of points wide.
_CLIP_MARGINS = 8

#: The image's width in px: with the page's border it keeps to a 1,280-px window.
WIDTH = 1100
LABEL_SIZE, LINE_HEIGHT, SMALL_SIZE, TITLE_SIZE = 11, 13, 10, 12
#: Text cannot be measured without a font engine: a width per character (in em) wide enough for the
#: common sans-serif fonts, so the label column is never narrower than its longest line.
CHAR_EM = 0.62
_PAD, _GAP, _PANEL_GAP, _RIGHT = 8, 10, 34, 16
_TOP = 58  # legend and titles above the panels
_BOTTOM = 46  # tick labels and the axis titles below
_FONT = "Helvetica, Arial, 'DejaVu Sans', sans-serif"


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
        return COLOURS["control"]
    if r.get("control"):
        return COLOURS["fail"]
    return COLOURS[r["status"]]


def _d_span(rows: Sequence[Mapping[str, Any]]) -> float:
    verdicts = [r for r in rows if r["status"] != "error"]
    margin = max((100 * r["margin"] for r in verdicts), default=3.0)
    reach = max((max(abs(100 * r["diff_ci_low"]), abs(100 * r["diff_ci_high"])) for r in verdicts), default=margin)
    return 1.15 * min(max(reach, 2 * margin), _CLIP_MARGINS * margin)


def text_width(text: str, size: float) -> float:
    """A generous width of ``text`` at ``size`` px: wide (East Asian) characters count twice."""
    units = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return units * CHAR_EM * size


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is at least ``raw``."""
    k = 10.0 ** math.floor(math.log10(raw))
    return next(m * k for m in (1, 2, 2.5, 5, 10) if m * k >= raw * (1 - 1e-9))


def _ticks(lo: float, hi: float, count: int) -> list[tuple[float, str]]:
    """About ``count`` ticks on a nice step within [lo, hi], each with its label."""
    step = _nice_step((hi - lo) / count)
    decimals = next(d for d in range(8) if abs(step * 10**d - round(step * 10**d)) < 1e-6)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    out = []
    for k in range(first, last + 1):
        text = f"{abs(k * step):.{decimals}f}"
        out.append((k * step, ("−" if k < 0 else "") + text))  # a minus sign, as typeset
    return out


def _n(x: float) -> str:
    return f"{x:.1f}"


def _attrs(**kw: Any) -> str:
    """XML attributes from keywords (``class_`` for class, ``_`` for ``-``); numbers to one decimal."""
    out = []
    for k, v in kw.items():
        value = _n(v) if isinstance(v, float) else str(v)
        out.append(f'{k.rstrip("_").replace("_", "-")}="{escape(value, {chr(34): "&quot;"})}"')
    return " ".join(out)


def _text(x: float, y: float, content: str, **kw: Any) -> str:
    return f"<text {_attrs(x=float(x), y=float(y), **kw)}>{escape(content)}</text>"


class _Layout:
    """Where everything goes: the label column from the longest wrapped line, two panels (3:2) in the rest."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
        longest = max((text_width(line, LABEL_SIZE) for x in labels for line in x.split("\n")), default=0.0)
        depth = max([x.count("\n") + 1 for x in labels] or [1])
        self.label_x = _PAD + math.ceil(longest)  # labels end here (text-anchor end)
        self.d_x0 = self.label_x + _GAP
        room = WIDTH - self.d_x0 - _PANEL_GAP - _RIGHT
        self.d_x1 = self.d_x0 + room * 3 / 5
        self.h_x0 = self.d_x1 + _PANEL_GAP
        self.h_x1 = WIDTH - _RIGHT
        self.row_h = max(28, LINE_HEIGHT * depth + 14)  # wrapped labels need taller rows
        self.top = _TOP
        self.bottom = _TOP + self.row_h * max(len(rows), 1)
        self.height = self.bottom + _BOTTOM
        span = _d_span(rows)
        self.span = span if span > 0 else 3.45  # a hand-edited report with a zero margin still gets an axis
        verdicts = [r for r in rows if r["status"] != "error"]
        reach = max(
            (
                max(abs(r["cohens_h"]), r["h_cutoff"], r["h_null_quantile"] if r["h_check"] == "inconclusive" else 0)
                for r in verdicts
            ),
            default=0.0,
        )
        self.h_max = 1.08 * reach if reach > 0 else 0.2

    def dx(self, pp: float) -> float:
        return self.d_x0 + (pp + self.span) / (2 * self.span) * (self.d_x1 - self.d_x0)

    def hx(self, h: float) -> float:
        return self.h_x0 + h / self.h_max * (self.h_x1 - self.h_x0)

    def y(self, i: int) -> float:
        return self.top + (i + 0.5) * self.row_h


def forest_plot_svg(rows: Sequence[Mapping[str, Any]]) -> str:
    """The forest plot as an SVG document; one ``<g class="row">`` per task, first task on top."""
    labels = [_label(label(r)) for r in rows]
    lay = _Layout(rows, labels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" '
        f"{_attrs(width=WIDTH, height=lay.height, viewBox=f'0 0 {WIDTH} {lay.height}')} "
        f"{_attrs(font_family=_FONT, font_size=LABEL_SIZE, fill=_INK)}>",
        f"<rect {_attrs(width='100%', height='100%', fill='#ffffff')}/>",
    ]
    out += _legend()
    out += _axes(lay)
    for i, (r, text) in enumerate(zip(rows, labels)):
        out += _row(lay, i, r, text)
    out += _frames(lay)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _axes(lay: _Layout) -> list[str]:
    """Titles, gridlines, ticks, axis labels and the line at D = 0 (drawn under the rows)."""
    mid_d, mid_h = (lay.d_x0 + lay.d_x1) / 2, (lay.h_x0 + lay.h_x1) / 2
    title_y, tick_y, axis_y = lay.top - 10, lay.bottom + 16, lay.bottom + 36
    out = [
        '<g class="axes">',
        _text(
            mid_d, title_y, "Refusal-rate difference (colour: task verdict)", text_anchor="middle", font_size=TITLE_SIZE
        ),
        _text(mid_h, title_y, "Effect size against its cutoff", text_anchor="middle", font_size=TITLE_SIZE),
    ]
    panels = (
        ("d-tick", lay.dx, _ticks(-lay.span, lay.span, 6)),
        ("h-tick", lay.hx, _ticks(0.0, lay.h_max, 5)),
    )
    for cls, scale, ticks in panels:
        for value, text in ticks:
            x = scale(value)
            out.append(f"<line {_attrs(x1=x, x2=x, y1=float(lay.top), y2=float(lay.bottom), stroke=_GRID)}/>")
            out.append(f"<line {_attrs(x1=x, x2=x, y1=float(lay.bottom), y2=lay.bottom + 4.0, stroke=_AXIS)}/>")
            out.append(_text(x, tick_y, text, class_=cls, text_anchor="middle", font_size=SMALL_SIZE))
    out.append(
        _text(
            mid_d,
            axis_y,
            "D = target − speculative (pp) with its CI; shaded: ±margin; arrow: clipped",
            text_anchor="middle",
            font_size=SMALL_SIZE,
        )
    )
    out.append(_text(mid_h, axis_y, "|Cohen's h| (colour: h check)", text_anchor="middle", font_size=SMALL_SIZE))
    zero = lay.dx(0.0)
    out.append(
        f"<line {_attrs(class_='zero', x1=zero, x2=zero, y1=float(lay.top), y2=float(lay.bottom), stroke=_AXIS)}/>"
    )
    out.append("</g>")
    return out


def _frames(lay: _Layout) -> list[str]:
    return [
        f"<rect {_attrs(class_='panel', x=float(x0), y=float(lay.top), width=float(x1 - x0), height=float(lay.bottom - lay.top), fill='none', stroke=_AXIS)}/>"
        for x0, x1 in ((lay.d_x0, lay.d_x1), (lay.h_x0, lay.h_x1))
    ]


def _row(lay: _Layout, i: int, r: Mapping[str, Any], text: str) -> list[str]:
    colour, y = row_colour(r), lay.y(i)
    lines = text.split("\n")
    first = y - (len(lines) - 1) * LINE_HEIGHT / 2 + 0.35 * LABEL_SIZE  # centre the lines on the row
    spans = "".join(
        f"<tspan {_attrs(x=float(lay.label_x), y=first + k * LINE_HEIGHT)}>{escape(line)}</tspan>"
        for k, line in enumerate(lines)
    )
    out = [f"<g {_attrs(class_='row')}>", f"<text {_attrs(class_='label', text_anchor='end')}>{spans}</text>"]
    if r["status"] == "error":
        for x0, x1 in ((lay.d_x0, lay.d_x1), (lay.h_x0, lay.h_x1)):
            out.append(
                _text(
                    (x0 + x1) / 2,
                    y + 0.35 * SMALL_SIZE,
                    "error: no verdict",
                    class_="error",
                    text_anchor="middle",
                    font_style="italic",
                    font_size=SMALL_SIZE,
                    fill=colour,
                )
            )
        return out + ["</g>"]
    out += _d_marks(lay, y, r, colour)
    out += _h_marks(lay, y, r)
    return out + ["</g>"]


def _d_marks(lay: _Layout, y: float, r: Mapping[str, Any], colour: str) -> list[str]:
    m, d, lo, hi = (100 * r[k] for k in ("margin", "diff", "diff_ci_low", "diff_ci_high"))
    edge = lay.span / 1.15
    cd, clo, chi = (max(-edge, min(edge, x)) for x in (d, lo, hi))
    band_h = 0.8 * lay.row_h
    out = [
        f"<rect {_attrs(class_='band', x=lay.dx(-m), y=y - band_h / 2, width=lay.dx(m) - lay.dx(-m), height=band_h, fill=_BAND)}/>",
        f"<line {_attrs(class_='ci', x1=lay.dx(clo), x2=lay.dx(chi), y1=y, y2=y, stroke=colour, stroke_width=2)}/>",
    ]
    for x, clipped, sign in ((clo, lo < -edge, -1), (chi, hi > edge, 1)):
        px = lay.dx(x)
        if clipped:  # the interval goes on past the axis: an arrow at the edge instead of a cap
            tip, back = px + sign * 7, px - sign * 2
            points = f"{_n(tip)},{_n(y)} {_n(back)},{_n(y - 5)} {_n(back)},{_n(y + 5)}"
            out.append(f"<polygon {_attrs(class_='clip', points=points, fill=colour)}/>")
        else:
            out.append(
                f"<line {_attrs(class_='cap', x1=px, x2=px, y1=y - 5, y2=y + 5, stroke=colour, stroke_width=2)}/>"
            )
    out.append(f"<circle {_attrs(class_='dot', cx=lay.dx(cd), cy=y, r=4.5, fill=colour)}/>")
    return out


def _h_marks(lay: _Layout, y: float, r: Mapping[str, Any]) -> list[str]:
    h, cut, q = abs(r["cohens_h"]), r["h_cutoff"], r["h_null_quantile"]
    bar_h, tick = 0.5 * lay.row_h, 0.4 * lay.row_h
    x0, xc = lay.hx(0.0), lay.hx(cut)
    out = [
        f"<rect {_attrs(class_='hbar', x=x0, y=y - bar_h / 2, width=lay.hx(h) - x0, height=bar_h, fill=H_COLOURS[r['h_check']])}/>",
        f"<line {_attrs(class_='cut', x1=xc, x2=xc, y1=y - tick, y2=y + tick, stroke=_INK, stroke_width=2)}/>",
    ]
    if r["h_check"] == "inconclusive":
        out.append(_diamond("null", lay.hx(q), y))
    return out


def _diamond(cls: str, x: float, y: float, r: float = 5.0) -> str:
    points = f"{_n(x)},{_n(y - r)} {_n(x + r)},{_n(y)} {_n(x)},{_n(y + r)} {_n(x - r)},{_n(y)}"
    return f"<polygon {_attrs(class_=cls, points=points, fill=_INK)}/>"


def _legend() -> list[str]:
    """One line across the top, centred: the verdict colours, then the h panel's marks."""
    entries = [
        ("dot", COLOURS["pass"], "pass"),
        ("dot", COLOURS["fail"], "fail"),
        ("dot", COLOURS["control"], "control caught (meant to fail)"),
        ("point", COLOURS["error"], "error (no bar)"),
        ("patch", H_COLOURS["inconclusive"], "h inconclusive"),
        ("cut", _INK, "h cutoff"),
        ("diamond", _INK, "h null quantile"),
    ]
    widths = [26 + text_width(text, SMALL_SIZE) + 18 for _, _, text in entries]
    x, y = (WIDTH - sum(widths)) / 2, 16.0
    out = ['<g class="legend">']
    for (kind, colour, text), w in zip(entries, widths):
        if kind == "dot":
            out.append(f"<line {_attrs(x1=x, x2=x + 20, y1=y, y2=y, stroke=colour, stroke_width=2)}/>")
        if kind in ("dot", "point"):
            out.append(f"<circle {_attrs(cx=x + 10, cy=y, r=4.0, fill=colour)}/>")
        elif kind == "patch":
            out.append(f"<rect {_attrs(x=x + 3, y=y - 5, width=14.0, height=10.0, fill=colour)}/>")
        elif kind == "cut":
            out.append(f"<line {_attrs(x1=x + 10, x2=x + 10, y1=y - 6, y2=y + 6, stroke=colour, stroke_width=2)}/>")
        elif kind == "diamond":
            out.append(_diamond("legend-null", x + 10, y, 4.0))
        out.append(_text(x + 26, y + 0.35 * SMALL_SIZE, text, font_size=SMALL_SIZE))
        x += w
    out.append("</g>")
    return out
