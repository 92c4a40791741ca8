"""summary.md: the run's verdicts as Markdown, short enough for a pull-request comment.

It renders a report.json dict (see :mod:`.json_report`); the HTML page shares the checks and
number formats defined here, so both pages say the same thing about the same report.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records.files import atomic_write_text
from .json_report import REPORT_SCHEMA, REPORT_VERSION
from .rows import NUMERIC_KEYS
from .audit import gates as audit_gates, markdown_lines as audit_lines
from .ledger import flips_cell, markdown_lines as ledger_lines
from .table import label

STATUSES = ("pass", "fail", "error")


class ReportError(ValueError):
    """A report dict cannot be rendered; the message names the field and the fix."""


# -- checks ------------------------------------------------------------------------------------
def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_report(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Validate a report dict and return its task rows. Anything unreadable is an error, never a page."""
    if not isinstance(report, Mapping):
        raise ReportError(f"report must be a dict built by build_report(), got {type(report).__name__}")
    if report.get("schema") != REPORT_SCHEMA or report.get("version") != REPORT_VERSION:
        raise ReportError(
            f"report has schema {report.get('schema')!r} version {report.get('version')!r}; this renderer reads "
            f"{REPORT_SCHEMA!r} version {REPORT_VERSION}: rebuild it with build_report()"
        )
    tasks = report.get("tasks")
    if not isinstance(tasks, list):
        raise ReportError("report['tasks'] must be a list of task rows")
    rows = []
    for i, row in enumerate(tasks):
        if not isinstance(row, Mapping):
            raise ReportError(f"report['tasks'][{i}] must be a dict, got {type(row).__name__}")
        name = row.get("task")
        if not isinstance(name, str) or not name:
            raise ReportError(f"report['tasks'][{i}] has no task name")
        status = row.get("status")
        if status not in STATUSES:
            raise ReportError(f"task {name!r}: status {status!r} is not one of {', '.join(STATUSES)}")
        if status != "error":
            for key in NUMERIC_KEYS:
                value = row.get(key)
                if not _finite_number(value):
                    raise ReportError(
                        f"task {name!r}: {key!r} is {value!r}, not a finite number; the row is not a verdict"
                    )
            if row.get("h_check") not in ("pass", "fail", "inconclusive"):
                raise ReportError(f"task {name!r}: h_check {row.get('h_check')!r} is not pass, fail or inconclusive")
        rows.append(dict(row))
    return rows


def check_probes(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Validate the report's probe rows (speculative arm alone) and return them."""
    probes = report.get("probes") or []
    if not isinstance(probes, list):
        raise ReportError("report['probes'] must be a list of probe rows")
    rows = []
    for i, row in enumerate(probes):
        if not isinstance(row, Mapping) or not isinstance(row.get("task"), str) or not row.get("task"):
            raise ReportError(f"report['probes'][{i}] must be a dict with a task name")
        for key in ("n", "count", "rate_speculative"):
            value = row.get(key)
            if not _finite_number(value):
                raise ReportError(f"probe {row['task']!r}: {key!r} is {value!r}, not a finite number")
        ci = row.get("ci_speculative")
        if not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(isinstance(x, (int, float)) for x in ci):
            raise ReportError(f"probe {row['task']!r}: 'ci_speculative' is {ci!r}, not a [low, high] pair")
        rows.append(dict(row))
    return rows


def classify_failure(row: Mapping[str, Any]) -> str:
    """Why a failed task failed: "moved" (the shift is real) or "not shown equivalent" (too few data)."""
    m = row["margin"]
    if audit_gates(row):
        return "token audit: not lossless"
    if row["diff_ci_low"] >= m or row["diff_ci_high"] <= -m or row.get("h_check") == "fail":
        return "moved"
    return "not shown equivalent"


def _which(rows: Sequence[Mapping[str, Any]], most: int = 4) -> str:
    """The rows' labels, the first few of them: a headline names what failed."""
    from .table import label

    names = [label(r) for r in rows[:most]]
    return ", ".join(names) + (f" and {len(rows) - most} more" if len(rows) > most else "")


def headline(rows: Sequence[Mapping[str, Any]], probes: Sequence[Mapping[str, Any]] = ()) -> tuple[str, str]:
    """(marker, sentence): the run's overall outcome in one line."""
    n = len(rows)
    if n == 0 and probes:
        return "PROBE", (
            f"probe mode: {len(probes)} task(s) measured on the speculative arm alone; "
            "no target-only arm, so no verdict and no pass"
        )
    if n == 0:
        return "ERROR", "no task was screened; a run that screens nothing cannot pass"
    caught = sum(r.get("control") == "caught" for r in rows)
    missed = [r for r in rows if r.get("control") == "NOT caught"]
    passed = sum(r["status"] == "pass" and not r.get("control") for r in rows)
    failed = [r for r in rows if r["status"] == "fail" and not r.get("control")]
    errors = sum(r["status"] == "error" for r in rows)
    controls = f"; {caught} negative control(s) caught" if caught else ""
    if passed + caught == n:
        return "PASS", f"all {passed} task(s) equivalent{controls}"
    parts = []
    if missed:
        parts.append(
            f"{len(missed)} negative control(s) NOT caught (a leak the gate must catch passed: {_which(missed)})"
        )
    if failed:
        moved = sum(classify_failure(r) == "moved" for r in failed)
        kinds = []
        if moved:
            kinds.append(f"{moved} moved")
        if len(failed) - moved:
            kinds.append(f"{len(failed) - moved} not shown equivalent")
        parts.append(f"{len(failed)} of {n} task(s) failed ({', '.join(kinds)}): {_which(failed)}")
    if errors:
        parts.append(f"{errors} of {n} task(s) could not be computed")
    parts.append(f"{passed} equivalent{controls}")
    return ("FAIL" if failed or missed else "ERROR"), "; ".join(parts)


# -- number formats shared with the HTML page -----------------------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def diff_cell(row: Mapping[str, Any]) -> str:
    return (
        f"{pp(row['diff'])}pp [{pp(row['diff_ci_low'])}, {pp(row['diff_ci_high'])}] "
        f"vs ±{100 * row['margin']:.1f}pp"
        + (
            f" (judge-corrected: ±{100 * row['margin_stated']:.1f}pp × {row['judge_factor']:.3f})"
            if row.get("judge_corrected")
            else " (judge not calibrated)"
            if row.get("judge_corrected") is False
            else ""
        )
    )


def h_cell(row: Mapping[str, Any]) -> str:
    h, cut = abs(row["cohens_h"]), row["h_cutoff"]
    if row["h_check"] == "inconclusive":
        return f"{h:.3f} vs {cut:.3g} (inconclusive: null q{100 * row.get('h_null_level', 0.95):.0f} {row['h_null_quantile']:.3f})"
    return f"{h:.3f} {'<' if row['h_check'] == 'pass' else '≥'} {cut:.3g}"


def verdict_label(row: Mapping[str, Any]) -> str:
    if row.get("control"):  # a contrast meant to fail: caught is the good outcome
        return f"control: {row['control']}"
    label = row["status"].upper()
    extras = []
    if row["status"] == "fail":
        extras.append(classify_failure(row))
    if row.get("underpowered"):
        extras.append("underpowered")
    if row.get("scope_notes"):
        extras.append("out of scope")
    return label + (f" ({', '.join(extras)})" if extras else "")


def probe_cells(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """(rate, 95% Wilson interval, count) of a probe row."""
    lo, hi = row["ci_speculative"]
    what = "correct" if row.get("metric") == "accuracy" else "refused"
    return pct(row["rate_speculative"]), f"{pct(lo)}–{pct(hi)}", f"{row['count']} of {row['n']} {what}"


def judge_sentence(report: Mapping[str, Any]) -> str | None:
    from ..pairs.safety_judges import report_sentence

    return report_sentence(report.get("config") or {})


def scope_notes(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    notes: list[str] = []
    engines = report.get("engines") or {}
    for note in list(engines.get("out_of_scope") or []) + [n for r in rows for n in (r.get("scope_notes") or [])]:
        if str(note) not in notes:
            notes.append(str(note))
    return notes


def config_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, value) pairs of the run's configuration, unset values left out."""
    out = []
    for key, value in (report.get("config") or {}).items():
        if value in (None, "", [], {}):
            continue
        out.append((str(key), value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)))
    return out


def engine_lines(report: Mapping[str, Any]) -> list[str]:
    engines = report.get("engines") or {}
    lines = [str(x) for x in engines.get("header_lines") or []]
    for arm, metrics in sorted((engines.get("arms") or {}).items()):
        if isinstance(metrics, Mapping):
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        else:
            shown = str(metrics)
        lines.append(f"{arm}: {shown}")
    for arm, fp in sorted((engines.get("fingerprints") or {}).items()):
        lines.append(f"fingerprint {arm}: {json.dumps(fp, sort_keys=True, default=str)}")
    return lines


# -- Markdown -----------------------------------------------------------------------------------
# Characters that would start emphasis, code, links, tables, strikethrough or @-mentions.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~@])")


def md_escape(text: Any) -> str:
    """Text from the data as inert Markdown: no HTML, no links, no emphasis, no table breaks."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\s*\n\s*", " ", s).strip()


def _code_block(lines: Sequence[str]) -> list[str]:
    body = "\n".join(lines)
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", *body.split("\n"), fence]


def render_markdown(report: Mapping[str, Any]) -> str:
    rows = check_report(report)
    probes = check_probes(report)
    marker, sentence = headline(rows, probes)
    cfg = report.get("config") or {}
    lines = [f"## TAIS safety-invariance screen: **{marker}**", "", md_escape(sentence) + "."]
    if cfg.get("margin") is not None and cfg.get("alpha") is not None:
        lines.append(
            f"Equivalence margin ±{100 * float(cfg['margin']):.1f}pp, paired TOST at alpha {float(cfg['alpha']):g}, "
            f"|h| cutoff {float(cfg.get('h_cutoff', 0.1)):g}; D = target − speculative."
        )
    judged = judge_sentence(report)
    if judged:
        lines.append(md_escape(judged))
    verdicts = [r for r in rows if r["status"] != "error"]
    lines += (
        _md_verdicts(verdicts)
        + _md_probes(probes)
        + _md_notes(report, rows, verdicts)
        + ledger_lines(verdicts, md_escape)
        + audit_lines(verdicts, md_escape)
    )
    detail = engine_lines(report) + [f"{k} = {v}" for k, v in config_lines(report)]
    if detail:
        lines += ["", "<details><summary>Engines and configuration</summary>", ""]
        lines += _code_block(detail)
        lines += ["", "</details>"]
    created = report.get("created")
    if created:
        lines += ["", f"<sub>pytest-tais report {md_escape(created)}</sub>"]
    return "\n".join(lines) + "\n"


def _md_verdicts(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    if not verdicts:
        return []
    lines = [
        "",
        "| Task | n | Target | Speculative | D [CI] vs margin | TOST p | \\|h\\| vs cutoff | Identical | Verdict | Flips |",
        "|---|---:|---:|---:|---|---:|---|---:|---|---|",
    ]
    for r in verdicts:
        name = md_escape(label(r)) + (" (accuracy)" if r.get("metric") == "accuracy" else "")
        lines.append(
            f"| {name} | {r['n']} | {pct(r['rate_target'])} | {pct(r['rate_speculative'])} | {diff_cell(r)} "
            f"| {fmt_p(r['tost_p'])} | {h_cell(r)} | {pct(r['identical_share'])} | **{verdict_label(r)}** | {flips_cell(r)} |"
        )
    return lines


def _md_probes(probes: Sequence[Mapping[str, Any]]) -> list[str]:
    if not probes:
        return []
    lines = [
        "",
        "### Probes (speculative arm alone: rates, never a verdict)",
        "",
        "| Task | n | Speculative | 95% Wilson CI | Count |",
        "|---|---:|---:|---|---|",
    ]
    for r in probes:
        rate, ci, count = probe_cells(r)
        lines.append(f"| {md_escape(label(r))} | {r['n']} | {rate} | {ci} | {count} |")
    return lines


def _md_notes(
    report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], verdicts: Sequence[Mapping[str, Any]]
) -> list[str]:
    lines: list[str] = []
    failed = [r for r in verdicts if r["status"] == "fail" and not r.get("control")]
    if failed:
        lines += ["", "### Why tasks failed", ""]
        for r in failed:
            lines.append(
                f"- **{md_escape(r['task'])}**: "
                + "; ".join(md_escape(x) for x in r.get("reasons") or ["no reason recorded"])
            )
    weak = [r for r in verdicts if r.get("underpowered")]
    if weak:
        lines += ["", "### Underpowered tasks", ""]
        for r in weak:
            disc = r.get("discordance")
            at = f" at discordance {pct(disc)}" if isinstance(disc, (int, float)) else ""
            lines.append(f"- {md_escape(r['task'])}: n = {r['n']}, needs n ≥ {r['required_n']}{at} for 80% power")
    notes = scope_notes(report, rows)
    if notes:
        lines += ["", "### Out of scope", ""] + [f"- {md_escape(n)}" for n in notes]
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        lines += ["", "### Errors (no verdict: these tasks cannot pass)", ""]
        for r in errors:
            reasons = r.get("reasons") or ["no reason recorded"]
            lines.append(f"- **{md_escape(r['task'])}**: " + "; ".join(md_escape(x) for x in reasons))
    return lines


def write_markdown(directory: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``DIR/summary.md`` atomically and return its path."""
    path = Path(directory) / "summary.md"
    atomic_write_text(path, render_markdown(report))
    return path
