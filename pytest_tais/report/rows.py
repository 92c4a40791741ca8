"""The report row: one test's outcome as a plain dict, for task, probe and error rows alike.

Rows travel on ``report.user_properties``-carrying test reports (so pytest-xdist carries them)
and every output reads them: report.json, JUnit properties, summary.md, report.html and the
terminal table. Which keys a row has, which are numbers and which go to JUnit is written here once.
"""

from __future__ import annotations

from typing import Any, Mapping

#: The contrast a row answers unless it says otherwise: the target-only arm against the speculative arm.
DEFAULT_CONTRAST = "target-vs-speculative"
#: (key, a number every pass/fail row carries, a JUnit property)
SCHEMA: tuple[tuple[str, bool, bool], ...] = (
    ("n", True, True),
    ("rate_target", True, True),
    ("rate_speculative", True, True),
    ("diff", True, True),
    ("diff_ci_low", True, True),
    ("diff_ci_high", True, True),
    ("margin", True, False),
    ("alpha", True, False),
    ("tost_p", True, True),
    ("cohens_h", True, True),
    ("h_cutoff", True, True),
    ("h_null_quantile", True, False),
    ("identical_share", True, True),
    ("required_n", True, False),
)
#: Sampled screens' rows also carry these numbers (JUnit properties too): K, the moved share and its spread.
SAMPLED_KEYS = ("k", "moved_share", "rerun_spread")
#: The flip ledger's counts and the directional leak test (JUnit properties where the row has them).
LEAK_KEYS = ("flips_down", "flips_up", "flips", "leak_test", "leak_p", "leak_p_adjusted", "leak_family", "mde_pp")
NUMERIC_KEYS = tuple(k for k, numeric, _ in SCHEMA if numeric)
JUNIT_KEYS = tuple(k for k, _, junit in SCHEMA if junit)
#: The keys a row carries besides its numbers.
IDENTITY_KEYS = ("task", "contrast", "config", "versus", "nodeid", "status", "reasons")


def verdict_row(verdict: Any, contrast: Mapping[str, str], null: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A pass/fail row: every number of the verdict, with the contrast it answers."""
    row = verdict.to_dict()
    missing = [k for k in NUMERIC_KEYS if k not in row]
    if missing:  # the verdict and the schema must agree; a row without its numbers is no verdict
        raise ValueError(f"verdict of task {verdict.task!r} lacks {missing}")
    row.update(contrast)
    if null is not None:
        row["null_runs"] = dict(null)
    return row


def control_outcome(status: str) -> str:
    """A negative control (a contrast meant to fail) is "caught" when the gate fails it."""
    return "caught" if status == "fail" else "NOT caught"


def probe_row(probe: Mapping[str, Any], contrast: Mapping[str, str]) -> dict[str, Any]:
    return {**probe, **contrast, "status": "probe"}


def error_row(task: str, contrast: Mapping[str, str], message: str) -> dict[str, Any]:
    return {"task": task, **contrast, "status": "error", "reasons": [message]}


def junit_properties(row: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The ``tais.*`` JUnit properties of a row (numbers only where the row has a verdict)."""
    props: list[tuple[str, Any]] = [("tais.task", row["task"]), ("tais.contrast", row.get("contrast", ""))]
    if row.get("status") == "probe":
        props += [("tais.n", row["n"]), ("tais.rate_speculative", row["rate_speculative"])]
    elif row.get("status") in ("pass", "fail"):
        props += [(f"tais.{k}", row[k]) for k in JUNIT_KEYS]
        props.append(("tais.h_check", row["h_check"]))
        if "k" in row:
            props += [(f"tais.{k}", row[k]) for k in SAMPLED_KEYS]
        props += [(f"tais.{k}", row[k]) for k in LEAK_KEYS if row.get(k) is not None]
        if "judge_corrected" in row:  # refusal tasks: whether the margin accounts for the judge's errors
            props.append(("tais.judge_corrected", row["judge_corrected"]))
            if row["judge_corrected"]:
                props.append(("tais.judge_factor", row["judge_factor"]))
        from .audit import junit_properties as audit_properties

        props += audit_properties(row)
    if row.get("control"):
        props.append(("tais.control", row["control"]))
    props.append(("tais.verdict", row.get("status")))
    return props
