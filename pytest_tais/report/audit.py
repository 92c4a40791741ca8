"""The token audit on every output: a terminal flag and lines said once, JUnit properties, and the
violations listed on both pages (report.json carries the rows' ``audit`` as ``Audit.to_dict`` wrote it).

Token texts are shown as ``repr`` of the decoded token, so whitespace and control bytes are visible.
"""

from __future__ import annotations

import html
from typing import Any, Iterator, Mapping, Sequence

from ..errors import printable
from .table import label

#: Violations per task on the Markdown page (a pull-request comment); report.json and report.html list all.
MD_VIOLATIONS = 20


def _audit(row: Mapping[str, Any]) -> Mapping[str, Any]:
    return (row.get("audit") or {}) if row.get("status") in ("pass", "fail") else {}


def flag(row: Mapping[str, Any]) -> str:
    """The terminal row's flag: a lossless claim broken, or a lossy verifier's violations."""
    a = _audit(row)
    if a.get("gates"):
        return " NOT-LOSSLESS"
    if a.get("status") == "run" and a.get("violations"):
        return f" (viol. {100 * a['violation_rate']:.0f}%)"
    return ""


def gates(row: Mapping[str, Any]) -> bool:
    return bool(_audit(row).get("gates"))


def token(text: Any) -> str:
    return printable(repr(str(text)))


def violation_text(v: Mapping[str, Any]) -> str:
    return (
        f"prompt {v['prompt_id']} token {v['position']}: target {token(v['target_text'])} (id {v['target_token']}), "
        f"emitted {token(v['emitted_text'])} (id {v['emitted_token']}), gap {v['gap']:.3g} nats"
    )


def junit_properties(row: Mapping[str, Any]) -> list[tuple[str, Any]]:
    a = _audit(row)
    if not a:
        return []
    props: list[tuple[str, Any]] = [("tais.audit_status", a["status"])]
    if a["status"] != "run":
        return props + [("tais.audit_why", a["why"])]
    props += [
        ("tais.audit_violations", len(a["violations"])),
        ("tais.audit_near_ties", a["near_ties"]),
        ("tais.audit_tolerance", a["tolerance"]),
        ("tais.audit_tolerance_source", a["tolerance_source"]),
    ]
    return props + [("tais.audit_violation", violation_text(v)) for v in a["violations"]]


def summary_lines(rows: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str | None]]:
    """Said once per run: not applicable / not run with why, else the totals, tolerance and cost."""
    audits = [(r, _audit(r)) for r in rows if _audit(r)]
    if not audits:
        return
    for status in ("not applicable", "not run"):
        whys = sorted({a["why"] for _, a in audits if a["status"] == status})
        for why in whys:
            n = sum(a["status"] == status and a["why"] == why for _, a in audits)
            yield f"tais: token audit {status} ({n} task(s)): {printable(why)}", None
    ran = [(r, a) for r, a in audits if a["status"] == "run"]
    if not ran:
        return
    bad = sum(len(a["violations"]) for _, a in ran)
    if not any(a["audited"] for _, a in ran):
        yield (
            f"tais: token audit: 0 violations; every answer of {len(ran)} task(s) is byte-identical, nothing to score",
            None,
        )
        return
    sources = sorted({f"{a['tolerance']:.3g} nats from {a['tolerance_source']}" for _, a in ran})
    yield (
        f"tais: token audit: {bad} violation(s), {sum(a['near_ties'] for _, a in ran)} near-tie(s) in "
        f"{sum(a['audited'] for _, a in ran)} audited answer(s) of {len(ran)} task(s); tolerance {'; '.join(sources)}",
        "red" if any(a["gates"] for _, a in ran) else None,
    )
    cost = total_cost([a.get("cost") for _, a in ran])
    if cost is not None:
        yield f"tais: token audit cost: {cost_sentence(cost)}", None


def total_cost(costs: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The scoring of every screen of the run (each screen's timers once, however many tasks share them)."""
    unique = {tuple(sorted((k, str(v)) for k, v in c.items())): c for c in costs if c}
    if not unique:
        return None
    out: dict[str, Any] = {"audited": 0, "scored_now": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    for c in unique.values():
        for k in ("audited", "scored_now", "seconds", "cpu_seconds"):
            out[k] += c.get(k, 0)
        out.setdefault("scorer", c.get("scorer"))
        if c.get("engine_started_for_audit"):
            out["engine_started_for_audit"] = True
    if out["scored_now"]:
        out["cpu_seconds_per_answer"] = out["cpu_seconds"] / out["scored_now"]
    return out


def cost_sentence(cost: Mapping[str, Any]) -> str:
    if not cost.get("scored_now"):
        return f"{cost.get('audited', 0)} answer(s), every score reused from the store (no engine work)"
    return (
        f"{cost['scored_now']} answer(s) scored on the target engine ({cost.get('scorer')}) in {cost['seconds']:.2f} s, "
        f"{cost['cpu_seconds']:.2f} s CPU: {cost['cpu_seconds_per_answer']:.3f} s CPU per audited answer"
        + ("; engine start(s) for the audit alone not counted" if cost.get("engine_started_for_audit") else "")
    )


def _with_violations(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if _audit(r).get("violations")]


def markdown_lines(rows: Sequence[Mapping[str, Any]], md_escape: Any) -> list[str]:
    lines = [f"- {md_escape(line)}" for line, _ in summary_lines(rows)]
    if not lines:
        return []
    lines = ["", "### Token audit", ""] + lines
    for r in _with_violations(rows):
        a = _audit(r)
        verdict = "fails the task (lossless claim)" if a["gates"] else f"{a['verifier']}, reported"
        lines.append(f"- **{md_escape(label(r))}**: {len(a['violations'])} violation(s), {verdict}")
        lines += [f"  - `{md_escape(violation_text(v))}`" for v in a["violations"][:MD_VIOLATIONS]]
        if len(a["violations"]) > MD_VIOLATIONS:
            lines.append(f"  - ... {len(a['violations']) - MD_VIOLATIONS} more in report.json and report.html")
    return lines


def html_parts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    said = [line for line, _ in summary_lines(rows)]
    if not said:
        return []
    esc = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    parts = ["<h2>Token audit</h2>"] + [f"<p class='audit'>{esc(line)}</p>" for line in said]
    bad = _with_violations(rows)
    if bad:
        parts += [
            "<table id='audit'>",
            "<tr><th>Task</th><th>Prompt</th><th>Position</th><th>Target token</th><th>Emitted token</th><th>Gap (nats)</th></tr>",
        ]
        for r in bad:
            for v in _audit(r)["violations"]:
                parts.append(
                    f"<tr><td>{esc(label(r))}</td><td>{esc(v['prompt_id'])}</td><td>{v['position']}</td>"
                    f"<td><code>{esc(token(v['target_text']))}</code> ({v['target_token']})</td>"
                    f"<td><code>{esc(token(v['emitted_text']))}</code> ({v['emitted_token']})</td><td>{v['gap']:.3g}</td></tr>"
                )
        parts.append("</table>")
    return parts
