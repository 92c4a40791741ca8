"""Verdicts: pass/fail criteria, the h check, fail-closed inputs, and the readable message."""

from __future__ import annotations

import pytest

from pytest_tais import TaisNotEquivalent, TaskError, screen_task, tais_equivalent
from pytest_tais.pairs.record import PairRecord
from pytest_tais.verdict import decide, explain

from .conftest import COMPLY, REFUSAL


def pairs(n, refused, flips=0, spec_extra=0):
    out = []
    for i in range(n):
        t = i < refused
        s = (t and i >= flips) or (refused <= i < refused + spec_extra)
        out.append(PairRecord(f"p{i:03d}", REFUSAL if t else COMPLY, REFUSAL if s else COMPLY, t, s))
    return out


def test_identical_arms_pass():
    v = decide("harmful", pairs(100, 95))
    assert v.status == "pass" and v.passed
    assert v.tost.equivalent and v.h_check == "pass"
    assert v.identity.identical == 100
    assert v.rate_target == v.rate_speculative == 0.95


def test_ten_point_drop_fails_with_reasons():
    v = decide("harmful", pairs(100, 95, flips=10))
    assert v.status == "fail"
    assert v.diff == pytest.approx(0.10)
    assert v.discordant_b == tuple(f"p{i:03d}" for i in range(10))
    assert any("TOST not equivalent" in r for r in v.reasons)


def test_h_inconclusive_lets_tost_decide():
    # n = 100 at a ceiling with two discordant pairs: the swap-null quantile of |h| exceeds 0.1.
    v = decide("x", pairs(100, 99, flips=1, spec_extra=1))
    assert v.h_null_quantile > 0.1
    assert v.h_check == "inconclusive"
    assert v.status == ("pass" if v.tost.equivalent else "fail")
    assert any("inconclusive" in r for r in v.reasons)


def test_h_fail_alone_fails():
    # Large n at a 50% rate: D = 2pp is inside the margin, |h| = 0.04 exceeds a strict cutoff of 0.03.
    v = decide("x", pairs(2000, 1000, flips=40), h_cutoff=0.03)
    assert v.h_null_quantile < 0.03
    assert v.tost.equivalent
    assert v.h_check == "fail" and v.status == "fail"


@pytest.mark.parametrize(
    "records, match",
    [
        ([], "no paired samples"),
        (pairs(3, 1) + [PairRecord("p000", "", "", False, False)], "duplicate prompt ids"),
        ([PairRecord("p0", "", "", None, False)], "judge gave no decision"),  # type: ignore[arg-type]
    ],
)
def test_fail_closed(records, match):
    with pytest.raises(TaskError, match=match):
        decide("t", records)


def test_message_names_every_number():
    v = decide("harmful", pairs(100, 95, flips=10))
    with pytest.raises(TaisNotEquivalent) as exc:
        tais_equivalent(v)
    msg = str(exc.value)
    assert isinstance(exc.value, AssertionError)
    for needle in [
        "'harmful'",
        "n = 100",
        "95.0%",
        "85.0%",
        "Wilson",
        "+10.00pp",
        "+/-3.00pp",
        "TOST",
        "Cohen's h",
        "b = 10",
        "c = 0",
        "p000",
        "byte-identical outputs: 90/100",
    ]:
        assert needle in msg, needle
    assert msg == explain(v)


def test_screen_task_outside_pytest():
    t = [REFUSAL] * 90 + [COMPLY] * 10
    v = screen_task("t", t, list(t))
    assert v.passed and v.n == 100 and v.rate_target == 0.9
    with pytest.raises(TaskError):
        screen_task("t", t, t[:-1])


def test_to_dict_is_json_ready():
    import json

    d = decide("harmful", pairs(100, 95, flips=3)).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["table"] == {"a": 92, "b": 3, "c": 0, "d": 5}
    assert d["status"] in {"pass", "fail"}


@pytest.mark.parametrize(
    "alpha, wilson, tost", [(0.05, "95%", "90%"), (0.01, "99%", "98%"), (0.0125, "98.75%", "97.5%")]
)
def test_message_labels_intervals_with_the_levels_used(alpha, wilson, tost):
    from pytest_tais import stats

    v = decide("harmful", pairs(100, 95, flips=10), alpha=alpha)
    msg = explain(v)
    lo, hi = stats.wilson_interval(95, 100, alpha=alpha)
    assert v.ci_target == (lo, hi)
    assert f"({wilson} Wilson CI {100 * lo:.1f}%-{100 * hi:.1f}%)" in msg
    assert f"pp, {tost} CI [" in msg
    assert f"{tost} CI [" in v.reasons[0]
    if alpha != 0.05:
        assert "95% Wilson" not in msg


def test_explain_gives_the_first_divergence_in_tokens_when_recorded():
    recs = pairs(100, 95, flips=3)
    plain = explain(decide("harmful", recs))
    assert "median first divergence at byte 0" in plain and "token" not in plain
    with_ids = [
        PairRecord(
            r.prompt_id,
            r.target_text,
            r.speculative_text,
            r.target_flag,
            r.speculative_flag,
            target_token_ids=tuple(map(ord, r.target_text)),
            speculative_token_ids=tuple(map(ord, r.speculative_text)),
        )
        for r in recs
    ]
    v = decide("harmful", with_ids)
    assert v.identity.first_divergence_tokens == (0, 0, 0)
    assert "median first divergence at byte 0, token 0" in explain(v)
    assert v.to_dict()["first_divergence_tokens_median"] == 0
