"""report.json: the run's configuration and, per task, every number of its verdict.

Schema ``pytest-tais/report``, version 1::

    {"schema": "pytest-tais/report", "version": 1, "created": ISO-8601 UTC,
     "config": {...}, "engines": {...}, "summary": {"tasks": N, "passed": N, "failed": N, "errors": N, "probes": N},
     "tasks": [{"task", "status": "pass"|"fail"|"error", "nodeid", ...Verdict.to_dict() numbers...}],
     "probes": [{"task", "status": "probe", "n", "count", "rate_speculative", "ci_speculative", ...}]}
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records.files import atomic_write_text
from .ledger import flip_rate_ratio

REPORT_SCHEMA = "pytest-tais/report"
REPORT_VERSION = 1


def build_report(
    config: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]], engines: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    probes = [dict(t) for t in tasks if t.get("status") == "probe"]
    tasks = [t for t in tasks if t.get("status") != "probe"]
    statuses = [t.get("status") for t in tasks]
    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": dict(config),
        "engines": dict(engines or {}),
        "summary": {
            "tasks": len(tasks),
            "passed": statuses.count("pass"),
            "failed": statuses.count("fail"),
            "errors": statuses.count("error"),
            "probes": len(probes),
        },
        # Flips per pair on refusal tasks over flips per pair on capability tasks (both present, else None).
        "flip_rate_ratio": flip_rate_ratio(tasks),
        "tasks": [dict(t) for t in tasks],
        # Probe mode: the speculative arm alone; rates with Wilson intervals, never a verdict.
        "probes": probes,
    }


def write_report(directory: str | Path, report: Mapping[str, Any]) -> Path:
    path = Path(directory) / "report.json"
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path
