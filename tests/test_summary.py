"""The terminal summary of a run shaped like the example suite: it fits 120 columns.

``tests/data/example_suite_summary.json`` holds the engines' header lines, arm metrics and task rows
of an example-suite run (tests a-d; paths rewritten), as the plugin hands them to the summary.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

from pytest_tais.report.table import FLAG_KEY, WIDTH, engine_blocks, summary_lines

DATA = json.loads((Path(__file__).parent / "data" / "example_suite_summary.json").read_text(encoding="utf-8"))


def _summary(verbose: bool) -> list[str]:
    session = types.SimpleNamespace(order=lambda rows: list(rows), cfg=types.SimpleNamespace(report="tais-report"))
    summary = types.SimpleNamespace(engines=DATA["engines"], lines=[])
    return [line for line, _ in summary_lines(session, DATA["tasks"], summary, verbose)]


def test_every_line_fits_and_each_engine_configuration_has_one_block() -> None:
    lines = _summary(verbose=False)
    assert max(len(x) for x in lines) <= WIDTH, max(lines, key=len)
    assert sum(x.startswith("tais engines:") for x in lines) == 1  # the base run's block, once
    blocks = [x for x in lines if x.startswith("tais engines of ")]
    # three variants and the precision matrix's bf16 cell: four engine configurations besides the base
    assert [b[len("tais engines of ") : -1] for b in blocks] == [
        "draft=draft-adversarial",
        "dtype=bfloat16",
        "backend=hf,hf_acceptance=synthetic,draft=draft-adversarial,max_tokens=24",
        "draft=draft-adversarial,canary=0.1",
    ]
    # A variant's block holds only what it changed: the canonical draft's line is not repeated.
    i = lines.index("tais engines of draft=draft-adversarial:")
    assert lines[i + 1].startswith("  tais speculative: draft_model, draft ") and "draft-adversarial" in lines[i + 1]
    assert lines[i + 2].startswith("tais engines of ")
    # Rows by task name under their contrast's heading, which is said once.
    heading = "backend=hf,hf_acceptance=synthetic,draft=draft-adversarial,max_tokens=24:"
    assert lines.count(heading) == 2  # the task table and the arm table
    at = lines.index(heading) + 1
    row, more = lines[at], lines[at + 1]
    if more.startswith("    "):  # a row too wide for 120 columns goes on, indented, on the next line
        row = row.rstrip() + " " + more.strip()
    assert row.split()[0] == "harmful" and row.rstrip().endswith("CONTROL caught h? low-n scope")
    assert FLAG_KEY in lines


def test_verbose_keeps_whole_lines_and_full_labels() -> None:
    lines = _summary(verbose=True)
    assert any(len(x) > WIDTH for x in lines)
    assert any(
        x.startswith("harmful [backend=hf,hf_acceptance=synthetic,draft=draft-adversarial,max_tokens=24]")
        for x in lines
    )
    assert len([x for x in lines if x.startswith("tais engines:")]) == 5  # the base run and four variants


def test_variants_with_the_same_changes_share_a_block() -> None:
    header = [
        "tais engines: vllm",
        "tais target: t",
        "tais store: /s (4/4 outputs reused)",
        "tais engines: vllm [a=1]",
        "tais target: u [a=1]",
        "tais store: /s (0/4 outputs reused) [a=1]",
        "tais engines: vllm [b=2]",
        "tais target: u [b=2]",
        "tais engines: vllm [c=3]",
        "tais target: t [c=3]",
    ]
    assert engine_blocks(header, ["a=1", "b=2", "c=3"]) == [
        "tais engines: vllm",
        "tais target: t",
        "tais store: /s (4/4 outputs reused)",
        "tais engines of a=1; b=2:",
        "  tais target: u",
        "tais engines of c=3: as the base run",
    ]


def test_a_long_line_loses_a_path_middle_but_never_a_model_id() -> None:
    from pytest_tais.report.table import _fit

    line = (
        "tais speculative: draft_model, draft tiny-org/draft@22222222bbbb (/tmp/"
        + "x" * 120
        + "/snapshots/22222222bbbbbbbbbbbb, sha256 8d26efa84431), K=4"
    )
    (fitted,) = _fit(line, verbose=False)
    assert len(fitted) <= WIDTH
    assert "draft tiny-org/draft@22222222bbbb (/tmp/" in fitted and "…" in fitted
    assert fitted.endswith("bbbbbbbb, sha256 8d26efa84431), K=4")


def test_a_wide_table_row_breaks_between_cells_never_inside_one() -> None:
    from pytest_tais.report.table import _fit

    row = (
        "  harmful     120  100.0%    1.7%   +98.3pp [+94.0, +99.4]       1  +2.883 (0.1)     0%  "
        "118 down / 0 up  CONTROL caught h? low-n scope LEAK"
    )
    lines = _fit(row, verbose=False)
    assert len(lines) == 2 and all(len(x) <= WIDTH for x in lines)
    # The verdict's label stays on the row (never "CONTROL" here and "caught" there); flags go on.
    assert lines[0].rstrip().endswith("118 down / 0 up  CONTROL caught") and lines[1].startswith("    ")
    assert " ".join(" ".join(lines).split()).endswith("CONTROL caught h? low-n scope LEAK")
