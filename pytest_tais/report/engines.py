"""Engine facts for the reports: one process's snapshot, the run's merge, and the terminal table."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

#: (column, metric key, format) of the per-arm table in the terminal summary.
_COLUMNS = (
    ("arm", None, "{}"),
    ("starts", "engine_starts", "{}"),
    ("prompts", "prompts", "{}"),
    ("generated", "generated", "{}"),
    ("reused", "reused", "{}"),
    ("tok/s", "tokens_per_s", "{:.1f}"),
    ("acceptance", "draft_acceptance_rate", "{:.1%}"),
    ("mean accepted", "mean_accepted_length", "{:.2f}"),
)


def snapshot(worker: str, outputs: Iterable[tuple[str, Any]]) -> dict[str, Any] | None:
    """Engine metrics, fingerprints and header lines of the screens one process generated."""
    snap: dict[str, Any] = {"worker": worker, "metrics": {}, "fingerprints": {}, "out_of_scope": [], "header_lines": []}
    for label, out in outputs:
        suffix = f" [{label}]" if label else ""
        snap["metrics"].update({f"{arm}{suffix}": m for arm, m in out.metrics.items()})
        snap["fingerprints"].update({f"{arm}{suffix}": f for arm, f in out.fingerprints.items()})
        snap["out_of_scope"].extend(n for n in out.out_of_scope if n not in snap["out_of_scope"])
        snap["header_lines"].extend(out.header_lines if not suffix else [f"{line}{suffix}" for line in out.header_lines])
    return snap if snap["metrics"] or snap["header_lines"] else None


def merge(snapshots: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Engine metrics summed over the processes that reported them (engine starts add up)."""
    per_arm: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for _, engine in sorted(snapshots.items()):
        for arm, m in (engine.get("metrics") or {}).items():
            agg = per_arm.setdefault(arm, {})
            for k, v in m.items():
                if k == "engine_starts" and isinstance(v, (int, float)):
                    agg[k] = agg.get(k, 0) + v
                else:
                    agg.setdefault(k, v)
        for key in ("fingerprints", "out_of_scope", "header_lines"):
            extra.setdefault(key, engine.get(key))
    return {"arms": per_arm, **{k: v for k, v in extra.items() if v}}


def _cell(metrics: Mapping[str, Any], key: str | None, fmt: str, arm: str) -> str:
    if key is None:
        return arm
    value = metrics.get(key)
    if value is None or isinstance(value, bool):
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def format_arms(arms: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The per-arm table: starts, prompts, generated, reused, tok/s, acceptance."""
    if not arms:
        return []
    rows: list[Sequence[str]] = [tuple(c for c, _, _ in _COLUMNS)]
    rows += [tuple(_cell(m, key, fmt, arm) for _, key, fmt in _COLUMNS) for arm, m in sorted(arms.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
