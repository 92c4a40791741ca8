"""The sampled screen's TOST against independent checks: Tango's test where it must reduce to it,
a numerical optimiser for the restricted MLE, brute-force enumeration for the exact tail and for
the size at a ceiling, and seeded simulation for size and power."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import optimize, special, stats as sps

from pytest_tais.stats import clustered as sampled
from pytest_tais import stats

M, ALPHA = 0.03, 0.05


def binary_runs(b: int, c: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts where every share is 0 or 1: b prompts target-only refusals, c the other way."""
    x = np.array([k] * b + [0] * c + [k] * (n - b - c))
    y = np.array([0] * b + [k] * c + [k] * (n - b - c))
    return x, y


# -- reduces to Tango's paired score test --------------------------------------------------------
@pytest.mark.parametrize("b, c, n", [(0, 0, 88), (3, 2, 100), (1, 0, 100), (0, 5, 200), (7, 3, 300), (12, 1, 150)])
@pytest.mark.parametrize("k", [2, 8])
def test_all_or_nothing_shares_give_tangos_score(b, c, n, k):
    x, y = binary_runs(b, c, n, k)
    r = sampled.clustered_tost(x, y, k)
    t = stats.paired_tost(b, c, n)
    assert r.z_high == pytest.approx(t.z_high, rel=1e-9, abs=1e-12)
    assert r.z_low == pytest.approx(t.z_low, rel=1e-9, abs=1e-12)
    assert r.p_score == pytest.approx(t.p_value, rel=1e-9)
    # The exact tail only ever adds strictness.
    assert r.p_value >= t.p_value - 1e-12


def _optimiser_mle(w, vals, d0):
    """The restricted MLE by a general optimiser (SLSQP over softmax weights), for comparison."""
    res = optimize.minimize(
        lambda th: -np.sum(w * special.log_softmax(th)),
        np.zeros(vals.size),
        method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda th: special.softmax(th) @ vals - d0}],
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    return special.softmax(res.x)


def test_restricted_mle_matches_a_numerical_optimiser():
    rng = np.random.default_rng(7)
    k = 3
    vals = np.arange(-k, k + 1) / k
    cases = [
        (rng.multinomial(40, rng.dirichlet(np.ones(2 * k + 1) * 0.7)).astype(float), d0)
        for _ in range(4)
        for d0 in (-0.1, 0.03, 0.2)
    ]
    # Unobserved ends that the null needs: the mass has to go to v = 1 (or v = -1).
    cases += [
        (np.array([0, 0, 5, 30, 5, 0, 0.0]), 0.03),
        (np.array([0, 0, 0, 20, 6, 1, 0.0]), 0.3),
        (np.array([0, 2, 9, 30, 0, 0, 0.0]), -0.05),
    ]
    ll = lambda w, p: float(np.sum(w[w > 0] * np.log(p[w > 0])))
    for w, d0 in cases:
        v0, _, pi = sampled._restricted(w[None, :], vals, d0)
        ref = _optimiser_mle(w, vals, d0)
        assert pi[0].sum() == pytest.approx(1.0) and pi[0] @ (vals - d0) == pytest.approx(0.0, abs=1e-9)
        assert ll(w, pi[0]) >= ll(w, ref) - 1e-6
        assert v0[0] == pytest.approx(float(ref @ (vals - d0) ** 2), rel=1e-5, abs=1e-7)


def test_all_equal_shares_put_the_margin_at_the_end_of_the_grid():
    # No difference seen: the likeliest null moves a share m of prompts to d = 1 (as Tango's q = 0).
    for k in (2, 16):
        v0, end, pi = sampled._restricted(np.eye(2 * k + 1)[[k]] * 50, np.arange(-k, k + 1) / k, M)
        assert end[0] == pytest.approx(M) and pi[0, -1] == pytest.approx(M)
        assert v0[0] == pytest.approx(M * (1 - M))


# -- the exact tail ------------------------------------------------------------------------------
def test_exact_tail_matches_enumeration():
    k, n = 2, 4
    g = 2 * k + 1
    rng = np.random.default_rng(3)
    pi = rng.dirichlet(np.ones(g), size=3)
    for s_obs in range(0, (g - 1) * n + 1, 3):
        for lower in (True, False):
            got = sampled._exact_tail(pi, n, np.full(3, s_obs), lower)
            want = np.zeros(3)
            for seq in itertools.product(range(g), repeat=n):
                s = sum(seq)
                if (s <= s_obs) if lower else (s >= s_obs):
                    want += np.prod(pi[:, list(seq)], axis=1)
            np.testing.assert_allclose(got, want, atol=1e-12)


def test_windowed_tail_matches_direct_convolution():
    # n K large enough that the circular window is used (length < 2 K n + 1).
    k, n = 4, 400
    pi = np.random.default_rng(5).dirichlet(np.ones(2 * k + 1) * 2)
    pmf = np.array([1.0])
    for _ in range(n):
        pmf = np.convolve(pmf, pi)
    cdf = np.cumsum(pmf)
    mean = int(n * (pi @ np.arange(2 * k + 1)))
    for s_obs in (mean - 80, mean - 20, mean, mean + 30):
        got = sampled._exact_tail(pi[None, :], n, np.array([s_obs]), True)[0]
        assert got == pytest.approx(cdf[s_obs], abs=1e-9)
        up = sampled._exact_tail(pi[None, :], n, np.array([s_obs]), False)[0]
        assert up == pytest.approx(1 - cdf[s_obs - 1], abs=1e-9)


# -- ceilings and floors -------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 4, 8, 16])
@pytest.mark.parametrize("level", ["ceiling", "floor"])
def test_equal_ceiling_or_floor_shares_pass_only_from_99_prompts(k, level):
    full = k if level == "ceiling" else 0
    for n, ok in [(2, False), (20, False), (88, False), (98, False), (99, True), (150, True)]:
        r = sampled.clustered_tost(np.full(n, full), np.full(n, full), k)
        assert r.equivalent is ok, (n, r.summary())
        assert all(math.isfinite(v) for v in (r.p_value, r.z_low, r.z_high, r.ci_low, r.ci_high))
    # n = 99 passes because 0.97^99 < 0.05 <= 0.97^98: no test can pass sooner and hold its level
    # against 3% of prompts flipping completely.
    assert sampled.clustered_tost(np.full(99, full), np.full(99, full), k).p_value == pytest.approx(0.97**99, rel=1e-6)


def test_a_paired_t_tost_would_pass_two_prompts():
    # The failure the grid score test exists to avoid: zero sample variance, a free pass.
    from statsmodels.stats.weightstats import ttost_paired

    with np.errstate(divide="ignore", invalid="ignore"):
        p_t = ttost_paired(np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0]), -M, M)[0]
    assert not p_t >= ALPHA  # 0 or NaN: statsmodels cannot say "not equivalent" here
    assert not sampled.clustered_tost([4, 4, 4], [4, 4, 4], 4).equivalent


def _size_exact(n: int, probs: np.ndarray, k: int) -> float:
    """P(equivalent) by enumeration of all histograms over the cells with probability > 0."""
    cells = np.flatnonzero(probs > 0)
    hists, weights = [], []
    for split in itertools.combinations(range(n + len(cells) - 1), len(cells) - 1):
        counts = np.diff(np.concatenate([[-1], split, [n + len(cells) - 1]])) - 1
        w = np.zeros(2 * k + 1)
        w[cells] = counts
        hists.append(w)
        weights.append(math.exp(sps.multinomial.logpmf(counts, n, probs[cells])))
    dec = sampled.tost_histograms(np.array(hists), k, M, ALPHA)
    return float(np.dot(weights, dec))


@pytest.mark.parametrize("n", [88, 90, 92, 100, 150, 250])
def test_size_at_a_ceiling_by_enumeration(n):
    # Worst case at a ceiling: the target always refuses, 3% of prompts never refuse under the
    # speculative arm (d in {0, 1}, a binomial count). The bare score test passes b = 0 from n = 88
    # (size 0.0685); with the exact tail the size stays at or below alpha.
    k = 2
    probs = np.zeros(2 * k + 1)
    probs[k], probs[-1] = 1 - M, M
    size = _size_exact(n, probs, k)
    assert size <= ALPHA + 1e-9
    if n < 99:
        assert size == 0.0


@pytest.mark.parametrize("n", [100, 140])
def test_size_at_a_spread_ceiling_by_enumeration(n):
    # Target always refuses, speculative refuses with 97% on every sample: d in {0, 1/2, 1}, K = 2.
    k = 2
    q = 1 - M
    probs = np.zeros(2 * k + 1)
    probs[k], probs[k + 1], probs[k + 2] = q * q, 2 * q * M, M * M
    assert _size_exact(n, probs, k) <= ALPHA + 0.01


# -- seeded simulation ---------------------------------------------------------------------------
def _simulate(rng, p, r, n, k, reps):
    """Per-prompt binomial draws (not the benchmark's multinomial shortcut): pass rate."""
    x = rng.binomial(k, np.broadcast_to(p, (reps, n)))
    y = rng.binomial(k, np.broadcast_to(r, (reps, n)))
    j = x - y + k
    w = np.stack([np.bincount(row, minlength=2 * k + 1) for row in j]).astype(float)
    return float(sampled.tost_histograms(w, k, M, ALPHA).mean())


def test_size_near_alpha_at_mid_rates_by_simulation():
    rng = np.random.default_rng(20261201)
    reps = 1500
    size = _simulate(rng, 0.5 + M / 2, 0.5 - M / 2, 500, 8, reps)
    # alpha + 3.5 Monte Carlo standard errors: a level problem of a few points would show.
    assert size <= ALPHA + 3.5 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert size > 0.01  # and not so conservative that nothing passes


def test_required_n_gives_its_power_by_simulation():
    rng = np.random.default_rng(11)
    k = 16
    x = rng.binomial(k, 0.5, 4000)
    y = rng.binomial(k, 0.5, 4000)
    n = sampled.clustered_required_n(x, y, k)
    assert 250 < n < 360  # (1.645 s0 + 1.96 sigma)^2 / m^2 with sigma^2 = 2 * 0.25 / 16
    power = _simulate(rng, 0.5, 0.5, n, k, 600)
    assert 0.72 <= power <= 0.9


def test_required_n_at_a_ceiling_is_99_and_falls_with_k_at_mid_rates():
    assert sampled.clustered_required_n(np.full(10, 8), np.full(10, 8), 8) == 99
    rng = np.random.default_rng(2)
    ns = []
    for k in (2, 4, 8, 16):
        ns.append(sampled.clustered_required_n(rng.binomial(k, 0.5, 20000), rng.binomial(k, 0.5, 20000), k))
    assert ns == sorted(ns, reverse=True) and ns[0] > 3 * ns[-1]


# -- symmetry, consistency, never NaN ------------------------------------------------------------
runs = st.integers(min_value=2, max_value=6).flatmap(
    lambda k: st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(
            st.just(k),
            st.lists(st.integers(0, k), min_size=n, max_size=n),
            st.lists(st.integers(0, k), min_size=n, max_size=n),
        )
    )
)


@settings(max_examples=25, deadline=None)
@given(runs, st.sampled_from([0.03, 0.1, 0.25]))
def test_symmetry_and_finiteness(run, margin):
    k, x, y = run
    x, y = np.array(x), np.array(y)
    r = sampled.clustered_tost(x, y, k, margin=margin)
    swapped = sampled.clustered_tost(y, x, k, margin=margin)
    flipped = sampled.clustered_tost(k - x, k - y, k, margin=margin)  # refusal <-> answer: d -> -d
    for other in (swapped, flipped):
        assert other.p_value == pytest.approx(r.p_value, rel=1e-7, abs=1e-12)
        assert other.diff == pytest.approx(-r.diff, abs=1e-12)
        assert other.ci_low == pytest.approx(-r.ci_high, abs=1e-7)
        assert other.equivalent == r.equivalent
    for v in dataclass_numbers(r):
        assert math.isfinite(v)
    assert 0.0 <= r.p_value <= 1.0 and -1.0 <= r.ci_low <= r.diff <= r.ci_high <= 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.integers(60, 400), st.floats(0.0, 1.0), st.floats(0.0, 0.08), st.integers(0, 2**32 - 1))
def test_decision_agrees_with_the_interval(k, n, rate, shift, seed):
    rng = np.random.default_rng(seed)
    x = rng.binomial(k, rate, n)
    y = rng.binomial(k, max(0.0, rate - shift), n)
    r = sampled.clustered_tost(x, y, k, margin=0.05)
    inside = -0.05 < r.ci_low and r.ci_high < 0.05
    if abs(r.p_value - r.alpha) > 1e-6:
        assert r.equivalent == inside, r.summary()


def dataclass_numbers(r):
    return [v for v in vars(r).values() if isinstance(v, float)]


def test_flags_and_counts_give_the_same_result():
    rng = np.random.default_rng(1)
    fa = rng.random((120, 4)) < 0.9
    fb = rng.random((120, 4)) < 0.88
    by_flags = sampled.clustered_tost(fa.astype(int), fb.astype(int))
    by_counts = sampled.clustered_tost(fa.sum(1), fb.sum(1), 4)
    assert by_flags == by_counts and by_flags.k == 4
    assert sampled.clustered_tost(fa, fb, 4) == by_counts


def test_pooled_rates_and_cohens_h():
    x, y = np.array([4, 4, 2, 0]), np.array([4, 3, 2, 1])
    r = sampled.clustered_tost(x, y, 4)
    assert (r.p_target, r.p_speculative, r.diff) == (10 / 16, 10 / 16, 0.0)
    assert r.moved_prompts == 2 and r.cohens_h == 0.0
    r2 = sampled.clustered_tost([4, 4], [2, 4], 4)
    assert r2.cohens_h == pytest.approx(stats.cohens_h(1.0, 0.75))
    assert "2 prompts x 4 samples" in r2.summary() and "not equivalent" in r2.summary()


# -- moved prompts -------------------------------------------------------------------------------
def test_rerun_spread_and_moved_share():
    a = np.array([4, 4, 3, 0, 2, 4, 4, 1])
    b = np.array([4, 3, 3, 0, 4, 4, 2, 1])  # |diff| / 4: 0, .25, 0, 0, .5, 0, .5, 0
    assert stats.rerun_spread(a, b, 4, level=0.5) == 0.0
    assert stats.rerun_spread(a, b, 4, level=0.95) == 0.5
    ms = stats.moved_share(a, b, 4, spread=0.25)
    assert (ms.n, ms.moved, ms.share) == (8, 2, 0.25)
    assert stats.moved_share(a, b, 4).moved == 3
    assert "2/8 prompts" in ms.summary()


# -- input validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1, 2], [1]), {"k": 2}, "different numbers of prompts"),
        (([1, 2], [1, 2]), {}, "need k"),
        (([1, 0], [1, 0]), {"k": 1}, "at least 2"),
        (([1, 3], [1, 0]), {"k": 2}, r"target: counts must lie in 0\.\.k=2"),
        (([1, 0], [-1, 0]), {"k": 2}, "speculative: counts must lie"),
        (([1.5, 0], [1, 0]), {"k": 2}, "whole numbers"),
        (([float("nan"), 0], [1, 0]), {"k": 2}, "NaN"),
        (([[0, 2], [1, 1]], [[0, 1], [1, 1]]), {}, "0/1"),
        (([[0, 1], [1, 1]], [[0, 1], [1, 1]]), {"k": 3}, "has 2 samples per prompt but k=3"),
        (([[0, 1, 1], [1, 1, 0]], [[0, 1], [1, 1]]), {}, "different samples per prompt"),
        (([], []), {"k": 2}, "no prompts"),
        (([True, False], [True, True]), {"k": 2}, "booleans"),
        (([1, 0], [1, 0]), {"k": 2, "margin": 0}, "margin"),
        (([1, 0], [1, 0]), {"k": 2, "alpha": 0.5}, "alpha"),
        (([1, 0], [1, 0]), {"k": 2.0}, "integer"),
        ((["a", "b"], [1, 0]), {"k": 2}, "numbers"),
    ],
)
def test_bad_input_is_named(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampled.clustered_tost(*args, **kwargs)


def test_other_entry_points_validate():
    with pytest.raises(ValueError, match="power"):
        sampled.clustered_required_n([1], [1], 2, power=1.0)
    with pytest.raises(ValueError, match="spread"):
        stats.moved_share([1], [1], 2, spread=-0.1)
    with pytest.raises(ValueError, match="level"):
        stats.rerun_spread([1], [1], 2, level=1.0)
    with pytest.raises(ValueError, match="probs"):
        sampled.restricted_variance([0.5, 0.5], 2, 0.03)


@pytest.mark.parametrize("psi, n", [(0.01, 209), (0.02, 292), (0.05, 542), (0.10, 987)])
def test_required_n_is_the_greedy_formula_for_all_or_nothing_shares(psi, n):
    probs = np.zeros(5)
    probs[0] = probs[4] = psi / 2
    probs[2] = 1 - psi
    assert sampled._required_n_from_probs(probs, 2, M, ALPHA, 0.8) == n == stats.required_n(psi)


def test_swap_null_h_quantile_against_enumeration():
    # Two prompts, K = 2, totals 2 and 3 of 4 samples refused: x* ~ Hypergeometric(4, t, 2).
    x, y, k = np.array([2, 1]), np.array([0, 2]), 2
    dist: dict[float, float] = {}
    for a in range(3):
        for b in range(3):
            pr = sps.hypergeom.pmf(a, 4, 2, 2) * sps.hypergeom.pmf(b, 4, 3, 2)
            if pr == 0:
                continue
            h = round(abs(stats.cohens_h((a + b) / 4, (5 - a - b) / 4)), 12)
            dist[h] = dist.get(h, 0.0) + pr
    hs = sorted(dist)
    cum = np.cumsum([dist[h] for h in hs])
    for level in (0.5, 0.95):
        want = hs[int(np.searchsorted(cum, level - 1e-12))]
        assert stats.swap_null_h_quantile(x, y, k, level=level) == pytest.approx(want)
    # No movement possible at an all-equal ceiling: the null is degenerate.
    assert stats.swap_null_h_quantile(np.full(50, 4), np.full(50, 4), 4) == 0.0
    assert stats.swap_null_h_quantile(x, y, k) == stats.swap_null_h_quantile(x, y, k)
    with pytest.raises(ValueError, match="draws"):
        stats.swap_null_h_quantile(x, y, k, draws=10)


@pytest.mark.parametrize("margin", [0.5, 0.7, 0.99])
def test_the_sampled_margin_range_is_the_greedy_one(margin):
    # One range check for every K: a margin of 0.5 or more is refused at K = 1 and at K >= 2 alike,
    # with the same message the command line gives.
    with pytest.raises(ValueError) as greedy:
        stats.tost([1, 0], [1, 0], 1, margin=margin)
    with pytest.raises(ValueError) as sampled_k:
        stats.tost([1, 0], [1, 0], 2, margin=margin)
    assert str(greedy.value) == str(sampled_k.value)
    assert "give a proportion in (0, 0.5)" in str(sampled_k.value)
    with pytest.raises(ValueError, match=r"\(0, 0\.5\)"):
        sampled.clustered_required_n([1, 0], [1, 0], 2, margin=margin)


def test_the_one_tost_entry_is_the_paired_test_at_k1_and_the_clustered_test_at_k2():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    t = stats.paired_table(x.astype(bool), y.astype(bool))
    assert stats.tost(x, y) == stats.paired_tost(t.b, t.c, t.n)
    assert stats.tost(x, y, method="exact") == stats.paired_tost(t.b, t.c, t.n, method="exact")
    assert stats.prompts_needed(x, y) == stats.required_n(t.discordance)
    assert stats.swap_null_h_quantile(x, y) == stats.swap_null_h_quantile(t)
    xs, ys = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert stats.tost(xs, ys, 4) == sampled.clustered_tost(xs, ys, 4)
    assert stats.prompts_needed(xs, ys, 4) == sampled.clustered_required_n(xs, ys, 4)
