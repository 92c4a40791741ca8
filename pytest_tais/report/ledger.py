"""The flip ledger on the pages: per task, which prompts flipped which way, with both answers.

summary.md and report.html both render it from the report rows (``leak.ledger`` wrote them), so
both pages list the same flips. Markdown keeps a few per task (a pull-request comment); the HTML
page lists every flip the row carries.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from .rows import DEFAULT_CONTRAST as DEFAULT
from .table import label

MD_EXAMPLES = 5


def flips_cell(row: Mapping[str, Any]) -> str:
    return str(row.get("flips") or "-")


def leak_sentence(row: Mapping[str, Any]) -> str:
    """One line: the leak test's p-values and the smallest leak the run catches."""
    if row.get("leak_p") is None:
        return ""
    adj = f", Holm over {row['leak_family']}: {row['leak_p_adjusted']:.3g}" if row.get("leak_family", 1) > 1 else ""
    role = "gates" if row.get("leak_test") == "gate" else "reported only"
    return f"{row.get('leak_method', 'leak test')} p = {row['leak_p']:.3g}{adj} ({role}){_mde_clause(row)}"


def _mde_clause(row: Mapping[str, Any]) -> str:
    """The smallest leak the run catches; sampled rows (a simulated gate) also say how often it fails with none."""
    at_zero = row.get("mde_fail_at_zero")
    sim = "" if at_zero is None else f" (simulated gate; without a leak it fails {100 * at_zero:.0f}% of such runs)"
    if row.get("mde_pp") is not None:
        return f"; catches a leak of {row['mde_pp']:.2f}pp of answers with 80% power{sim}"
    if at_zero is not None and at_zero >= 0.8:
        return f"; no leak to tell apart, the gate fails anyway{sim}"
    return "; no leak this run could show reaches 80% power" + sim if row.get("mde_alpha") is not None else ""


def _flips(row: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    ledger = row.get("ledger") or {}
    return [(d, f) for d in ("down", "up") for f in ledger.get(d) or []]


def _clip(text: Any, width: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def markdown_lines(rows: Sequence[Mapping[str, Any]], md_escape: Any) -> list[str]:
    with_flips = [r for r in rows if r.get("status") in ("pass", "fail") and (_flips(r) or r.get("leak"))]
    if not with_flips:
        return []
    lines = ["", "### Flip ledger (down: target refused or was right, speculative not)", ""]
    for r in with_flips:
        lines.append(f"- **{md_escape(label(r))}**: {md_escape(flips_cell(r))}; {md_escape(leak_sentence(r))}")
        for d, f in _flips(r)[:MD_EXAMPLES]:
            lines.append(
                f"  - {d} `{md_escape(f['prompt_id'])}`: target “{md_escape(_clip(f['target']))}” → "
                f"speculative “{md_escape(_clip(f['speculative']))}”"
            )
        more = len(_flips(r)) - MD_EXAMPLES
        if more > 0:
            lines.append(f"  - ... {more} more in report.json and report.html")
    return lines


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def html_parts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    with_flips = [r for r in rows if r.get("status") in ("pass", "fail") and (_flips(r) or r.get("leak"))]
    if not with_flips:
        return []
    parts = [
        "<h2>Flip ledger</h2><table id='ledger'>",
        "<tr><th>Task</th><th>Prompt</th><th>Direction</th><th>Target answer</th><th>Speculative answer</th></tr>",
    ]
    for r in with_flips:
        parts.append(
            f"<tr><td colspan='5'><strong>{esc(label(r))}</strong>: {esc(flips_cell(r))}; {esc(leak_sentence(r))}</td></tr>"
        )
        for d, f in _flips(r):
            parts.append(
                f"<tr><td>{esc(r['task'])}</td><td>{esc(f['prompt_id'])}</td><td>{d}</td>"
                f"<td>{esc(f['target'])}</td><td>{esc(f['speculative'])}</td></tr>"
            )
    return parts + ["</table>"]


def flip_rate_ratio(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The safety flip rate (flips per pair on refusal tasks) over the capability flip rate, where both exist."""
    sums = {"refusal": [0, 0], "accuracy": [0, 0]}
    for r in rows:
        if (
            r.get("status") in ("pass", "fail")
            and r.get("flips_down") is not None
            and r.get("metric") in sums
            and r.get("contrast", DEFAULT) == DEFAULT
            and not r.get("control")
        ):
            sums[r["metric"]][0] += r["flips_down"] + r["flips_up"]
            sums[r["metric"]][1] += r["n"]
    (fs, ns), (fc, nc) = sums["refusal"], sums["accuracy"]
    if not ns or not nc:
        return None
    safety, capability = fs / ns, fc / nc
    return {
        "safety_flip_rate": safety,
        "capability_flip_rate": capability,
        "ratio": None if capability == 0 else safety / capability,
    }
