"""The paired statistics reproduce the shared notes and hold their properties on random tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import optimize, stats as sps

from pytest_tais import stats
from pytest_tais.stats import PairedTable


# -- numbers from the notes ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, p, equivalent",
    [(87, 0.05047, False), (88, 0.04950, True), (100, 0.03932, True)],
)
def test_all_concordant_matches_notes(n, p, equivalent):
    r = stats.paired_tost(0, 0, n)
    assert r.p_value == pytest.approx(p, abs=5e-6)
    assert r.equivalent is equivalent
    # |Z(+-m)| = sqrt(n m / (1 - m))
    assert abs(r.z_high) == pytest.approx(math.sqrt(n * 0.03 / 0.97), rel=1e-9)
    assert abs(r.z_low) == pytest.approx(math.sqrt(n * 0.03 / 0.97), rel=1e-9)


def test_table_90_3_2_5():
    r = stats.paired_tost(3, 2, 100)
    assert r.p_value == pytest.approx(0.2046, abs=5e-5)
    assert r.ci_low == pytest.approx(-0.0330, abs=5e-5)
    assert r.ci_high == pytest.approx(0.0557, abs=5e-5)
    assert not r.equivalent


def test_table_99_1_0_0():
    r = stats.paired_tost(1, 0, 100)
    assert r.p_value == pytest.approx(0.1205, abs=5e-5)
    assert not r.equivalent


def test_depends_on_b_c_n_only():
    # (a, d) moved, b, c, n kept: same result.
    t1 = stats.paired_table([True] * 80 + [True, False] + [False] * 18, [True] * 80 + [False, True] + [False] * 18)
    t2 = stats.paired_table([True] * 10 + [True, False] + [False] * 88, [True] * 10 + [False, True] + [False] * 88)
    assert (t1.b, t1.c, t1.n) == (t2.b, t2.c, t2.n) and t1.a != t2.a
    assert stats.paired_tost(t1.b, t1.c, t1.n) == stats.paired_tost(t2.b, t2.c, t2.n)


@pytest.mark.parametrize("n, equivalent", [(97, False), (98, False), (99, True), (100, True)])
def test_exact_variant_passes_all_concordant_from_99(n, equivalent):
    assert stats.paired_tost(0, 0, n, method="exact").equivalent is equivalent


def test_exact_is_stricter_than_score():
    for b, c, n in [(0, 0, 120), (3, 2, 100), (1, 1, 200), (2, 0, 300)]:
        assert stats.paired_tost(b, c, n, method="exact").p_value >= stats.paired_tost(b, c, n).p_value - 1e-9


def test_paired_beats_independent_on_mixed_agreement():
    # The notes' (80,0,0,20): the paired score test shows equivalence, Agresti-Caffo does not.
    from statsmodels.stats.proportion import tost_proportions_2indep

    r = stats.paired_tost(0, 0, 100)
    assert r.p_value == pytest.approx(0.039, abs=5e-4)
    ac_p = tost_proportions_2indep(80, 100, 80, 100, -0.03, 0.03)[0]
    assert r.equivalent and ac_p > 0.05 and ac_p > 5 * r.p_value


def test_swap_null_quantiles_match_notes():
    assert stats.swap_null_h_quantile(PairedTable(79, 1, 1, 19), level=0.95) == pytest.approx(0.050, abs=5e-4)
    assert stats.swap_null_h_quantile(PairedTable(79, 1, 1, 19), level=0.99) == pytest.approx(0.050, abs=5e-4)
    assert stats.swap_null_h_quantile(PairedTable(395, 5, 5, 95), level=0.95) == pytest.approx(0.030, abs=5e-4)
    assert stats.swap_null_h_quantile(PairedTable(395, 5, 5, 95), level=0.99) == pytest.approx(0.040, abs=5e-4)
    assert stats.swap_null_h_quantile(PairedTable(90, 0, 0, 10)) == 0.0


def test_swap_null_quantile_against_simulation():
    rng = np.random.default_rng(1)
    t = PairedTable(70, 6, 4, 20)
    sims = []
    for _ in range(20000):
        bstar = rng.binomial(t.b + t.c, 0.5)
        pa = (t.a + bstar) / t.n
        pb = (t.a + t.b + t.c - bstar) / t.n
        sims.append(abs(stats.cohens_h(pa, pb)))
    assert stats.swap_null_h_quantile(t, level=0.95) == pytest.approx(
        np.quantile(sims, 0.95, method="inverted_cdf"), abs=1e-9
    )


def test_wilson_matches_notes():
    assert stats.wilson_interval(100, 100) == pytest.approx((0.96301, 1.0), abs=1e-5)
    assert stats.wilson_interval(0, 100) == pytest.approx((0.0, 0.03699), abs=1e-5)
    assert stats.wilson_interval(70, 100) == pytest.approx((0.60415, 0.78105), abs=1e-5)


def test_cohens_h_sign_and_value():
    assert stats.cohens_h(0.9, 0.8) == pytest.approx(2 * math.asin(math.sqrt(0.9)) - 2 * math.asin(math.sqrt(0.8)))
    assert stats.cohens_h(0.8, 0.9) < 0


def test_required_n_formula():
    assert stats.required_n(0.0) == 88
    # The notes' table is approximate; the formula is the contract.
    for psi, approx in [(0.01, 200), (0.02, 270), (0.05, 520), (0.10, 970)]:
        assert abs(stats.required_n(psi) - approx) / approx < 0.1
    assert stats.required_n(0.02, power=0.992) > stats.required_n(0.02)


def test_byte_identity_definitions():
    a = ["same", "abcdef", "héllo", ""]
    b = ["same", "abcxyz", "hello", ""]
    bi = stats.byte_identity(a, b)
    assert bi.identical == 2 and bi.identical_share == 0.5
    # "abcdef" vs "abcxyz": first difference at byte 3; "héllo" (6 bytes) vs "hello": byte 1.
    assert bi.first_divergence == (3, 1)
    assert bi.first_divergence_median == 2.0
    # per pair 1 - LCS/longer: 0, 1 - 3/6, 1 - 4/6, 0
    assert bi.changed_bytes_share == pytest.approx((0.5 + 2 / 6) / 4)
    assert bi.changed_bytes_share_weighted == pytest.approx(1 - (4 + 3 + 4) / (4 + 6 + 6))
    assert bi.first_divergence_tokens is None and bi.first_divergence_tokens_median is None


def test_changed_bytes_is_lcs_not_difflib_blocks():
    # difflib takes the longest block "efg" first and finds nothing on either side of it
    # (3 bytes matched); the longest common subsequence "abcd" has 4.
    x, y = "aXbXcXdefg", "efgabcd"
    assert _ref_lcs(x.encode(), y.encode()) == 4
    bi = stats.byte_identity([x], [y])
    assert bi.changed_bytes_share == pytest.approx(1 - 4 / 10)
    # The Indel form given in docs/statistics.md.
    from rapidfuzz.distance import Indel

    assert bi.changed_bytes_share == pytest.approx((Indel.distance(x.encode(), y.encode()) + 3) / (2 * 10))


def _ref_lcs(x: bytes, y: bytes) -> int:
    """Longest common subsequence by the textbook dynamic programme."""
    row = [0] * (len(y) + 1)
    for cx in x:
        prev_diag, row[0] = 0, 0
        for j, cy in enumerate(y, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if cx == cy else max(row[j], row[j - 1])
    return row[-1]


def _ref_prefix(x, y) -> int:
    i = 0
    while i < min(len(x), len(y)) and x[i] == y[i]:
        i += 1
    return i


def _ref_byte_identity(texts_a, texts_b, tok_a=None, tok_b=None):
    firsts, tfirsts, shares, matched, longer = [], [], [], 0, 0
    for k, (ta, tb) in enumerate(zip(texts_a, texts_b)):
        xa, xb = ta.encode("utf-8"), tb.encode("utf-8")
        m = max(len(xa), len(xb))
        lcs = len(xa) if xa == xb else _ref_lcs(xa, xb)
        if xa != xb:
            firsts.append(_ref_prefix(xa, xb))
            if tok_a is not None:
                tfirsts.append(_ref_prefix(tok_a[k], tok_b[k]))
        shares.append(1 - lcs / m if m else 0.0)
        matched += lcs
        longer += m
    return firsts, tfirsts, float(np.mean(shares)), (1 - matched / longer if longer else 0.0)


# Small alphabets make long shared runs and many ties, where an LCS shortcut would go wrong.
_texts = st.text(alphabet=st.sampled_from("ab\u00e9\u6e29 \n"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_texts, _texts, st.booleans()), min_size=1, max_size=12))
def test_byte_identity_matches_pure_python_reference(rows):
    # Some pairs are made identical or share a prefix and suffix, the fast paths.
    texts_a = [a for a, _, _ in rows]
    texts_b = [a if same else a[: len(a) // 2] + b + a[len(a) // 2 :] for a, b, same in rows]
    tok_a = [tuple(ord(c) for c in t) for t in texts_a]
    tok_b = [tuple(ord(c) for c in t) for t in texts_b]
    bi = stats.byte_identity(texts_a, texts_b, tok_a, tok_b)
    firsts, tfirsts, share, weighted = _ref_byte_identity(texts_a, texts_b, tok_a, tok_b)
    assert bi.n == len(rows) and bi.identical == len(rows) - len(firsts)
    assert bi.first_divergence == tuple(firsts)
    assert bi.first_divergence_tokens == tuple(tfirsts)
    assert bi.changed_bytes_share == pytest.approx(share, abs=1e-12)
    assert bi.changed_bytes_share_weighted == pytest.approx(weighted, abs=1e-12)


def test_first_divergence_in_tokens():
    a = ["I can't help with that.", "Sure, here it is.", "same"]
    b = ["I can't help, sorry.", "Sure! Here it is.", "same"]
    tok_a = [(40, 649, 1520, 449, 430, 13), (39245, 11, 1618, 433, 374), (7,)]
    tok_b = [(40, 649, 1520, 11, 14931, 13), (39245, 0, 5810, 433, 374), (7,)]
    bi = stats.byte_identity(a, b, tok_a, tok_b)
    assert bi.first_divergence == (12, 4)
    assert bi.first_divergence_tokens == (3, 1)
    assert bi.first_divergence_tokens_median == 2.0
    assert bi.first_divergence_tokens_quartiles == (1.5, 2.0, 2.5)
    # A differing pair without token ids on one arm: no token figure rather than a partial one.
    bi = stats.byte_identity(a, b, tok_a, [None, tok_b[1], tok_b[2]])
    assert bi.first_divergence_tokens is None and bi.first_divergence == (12, 4)
    with pytest.raises(ValueError, match="token ids"):
        stats.byte_identity(a, b, tok_a[:2], tok_b)


def test_invalid_counts_raise():
    for args in [(-1, 0, 10), (5, 6, 10), (0, 0, 0)]:
        with pytest.raises(ValueError):
            stats.paired_tost(*args)
    with pytest.raises(ValueError):
        stats.paired_tost(0, 0, 10, margin=0)
    with pytest.raises(ValueError):
        stats.paired_tost(0, 0, 10, method="wald")


# -- cross-check of Tango's closed form against a numerical restricted MLE ----------------------------
def _z_numeric(b, c, n, d0):
    """Z(d0) with q found by maximising the multinomial likelihood under D = d0 numerically."""
    lo, hi = max(0.0, -d0) + 1e-12, (1 - d0) / 2 - 1e-12

    def nll(q):
        p10, p01 = q + d0, q
        p00 = 1 - p10 - p01
        return -(
            b * math.log(max(p10, 1e-300)) + c * math.log(max(p01, 1e-300)) + (n - b - c) * math.log(max(p00, 1e-300))
        )

    q = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    var = n * (2 * q + d0 * (1 - d0))
    return (b - c - n * d0) / math.sqrt(var)


@pytest.mark.parametrize("b, c, n", [(3, 2, 100), (0, 0, 88), (10, 0, 100), (7, 12, 250), (1, 30, 60)])
@pytest.mark.parametrize("d0", [-0.03, 0.03, -0.1, 0.2])
def test_tango_z_matches_numerical_mle(b, c, n, d0):
    assert stats.tango_z(b, c, n, d0) == pytest.approx(_z_numeric(b, c, n, d0), rel=1e-5, abs=1e-6)


# -- properties over random tables ----------------------------------------------------------------
@st.composite
def tables(draw):
    n = draw(st.integers(1, 600))
    b = draw(st.integers(0, n))
    c = draw(st.integers(0, n - b))
    return b, c, n


@settings(max_examples=300, deadline=None)
@given(tables(), st.sampled_from([0.01, 0.03, 0.05, 0.1]), st.sampled_from([0.01, 0.05, 0.1]))
def test_properties(tbl, margin, alpha):
    b, c, n = tbl
    r = stats.paired_tost(b, c, n, margin=margin, alpha=alpha)
    values = [r.p_value, r.p_low, r.p_high, r.ci_low, r.ci_high, r.z_low, r.z_high, r.diff]
    assert all(math.isfinite(x) for x in values)
    assert 0.0 <= r.p_value <= 1.0
    assert -1.0 <= r.ci_low <= r.diff <= r.ci_high <= 1.0
    # The decision agrees with the (1 - 2 alpha) interval lying inside the margins.
    inside = -margin < r.ci_low and r.ci_high < margin
    boundary = min(abs(r.ci_low + margin), abs(r.ci_high - margin)) < 1e-7
    if not boundary:
        assert r.equivalent == inside
    # Swapping the arms mirrors everything.
    s = stats.paired_tost(c, b, n, margin=margin, alpha=alpha)
    assert s.p_value == pytest.approx(r.p_value, abs=1e-9)
    assert s.equivalent == r.equivalent
    assert s.ci_low == pytest.approx(-r.ci_high, abs=1e-7)
    assert s.ci_high == pytest.approx(-r.ci_low, abs=1e-7)


@settings(max_examples=100, deadline=None)
@given(tables())
def test_h_null_quantile_properties(tbl):
    b, c, n = tbl
    t = PairedTable(0, b, c, n - b - c)
    q95 = stats.swap_null_h_quantile(t, level=0.95)
    q99 = stats.swap_null_h_quantile(t, level=0.99)
    assert math.isfinite(q95) and 0.0 <= q95 <= q99 <= math.pi
    mirrored = PairedTable(0, c, b, n - b - c)
    assert stats.swap_null_h_quantile(mirrored, level=0.95) == pytest.approx(q95)


def test_score_test_size_near_alpha_at_margin():
    """At true D = margin the false-equivalence rate stays near alpha (a small version of the benchmark)."""
    rng = np.random.default_rng(7)
    n, m, psi = 400, 0.03, 0.1
    p10, p01 = (psi + m) / 2, (psi - m) / 2
    hits = 0
    reps = 400
    for _ in range(reps):
        b, c, _rest = rng.multinomial(n, [p10, p01, 1 - p10 - p01])
        hits += stats.paired_tost(int(b), int(c), n, margin=m).equivalent
    rate = hits / reps
    # Binomial(400, 0.05) stays below 0.09 with overwhelming probability; the notes saw 0.035-0.059.
    assert rate < 0.09
    assert sps.binomtest(hits, reps, 0.05).pvalue > 1e-4


def test_swap_null_quantile_of_an_empty_table_raises():
    with pytest.raises(ValueError, match=r"the table is empty \(n = 0\)"):
        stats.swap_null_h_quantile(PairedTable(0, 0, 0, 0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, r"alpha=0.0 is out of range; give a level in \(0, 0.5\)"),
        ({"alpha": 0.5}, r"alpha=0.5 is out of range; give a level in \(0, 0.5\)"),
        ({"margin": 0.0}, r"margin=0.0 is out of range; give a proportion in \(0, 0.5\)"),
        ({"margin": -0.03}, r"margin=-0.03 is out of range; give a proportion in \(0, 0.5\)"),
        ({"margin": 1.0}, r"margin=1.0 is out of range; give a proportion in \(0, 0.5\)"),
    ],
)
def test_required_n_rejects_alpha_or_margin_zero_with_a_value_error(kwargs, match):
    for psi in (0.0, 0.05):
        with pytest.raises(ValueError, match=match):
            stats.required_n(psi, **kwargs)


def test_first_divergence_in_tokens_across_tuple_and_compact_ids():
    from pytest_tais.records.generation import TokenIds

    bi = stats.byte_identity(["abcd"], ["abXd"], [(1, 2, 3, 4)], [TokenIds("i", [1, 2, 9, 4])])
    assert bi.first_divergence_tokens == (2,)


def test_wilson_and_cohens_h_give_statsmodels_numbers():
    # scipy's Wilson and our one-line h, so that a run does not load statsmodels (and pandas):
    # statsmodels' numbers, to the last bits of a double.
    from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

    for n in [1, 2, 3, 7, 10, 50, 99, 100, 520, 1780, 1781, 48_072]:
        for k in sorted({0, 1, 2, n // 3, n // 2, n - 2, n - 1, n} & set(range(n + 1))):
            for alpha in (0.05, 0.1, 0.01):
                lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
                assert stats.wilson_interval(k, n, alpha) == pytest.approx(
                    (max(0.0, float(lo)), min(1.0, float(hi))), rel=0, abs=1e-15
                )
            for j in (0, k, n // 2, n):
                assert stats.cohens_h(k / n, j / n) == float(proportion_effectsize(k / n, j / n))
