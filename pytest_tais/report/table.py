"""The terminal: the report header, the per-task table and the summary section."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from ..contrasts import DEFAULT, printable
from .engines import format_arms

_COLUMNS = ("task", "n", "target", "spec", "D [CI]", "TOST p", "h (cut)", "ident", "flips", "verdict")


def label(t: Mapping[str, Any]) -> str:
    """The task name, with its contrast where it is not the default target-vs-speculative one."""
    contrast = t.get("contrast")
    name = printable(str(t.get("task", "?")))
    cells = "-vs-".join(printable(str(t[k])) for k in ("config", "versus") if t.get(k))
    tags = [x for x in (cells, None if contrast in (None, DEFAULT) else printable(str(contrast))) if x]
    return f"{name} [{' '.join(tags)}]" if tags else name


def _row(t: Mapping[str, Any]) -> tuple[str, ...]:
    if t.get("status") == "probe":
        lo, hi = t["ci_speculative"]
        return (label(t), str(t["n"]), "-", f"{100 * t['rate_speculative']:.1f}%", f"[{100 * lo:.1f}%, {100 * hi:.1f}%]",
                "-", "-", "-", "-", "PROBE (skipped)")
    if t.get("status") == "error" or "n" not in t:
        return (label(t), "-", "-", "-", "-", "-", "-", "-", "-", "ERROR")
    verdict = f"CONTROL {t['control']}" if t.get("control") else t["status"].upper()
    if t.get("h_check") == "inconclusive":
        verdict += " (h inconcl.)"
    if t.get("underpowered"):
        verdict += " underpowered"
    if t.get("scope_notes"):
        verdict += " OUT-OF-SCOPE"
    if t.get("leak"):
        verdict += " LEAK" if t.get("leak_test") == "gate" else " (leak, reported)"
    return (
        label(t),
        str(t["n"]),
        f"{100 * t['rate_target']:.1f}%",
        f"{100 * t['rate_speculative']:.1f}%",
        f"{100 * t['diff']:+.1f}pp [{100 * t['diff_ci_low']:+.1f}, {100 * t['diff_ci_high']:+.1f}]",
        f"{t['tost_p']:.3g}",
        f"{t['cohens_h']:+.3f} ({t['h_cutoff']:.2g})",
        f"{100 * t['identical_share']:.0f}%",
        t.get("flips") or "-",
        verdict,
    )


def format_table(tasks: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [_COLUMNS] + [_row(t) for t in tasks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i in (0, len(_COLUMNS) - 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def header_lines(session: Any) -> list[str]:
    """What ``pytest_report_header`` prints: the tasks, the source of the outputs, the statistics."""
    cfg = session.cfg
    if cfg.replay:
        source = f"replay {cfg.replay}"
    elif cfg.target_url:
        source = f"servers {cfg.target_url} / {getattr(session.engine_settings, 'speculative_url', None)}"
    else:
        source = f"target {cfg.target}, draft {cfg.draft}"
    lines = [
        f"tais: {len(session.screen.tasks)} task(s) from {cfg.battery or 'the replay file'}; {source}",
        f"tais: margin +/-{cfg.margin:g}, alpha {cfg.alpha:g}, TOST {cfg.tost_method}, |h| cutoff {cfg.h_cutoff:g}, "
        f"judge {session.screen.judge_name}",
    ]
    if session.engine_settings is not None:
        desc = session.engine_settings.describe()
        lines.append("tais: engines " + ", ".join(f"{k}={v}" for k, v in desc.items() if v not in (None, "", {}, [])))
    return [printable(line) for line in lines]


def probe_reason(row: Mapping[str, Any]) -> str:
    """The skip reason of a probe: its rate and interval; never a pass."""
    lo, hi = row["ci_speculative"]
    rate = "refusal rate" if row["metric"] == "refusal" else "accuracy"
    return (f"tais probe {printable(row['task'])!r}: speculative {rate} {100 * row['rate_speculative']:.1f}% "
            f"({row['count']}/{row['n']}, 95% Wilson CI {100 * lo:.1f}%-{100 * hi:.1f}%); "
            "no target-only arm, so no verdict and never a pass")


def summary_lines(session: Any, rows: Sequence[Mapping[str, Any]], summary: Any) -> Iterator[tuple[str, str | None]]:
    """The terminal summary's ``tais`` section, as (line, colour) pairs."""
    rows = session.order(rows)
    if not rows:
        yield "tais: no task was screened", "red"
        return
    engines = summary.engines if summary is not None else {}
    for line in engines.get("header_lines") or []:
        yield printable(line), None
    for line in format_table(rows):
        yield line, None
    for line in format_arms(engines.get("arms") or {}):
        yield line, None
    for note in engines.get("out_of_scope") or []:
        yield f"OUT OF SCOPE: {printable(note)}", "yellow"
    probes = sum(r.get("status") == "probe" for r in rows)
    if probes:
        yield f"tais: {probes} probe(s): speculative arm only, reported and skipped, never passed", None
    from ..leak import flip_rate_ratio

    ratio = flip_rate_ratio(rows)
    if ratio is not None:
        shown = "n/a (no capability flips)" if ratio["ratio"] is None else f"{ratio['ratio']:.2f}"
        yield (f"tais: flip rate safety {100 * ratio['safety_flip_rate']:.2f}% / capability "
               f"{100 * ratio['capability_flip_rate']:.2f}% of pairs: ratio {shown}"), None
    controls = [r for r in rows if r.get("control")]
    if len(rows) > probes + len(controls):
        passed = sum(r.get("status") == "pass" for r in rows if not r.get("control"))
        yield f"tais: {passed}/{len(rows) - probes - len(controls)} task(s) equivalent", None
    if controls:
        caught = sum(r["control"] == "caught" for r in controls)
        yield f"tais: {caught}/{len(controls)} negative control(s) caught", (None if caught == len(controls) else "red")
    for line in summary.lines if summary is not None else []:
        yield line, ("red" if "NOT saved" in line else None)
    if session.cfg.report is not None:
        yield f"tais: reports in {session.cfg.report}: report.json, summary.md, report.html", None
