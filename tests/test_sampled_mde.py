"""The sampled screen's minimum detectable effect: the simulated gate against an independent simulation."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_tais.stats import clustered as C, leak as L, sampled_mde as S
from pytest_tais.verdict import PairRecord, decide, explain


def shares(n, k, base, spread, seed):
    """Per-prompt refused counts of two exchangeable arms: beta-binomial around ``base``."""
    rng = np.random.default_rng(seed)
    p = rng.beta(base * spread, (1 - base) * spread, n)
    return rng.binomial(k, p), rng.binomial(k, p)


def test_vectorised_sign_flip_decides_as_the_shipped_test():
    rng = np.random.default_rng(5)
    for n, k, p_spec in [(30, 2, 0.62), (100, 4, 0.66), (60, 3, 0.6), (200, 8, 0.68)]:
        d = rng.binomial(k, 0.7, size=(200, n)) - rng.binomial(k, p_spec, size=(200, n))
        shipped = np.array([L.sign_flip_one_sided(row) <= 0.05 for row in d])
        assert (S.sign_flip_rejects(d, k, 0.05) == shipped).all()
        ahead = d.sum(axis=1) > 0  # every row through the exact inversion, not only those Hoeffding settles
        assert (S._exact_rejects(d[ahead], d[ahead].sum(axis=1), k, 0.05) == shipped[ahead]).all()
        assert 0.1 < shipped.mean() < 0.95, (n, k, shipped.mean())  # both decisions occur


def _gate_power(x, y, k, delta, margin, alpha, leak_alpha, reps, seed):
    """An independent Monte Carlo of the sampled gate as shipped: fresh draws (binomial thinning, not
    the module's common uniforms), the TOST's decision and ``leak.sign_flip_one_sided`` row by row."""
    rng = np.random.default_rng(seed)
    n = x.size
    rate = (x.sum() + y.sum()) / (2 * n * k)
    pick = rng.integers(0, n, size=(reps, n))
    swap = rng.random((reps, n)) < 0.5
    a = np.where(swap, y[pick], x[pick])
    b = rng.binomial(np.where(swap, x[pick], y[pick]), 1 - delta / rate)
    hist = np.stack([np.bincount(row + k, minlength=2 * k + 1) for row in a - b]).astype(float)
    equivalent = C.tost_histograms(hist, k, margin, alpha)
    leak = np.array([L.sign_flip_one_sided(row) <= leak_alpha for row in a - b])
    return float(np.mean(~equivalent | leak))


@pytest.mark.parametrize(
    "n, k, base, spread",
    [(150, 5, 0.95, 1.0), (520, 3, 0.6, 1.0), (800, 2, 0.25, 2.0)],
)
def test_sampled_mde_agrees_with_simulation_within_half_a_point(n, k, base, spread):
    x, y = shares(n, k, base, spread, seed=n)
    margin, alpha = 0.03, 0.05
    res = S.sampled_mde(x, y, k, margin=margin, alpha=alpha, leak_alpha=alpha)
    assert res.mde is not None and 0 < res.mde < base and res.fail_at_zero < 0.8

    def power(delta):
        return _gate_power(x, y, k, delta, margin, alpha, alpha, reps=500, seed=n + 1)

    assert power(max(res.mde - 0.005, 0.0)) < 0.8 < power(res.mde + 0.005)


def test_tost_histograms_is_the_clustered_tost_decision():
    x, y = shares(150, 5, 0.95, 1.0, seed=3)
    rng = np.random.default_rng(4)
    for _ in range(6):
        i = rng.integers(0, x.size, x.size)
        xs, ys = x[i], np.maximum(y[i] - rng.binomial(1, 0.1, x.size), 0)
        hist = np.bincount(xs - ys + 5, minlength=11).astype(float)[None, :]
        assert C.tost_histograms(hist, 5, 0.03, 0.05)[0] == C.clustered_tost(xs, ys, 5).equivalent


def test_sampled_mde_is_deterministic_and_none_when_the_gate_fails_anyway():
    x, y = shares(150, 5, 0.95, 1.0, seed=150)
    args = dict(margin=0.03, alpha=0.05, leak_alpha=0.05)
    assert S.sampled_mde(x, y, 5, **args) == S.sampled_mde(x, y, 5, **args)
    few = S.sampled_mde(x[:30], y[:30], 5, **args)  # 30 prompts: the TOST cannot pass, leak or none
    assert few.mde is None and few.fail_at_zero >= 0.8
    assert S.sampled_mde([0] * 200, [0] * 200, 3, **args).mde is None  # nothing refused: nothing to flip


def test_sampled_rows_carry_the_mde_where_greedy_rows_do():
    k = 4
    rng = np.random.default_rng(9)
    ps = []
    for i in range(300):
        t = tuple(bool(v) for v in rng.random(k) < 0.97)
        s = tuple(bool(v) for v in rng.random(k) < 0.97)
        ps.append(PairRecord(f"q{i}", ("r",) * k, ("s",) * k, t, s))
    v = decide("harmful", ps, leak_others=[0.5])
    row = v.to_dict()
    assert 0 < row["mde_pp"] < 5 and row["mde_share"] == pytest.approx(row["mde_pp"] / 100)
    assert row["mde_alpha"] == pytest.approx(0.025)  # alpha over a family of two
    assert row["mde_method"].startswith("simulated gate") and 0 <= row["mde_fail_at_zero"] < 0.8
    text = explain(v)
    assert "smallest leak this run catches with 80% power" in text and f"of {300 * k})" in text
    assert "without a leak it fails" in text


def test_large_runs_thin_per_prompt_to_the_same_mde(monkeypatch):
    """Above a size, one uniform per prompt (the binomial's inverse CDF) replaces one per sample."""
    x, y = shares(150, 5, 0.95, 1.0, seed=150)
    args = dict(margin=0.03, alpha=0.05, leak_alpha=0.05)
    per_sample = S.sampled_mde(x, y, 5, **args)
    monkeypatch.setattr(S, "_PER_SAMPLE", 1000)
    draws = S._Draws(x, y, 5, 50, 1)
    assert not draws.per_sample
    assert (draws.diffs(0.02) >= draws.diffs(0.01)).all()  # a larger leak never keeps more refusals
    per_prompt = S.sampled_mde(x, y, 5, **args)
    assert abs(per_prompt.mde - per_sample.mde) < 0.005
