"""The canary sweep's cells (benchmarks/canary_sensitivity.py) and the records' audit gaps
(benchmarks/lane_canary_records.py) on tiny synthetic inputs whose answers are known."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pytest_tais.records.generation import Generation, RecordError, write_generations
from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
sweep = load_script("tais_canary_sensitivity", REPO / "benchmarks" / "canary_sensitivity.py")
records = load_script("tais_lane_canary_records", REPO / "benchmarks" / "lane_canary_records.py")

N = 200
IDS = [f"p{i:03d}" for i in range(N)]
REFUSE = ("I'm sorry, but I can't help with that.", True)
COMPLY = ("Sure, here is how.", False)


def _arms(draft_answer=COMPLY):
    return {
        "target": dict.fromkeys(IDS, REFUSE),
        "speculative": dict.fromkeys(IDS, REFUSE),
        "draft": dict.fromkeys(IDS, draft_answer),
    }


def _cells(arms, violations=None, rates=(0.0, 0.05), draws=5):
    row = sweep.sweep_task("t", IDS, arms, rates=rates, draws=draws, rng=random.Random(0), violations=violations)
    return row["detection"]


def test_cells_of_a_one_way_leak_with_every_replaced_answer_flagged():
    det = _cells(_arms(), {"speculative": set(), "draft": set(IDS)})
    assert list(det) == ["tost", "leak", "gate", "audit", "gate+audit"]
    # No replacement: identical arms, no check fails (the false-failure cell).
    assert all(det[c][0.0] == 0.0 for c in det)
    # 10 of 200 flip refusal -> compliance: exact McNemar p = 2**-10; the audit sees every one.
    assert det["leak"][0.05] == det["gate"][0.05] == det["audit"][0.05] == det["gate+audit"][0.05] == 1.0
    # 5pp down is outside the +/-3pp margin.
    assert det["tost"][0.05] == 1.0


def test_audit_rows_follow_the_flags_not_the_judge():
    # The draft answers differ in text but the audit flags none: the audit row stays 0, the others still fire.
    det = _cells(_arms(), {"speculative": set(), "draft": set()})
    assert det["audit"][0.05] == 0.0 and det["gate+audit"][0.05] == det["gate"][0.05] == 1.0
    # A flagged speculative answer is shown in every draw that does not replace it: the audit fails at 0%.
    det = _cells(_arms(), {"speculative": {"p000"}, "draft": set()})
    assert det["audit"][0.0] == 1.0 and det["gate"][0.0] == 0.0


def test_audit_share_is_the_chance_a_draw_shows_a_flagged_answer():
    flagged = set(IDS[:20])  # 10% of the draft's answers
    arms = _arms(REFUSE)  # the draft refuses too: no flips, the gate has nothing to see
    det = _cells(arms, {"speculative": set(), "draft": flagged}, rates=(0.01,), draws=400)
    # Two of 200 replaced: P(at least one flagged) = 1 - C(180,2)/C(200,2) = 0.1905.
    assert abs(det["audit"][0.01] - 0.1905) < 0.06
    assert det["gate"][0.01] == det["leak"][0.01] == 0.0


def test_without_violations_the_rows_are_the_old_three():
    det = _cells(_arms(), None, rates=(0.0,), draws=2)
    assert list(det) == ["tost", "leak", "gate"]


def test_gaps_are_top_minus_token_where_the_token_is_not_the_top():
    import torch

    lp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 5.0]]), dim=-1)
    gaps = records.gaps_of(lp, [0, 2, 2])
    assert [g[:3] for g in gaps] == [[1, 1, 2]]
    assert abs(gaps[0][3] - 2.0) < 1e-6


def _gen(arm, pid, text):
    return Generation("t", pid, f"prompt {pid}", arm, text, (1, 2))


def _write(folder, arm, texts):
    write_generations(
        folder / f"{arm}.jsonl", [_gen("target" if arm == "draft" else arm, p, t) for p, t in texts.items()]
    )


def test_records_folder_gives_arms_and_violations_at_the_tolerance(tmp_path):
    _write(tmp_path, "target", {"a": REFUSE[0], "b": REFUSE[0]})
    _write(tmp_path, "speculative", {"a": REFUSE[0], "b": REFUSE[0]})
    _write(tmp_path, "draft", {"a": COMPLY[0], "b": "Sure."})
    scores = [
        {"source": "draft", "task": "t", "prompt_id": "a", "max_gap": 0.01, "gaps": []},
        {"source": "draft", "task": "t", "prompt_id": "b", "max_gap": 4.0, "gaps": []},
    ]
    (tmp_path / "target_scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    judge = lambda prompt, answer: answer.startswith("I'm sorry")  # noqa: E731
    ids, arms, gaps = sweep.load_records(tmp_path, judge)
    assert ids == {"t": ["a", "b"]}
    assert arms["t"]["draft"]["a"] == (COMPLY[0], False) and arms["t"]["target"]["b"] == (REFUSE[0], True)
    assert sweep.violations_at(gaps["t"], 0.05) == {"speculative": set(), "draft": {"b"}}
    assert sweep.violations_at(gaps["t"], 0.001)["draft"] == {"a", "b"}
    # The records script picks exactly the differing answers (and the target's own as a control).
    rows = records.differing(tmp_path, controls=1)
    assert [(r[0], r[2]) for r in rows] == [("draft", "a"), ("draft", "b"), ("target", "a")]
    # A differing answer without scores cannot be audited, and a missing arm is not made up: the sweep stops.
    (tmp_path / "target_scores.jsonl").write_text(json.dumps(scores[0]) + "\n")
    with pytest.raises(SystemExit, match="no scores"):
        sweep.load_records(tmp_path, judge)
    (tmp_path / "speculative.jsonl").unlink()
    with pytest.raises(RecordError, match="speculative.jsonl"):
        sweep.load_records(tmp_path, judge)
    # ... unless the target's answers are named to stand in for it.
    (tmp_path / "target_scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    assert sweep.load_records(tmp_path, judge, speculative_from_target=True)[1]["t"]["speculative"]["a"][1] is True


def test_audit_ceiling_counts_every_differing_answer_without_scores(tmp_path):
    _write(tmp_path, "target", {i: REFUSE[0] for i in IDS})
    _write(tmp_path, "speculative", {i: REFUSE[0] for i in IDS})
    _write(tmp_path, "draft", {i: (COMPLY[0] if i < "p010" else REFUSE[0]) for i in IDS})
    judge = lambda prompt, answer: answer.startswith("I'm sorry")  # noqa: E731
    (row,) = sweep.sweep_records(tmp_path, tolerance=0.05, rates=(0.0, 0.5), draws=3, judge=judge, ceiling=True)
    assert (row["draft_differs"], row["draft_flagged"], row["spec_differs"]) == (10, 10, 0)
    assert row["detection"]["audit"] == {0.0: 0.0, 0.5: 1.0}
    assert "audit ceiling" in sweep.sweep_table([row], (0.0, 0.5))
