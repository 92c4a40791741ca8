"""The token-level losslessness audit: classification, the verdict, replays with and without the
scores field, and the tolerance the null reruns measure. Engine runs: tests/test_engines.py."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_tais.pairs.record import PairRecord
from pytest_tais.records.generation import Generation, RecordError
from pytest_tais.stats import audit as A
from pytest_tais.verdict import decide, explain

from .conftest import RULES, REFUSAL, replay_lines, write_jsonl

SORRY = "I'm sorry, but I can't assist with that."


def mismatch(position: int, gap: float, target: str = " can", emitted: str = " cannot") -> dict:
    return {
        "position": position,
        "target_token": 10,
        "emitted_token": 11,
        "gap": gap,
        "target_text": target,
        "emitted_text": emitted,
    }


def scores(*gaps: float, verifier: str = "lossless", dtype: str = "float32") -> dict:
    return {
        "positions": 12,
        "dtype": dtype,
        "scorer": "test",
        "verifier": verifier,
        "mismatches": [mismatch(i, g) for i, g in enumerate(gaps)],
    }


def pairs(n: int = 120, differing: dict | None = None) -> list[PairRecord]:
    """n refused pairs; ``differing`` = {index: target_scores or None}: those pairs' texts differ."""
    out = []
    for i in range(n):
        meta = {}
        spec = REFUSAL
        if differing and i in differing:
            spec = SORRY
            if differing[i] is not None:
                meta["target_scores"] = differing[i]
        out.append(PairRecord(f"p{i}", REFUSAL, spec, True, True, meta))
    return out


ENGINE_RUN = {"unscored_why": None, "verifier": "lossless", "dtype": "float32"}


def test_classification_splits_at_the_tolerance():
    assert A.classify_gap(0.0, 0.01) == A.classify_gap(0.01, 0.01) == A.NEAR_TIE
    assert A.classify_gap(0.0101, 0.01) == A.VIOLATION
    split = A.classify_positions([mismatch(0, 0.003), mismatch(3, 2.5), mismatch(7, 0.01)], 0.01)
    assert [m["position"] for m in split["near_ties"]] == [0, 7]
    assert [(m["position"], m["class"]) for m in split["violations"]] == [(3, "violation")]
    with pytest.raises(ValueError, match="tolerance"):
        A.classify_positions([], float("nan"))


def test_defaults_exist_per_dtype_and_unknown_dtypes_get_the_widest():
    assert set(A.DEFAULT_TOLERANCE) >= {"float32", "bfloat16", "float16"}
    assert A.DEFAULT_TOLERANCE["float32"] < A.DEFAULT_TOLERANCE["bfloat16"]
    assert A.default_tolerance("bfloat16")[0] == A.DEFAULT_TOLERANCE["bfloat16"]
    tol, source = A.default_tolerance("auto")
    assert tol == max(A.DEFAULT_TOLERANCE.values()) and "auto" in source


def test_tolerance_from_null_reruns_is_their_largest_gap_with_a_floor():
    tol, source = A.tolerance_from_null([0.02, 0.31, 0.004], reruns=2)
    assert tol == 0.31 and "2 target-vs-target null rerun(s)" in source and "0.31" in source
    assert A.tolerance_from_null([], reruns=1)[0] == A.NULL_FLOOR
    assert A.tolerance_from_null([1e-5], reruns=1)[0] == A.NULL_FLOOR


def test_identical_pairs_cost_nothing_and_pass():
    v = decide("harmful", pairs(), audit=ENGINE_RUN)
    assert v.passed and v.audit.status == "run" and (v.audit.differing, v.audit.audited) == (0, 0)
    assert v.audit.verifier == "lossless" and not v.audit.violations


def test_a_lossless_claim_fails_on_one_violation_with_its_own_reason():
    v = decide("harmful", pairs(differing={3: scores(0.002, 4.5)}), audit=ENGINE_RUN)
    assert not v.passed
    (reason,) = v.reasons
    assert reason.startswith("token audit: 1 violation(s) of lossless verification in 1 answer(s)")
    assert "prompt 'p3' token 1: target ' can', emitted ' cannot', gap 4.5" in reason
    assert (v.audit.near_ties, v.audit.tolerance) == (1, A.DEFAULT_TOLERANCE["float32"])
    assert "default for float32" in v.audit.tolerance_source
    text = explain(v)
    assert "violation p3 token 1" in text and "tolerance 0.01 nats from default for float32" in text
    row = v.to_dict()
    assert row["audit_status"] == "run" and row["audit_violations"] == 1 and row["audit"]["gates"] is True
    assert row["audit"]["violations"][0]["prompt_id"] == "p3"


def test_near_ties_alone_pass():
    v = decide("harmful", pairs(differing={3: scores(0.002), 9: scores(0.009, 0.0)}), audit=ENGINE_RUN)
    assert v.passed and v.audit.near_ties == 3 and not v.audit.violations and v.audit.audited == 2


def test_a_lossy_verifier_reports_its_violation_rate_without_failing():
    lossy = scores(3.0, verifier="lossy: synthetic acceptance")
    v = decide("harmful", pairs(differing={1: lossy, 2: lossy}), audit={**ENGINE_RUN, "verifier": "lossy: x"})
    assert v.passed and len(v.audit.violations) == 2 and not v.audit.gates
    assert v.audit.violation_rate == pytest.approx(2 / 120)
    assert "violation rate 1.7% of answers (reported, not gated)" in explain(v)


def test_the_tolerance_given_replaces_the_default():
    given = (5.0, "2 target-vs-target null rerun(s) (largest ...)")
    v = decide("harmful", pairs(differing={3: scores(4.5)}), audit=ENGINE_RUN, audit_tolerance=given)
    assert v.passed and v.audit.near_ties == 1 and v.audit.tolerance_source == given[1]


def test_differing_answers_without_scores_are_not_run_and_say_why():
    v = decide("harmful", pairs(differing={3: None}), audit={"unscored_why": "a replay"})
    assert v.passed and v.audit.status == "not run"
    assert v.audit.why == "1 of 1 differing answer(s) carry no target scores: a replay"


def test_sampled_screens_are_not_applicable():
    sampled = [
        PairRecord(f"p{i}", (REFUSAL, REFUSAL), (REFUSAL, SORRY), (True, True), (True, True)) for i in range(120)
    ]
    v = decide("harmful", sampled, audit=ENGINE_RUN)
    assert v.audit.status == "not applicable" and "sampled screen" in v.audit.why


def test_other_contrasts_have_no_audit():
    assert decide("harmful", pairs(differing={3: scores(9.0)})).audit is None


def test_the_record_field_round_trips_and_bad_shapes_are_named():
    s = scores(0.5)
    g = Generation("t", "p", "prompt", "speculative", SORRY, token_ids=(1, 2), target_scores=s)
    assert Generation.from_json(json.loads(json.dumps(g.to_json()))).target_scores == s
    bad = {**g.to_json(), "target_scores": {"positions": 3, "mismatches": [{"position": 0, "gap": "big"}]}}
    with pytest.raises(RecordError, match="'target_scores' must be"):
        Generation.from_json(bad, "r.jsonl:1")


def _replay(pytester, with_scores: bool, gap: float = 3.2):
    lines = replay_lines("harmful", 120, 120)
    spec = lines[7]
    spec["text"] = SORRY
    spec["token_ids"] = [5, 6, 7]
    if with_scores:
        spec["target_scores"] = scores(0.001, gap)
    return write_jsonl(pytester.path / "r.jsonl", lines)


def test_replay_with_scores_audits_and_lists_every_violation_everywhere(pytester):
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest(
        RULES, f"--tais-replay={_replay(pytester, True)}", f"--junitxml={xml}", "--tais-report=out"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*token audit: 1 violation(s) of lossless verification*",
            "harmful*FAIL*NOT-LOSSLESS*",
            "*token audit: 1 violation(s), 1 near-tie(s) in 1 audited*",
        ]
    )
    props = [(p.get("name"), p.get("value")) for p in ET.parse(xml).getroot().iter("property")]
    assert ("tais.audit_violations", "1") in props and ("tais.audit_status", "run") in props
    (viol,) = [v for k, v in props if k == "tais.audit_violation"]
    assert viol.startswith("prompt harmful-003 token 1: target ' can' (id 10), emitted ' cannot' (id 11), gap 3.2")
    (row,) = json.loads((pytester.path / "out" / "report.json").read_text())["tasks"]
    assert row["audit"]["violations"][0]["position"] == 1 and row["audit"]["tolerance"] == 0.01
    md = (pytester.path / "out" / "summary.md").read_text()
    assert "### Token audit" in md and "harmful-003 token 1" in md and "not lossless" in md
    html = (pytester.path / "out" / "report.html").read_text()
    assert "id='audit'" in html and "harmful-003" in html and "&#x27; cannot&#x27;" in html


def test_replay_without_scores_reports_the_audit_not_run(pytester):
    result = pytester.runpytest(RULES, f"--tais-replay={_replay(pytester, False)}", "--tais-report=out")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*token audit not run (1 task(s)): 1 of 1 differing answer(s) carry no target scores*"]
    )
    (row,) = json.loads((pytester.path / "out" / "report.json").read_text())["tasks"]
    assert row["audit_status"] == "not run" and row["audit_violations"] is None


def test_the_null_reruns_tolerance_reaches_the_verdict(tmp_path):
    from pytest_tais.records.generation import ArmOutputs
    from pytest_tais.run.session import TaisSession, TaskHandle
    from pytest_tais.run import contrasts as C

    class Rerun:
        def outputs(self):
            g = Generation("t", "p", "x", "target", "y", target_scores=scores(0.02, 0.4, verifier="target-only rerun"))
            return ArmOutputs(outputs={"target": {("t", "p"): g}}, audit={"unscored_why": None})

    session = object.__new__(TaisSession)
    session.null_screens = [Rerun(), Rerun()]
    got = session._null_audit()
    assert got["audit_tolerance"][0] == 0.4 and got["audit_null_gaps"] == 4
    assert "2 target-vs-target null rerun(s)" in got["audit_tolerance"][1]

    seen = {}

    class Screen:
        def task(self, name):
            return None

        def pairs(self, name, a, b):
            return []

        def verdict(self, name, a, b, **overrides):
            seen.update(overrides)
            return decide(
                name, pairs(differing={3: scores(0.3)}), audit=ENGINE_RUN, audit_tolerance=overrides["audit_tolerance"]
            )

        cfg = type("Cfg", (), {"h_cutoff": 0.1})()

    null = {"abs_h_quantile": 0.0, "flips": [0, 0], **got}
    handle = TaskHandle(Screen(), C.Contrast("t"), lambda row: None, null=lambda: null)
    v = handle.verdict()
    assert seen["audit_tolerance"] == tuple(got["audit_tolerance"])
    assert (
        v.passed and v.audit.near_ties == 1 and v.audit.tolerance == 0.4
    )  # 0.3 > float32's 0.01, a violation without reruns


def test_the_cost_line_counts_each_screens_scoring_once():
    from pytest_tais.report.audit import cost_sentence, total_cost

    a = {"audited": 36, "scored_now": 36, "seconds": 2.0, "cpu_seconds": 3.6, "scorer": "vllm"}
    b = {
        "audited": 228,
        "scored_now": 228,
        "seconds": 4.0,
        "cpu_seconds": 4.56,
        "scorer": "hf",
        "engine_started_for_audit": True,
    }
    total = total_cost([a, dict(a), b, None])  # two tasks share screen a's timers
    assert (total["audited"], total["scored_now"]) == (264, 264) and total["cpu_seconds_per_answer"] == pytest.approx(
        8.16 / 264
    )
    assert "0.031 s CPU per audited answer" in cost_sentence(total) and "not counted" in cost_sentence(total)
    assert "reused from the store" in cost_sentence(total_cost([{"audited": 5, "scored_now": 0}]))
