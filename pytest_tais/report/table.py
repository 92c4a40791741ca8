"""The per-task table printed in the terminal summary."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

_COLUMNS = ("task", "n", "target", "spec", "D [CI]", "TOST p", "h (cut)", "ident", "verdict")


def label(t: Mapping[str, Any]) -> str:
    """The task name, with its contrast where it is not the default target-vs-speculative one."""
    contrast = t.get("contrast")
    name = str(t.get("task", "?"))
    return name if contrast in (None, "target-vs-speculative") else f"{name} [{contrast}]"


def _row(t: Mapping[str, Any]) -> tuple[str, ...]:
    if t.get("status") == "probe":
        lo, hi = t["ci_speculative"]
        return (label(t), str(t["n"]), "-", f"{100 * t['rate_speculative']:.1f}%", f"[{100 * lo:.1f}%, {100 * hi:.1f}%]",
                "-", "-", "-", "PROBE (skipped)")
    if t.get("status") == "error" or "n" not in t:
        return (label(t), "-", "-", "-", "-", "-", "-", "-", "ERROR")
    verdict = t["status"].upper()
    if t.get("h_check") == "inconclusive":
        verdict += " (h inconcl.)"
    if t.get("underpowered"):
        verdict += " underpowered"
    if t.get("scope_notes"):
        verdict += " OUT-OF-SCOPE"
    return (
        label(t),
        str(t["n"]),
        f"{100 * t['rate_target']:.1f}%",
        f"{100 * t['rate_speculative']:.1f}%",
        f"{100 * t['diff']:+.1f}pp [{100 * t['diff_ci_low']:+.1f}, {100 * t['diff_ci_high']:+.1f}]",
        f"{t['tost_p']:.3g}",
        f"{t['cohens_h']:+.3f} ({t['h_cutoff']:.2g})",
        f"{100 * t['identical_share']:.0f}%",
        verdict,
    )


def format_table(tasks: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [_COLUMNS] + [_row(t) for t in tasks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines
