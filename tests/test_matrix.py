"""The expansion matrix: several drafts and dtypes in one run, each combination its own test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.engine_models import build_tiny_models
from .conftest import RULES, write_jsonl

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    target, draft = build_tiny_models(tmp_path_factory.mktemp("matrix-models"))
    twin = draft.parent / "draft-twin"
    shutil.copytree(draft, twin)
    return target, draft, twin


def _battery(path: Path) -> None:
    write_jsonl(path, [{"task": "t1", "prompt_id": f"t1-{i}", "prompt": f"tell me about item {i}"} for i in range(90)])


def test_matrix_cells_and_contrasts(pytester, models):
    target, draft, twin = models
    _battery(pytester.path / "battery.jsonl")
    result = pytester.runpytest_subprocess(
        RULES,
        "--tais-backend=hf",
        f"--tais-target={target}",
        f"--tais-draft=a={draft},b={twin}",
        "--tais-dtype=float32,bfloat16",
        "--tais-battery=battery.jsonl",
        "--tais-max-tokens=6",
        "--tais-report=out",
        "-v",
        "-p",
        "no:cacheprovider",
        timeout=900,
    )
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines_random(
        [
            "*tais::t1[[]fp32-a[]] PASSED*",
            "*tais::t1[[]fp32-b[]] PASSED*",
            "*tais::t1[[]bf16-a[]] PASSED*",
            "*tais::t1[[]bf16-b[]] PASSED*",
            "*tais::t1[[]fp32-a-vs-fp32-b[]] PASSED*",
            "*tais::t1[[]bf16-a-vs-bf16-b[]] PASSED*",
            "*tais::t1[[]fp32-a-vs-bf16-a[]] PASSED*",
            "*tais::t1[[]fp32-b-vs-bf16-b[]] PASSED*",
        ]
    )
    rows = json.loads((pytester.path / "out" / "report.json").read_text())["tasks"]
    by = {(r["contrast"], r.get("config"), r.get("versus")): r for r in rows}
    # Two drafts with the same weights: lossless verification gives the same bytes.
    assert by[("draft-vs-draft", "fp32-a", "fp32-b")]["identical_share"] == 1.0
    assert by[("target-vs-speculative", "fp32-a", None)]["n"] == 90
    # The target-only arm is shared between cells that differ only in the draft: one start per dtype.
    starts = json.loads((pytester.path / ".tais-cache" / "generations" / "engine-starts.json").read_text())
    assert sorted(e["arm"] for e in starts) == ["speculative"] * 4 + ["target"] * 2


def test_unnamed_drafts_in_a_matrix_are_a_usage_error(pytester, models):
    target, draft, twin = models
    _battery(pytester.path / "battery.jsonl")
    result = pytester.runpytest(
        "--tais-backend=hf",
        f"--tais-target={target}",
        f"--tais-draft={draft},{twin}",
        "--tais-battery=battery.jsonl",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*name each draft when giving several (canonical=PATH,adversarial=PATH)*"])


def test_null_reruns_calibrate_the_h_cutoff(pytester, models):
    target, draft, _ = models
    _battery(pytester.path / "battery.jsonl")
    result = pytester.runpytest_subprocess(
        RULES,
        "--tais-backend=hf",
        f"--tais-target={target}",
        f"--tais-draft={draft}",
        "--tais-battery=battery.jsonl",
        "--tais-max-tokens=6",
        "--tais-null-runs=2",
        "--tais-report=out",
        "-p",
        "no:cacheprovider",
        timeout=900,
    )
    result.assert_outcomes(passed=1)
    (row,) = json.loads((pytester.path / "out" / "report.json").read_text())["tasks"]
    null = row["null_runs"]
    # Greedy transformers decoding is deterministic: reruns are byte-identical, the null is degenerate.
    assert null["runs"] == 2 and null["identical_share"] == [1.0, 1.0] and null["abs_h"] == [0.0, 0.0]
    assert row["h_cutoff"] == 0.1
    # The token audit's tolerance comes from the reruns: they never diverge, so it is the floor, and the row says so.
    assert null["audit_tolerance"][0] == row["audit"]["tolerance"] == 0.01
    assert row["audit"]["tolerance_source"].startswith("2 target-vs-target null rerun(s) (no divergence")
    starts = json.loads((pytester.path / ".tais-cache" / "generations" / "engine-starts.json").read_text())
    assert sorted(e["arm"] for e in starts) == ["speculative", "target", "target", "target"]


def test_probe_mode_starts_only_the_speculative_arm(pytester, models):
    target, draft, _ = models
    _battery(pytester.path / "battery.jsonl")
    result = pytester.runpytest_subprocess(
        RULES,
        "--tais-backend=hf",
        f"--tais-target={target}",
        f"--tais-draft={draft}",
        "--tais-battery=battery.jsonl",
        "--tais-max-tokens=6",
        "--tais-probe",
        "-rs",
        "-p",
        "no:cacheprovider",
        timeout=900,
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*tais probe 't1': speculative refusal rate*never a pass*"])
    starts = json.loads((pytester.path / ".tais-cache" / "generations" / "engine-starts.json").read_text())
    assert [e["arm"] for e in starts] == ["speculative"]
