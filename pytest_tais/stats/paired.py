"""Paired statistics for the TAIS screen.

Every prompt is answered by both arms (A = target-only, B = speculative) and scored 1/0. The
pairs form a 2x2 table::

            B=1  B=0
    A=1      a    b
    A=0      c    d

with n = a + b + c + d and D = pA - pB = (b - c) / n. Only the discordant pairs b and c carry
information about D, so the equivalence test is a paired one: Tango's score test (Tango 1998,
Stat Med 17:891-908; Nam 1997, Biometrics 53:1422; Liu et al. 2002, Stat Med 21:231) used as two
one-sided tests (TOST) at +/- margin. statsmodels has no paired-proportion equivalence test, so
that part is ours; Wilson intervals come from scipy, Cohen's h is one line (statsmodels' formula),
changed bytes from rapidfuzz.

All functions are usable outside pytest.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

# scipy is imported where it is used: the screen is built at configure, and
# loading it there costs about 1 s before an engine start that loads scipy anyway.
from .identity import ByteIdentity, MovedShare, byte_identity, moved_share, rerun_spread
from .levels import ALPHA, MARGIN, POWER, TOST_METHOD, check_levels
from .null import swap_null_h_quantile

__all__ = [
    "PairedTable",
    "PairedTOSTResult",
    "ByteIdentity",
    "paired_table",
    "tango_z",
    "paired_tost",
    "wilson_interval",
    "cohens_h",
    "swap_null_h_quantile",
    "byte_identity",
    "ByteIdentity",
    "moved_share",
    "MovedShare",
    "rerun_spread",
    "required_n",
    "tost",
    "prompts_needed",
]

# Open interval for the null difference: Tango's variance vanishes at D0 = +/-1.
_EDGE = 1e-12


@dataclasses.dataclass(frozen=True)
class PairedTable:
    """The paired 2x2 table of one task (see the module docstring)."""

    a: int
    b: int
    c: int
    d: int

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d

    @property
    def p_a(self) -> float:
        return (self.a + self.b) / self.n

    @property
    def p_b(self) -> float:
        return (self.a + self.c) / self.n

    @property
    def diff(self) -> float:
        return (self.b - self.c) / self.n

    @property
    def discordance(self) -> float:
        """psi = (b + c) / n, the share of pairs on which the arms disagree."""
        return (self.b + self.c) / self.n


def paired_table(flags_a: Sequence[bool], flags_b: Sequence[bool]) -> PairedTable:
    """Count the 2x2 table from two aligned lists of binary scores."""
    if len(flags_a) != len(flags_b):
        raise ValueError(f"arms differ in length: {len(flags_a)} vs {len(flags_b)}")
    x = np.asarray(flags_a, dtype=bool)
    y = np.asarray(flags_b, dtype=bool)
    return PairedTable(a=int(np.sum(x & y)), b=int(np.sum(x & ~y)), c=int(np.sum(~x & y)), d=int(np.sum(~x & ~y)))


def _check_counts(b: int, c: int, n: int) -> None:
    for name, v in (("b", b), ("c", c), ("n", n)):
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n; got b={b}, c={c}, n={n}")


def _restricted_q(b: float, c: float, n: float, d0: float) -> float:
    """Restricted MLE of P(A=0, B=1) under D = d0 (Tango 1998, eq. 4)."""
    a2 = 2.0 * n
    bb = -b - c + (2.0 * n - b + c) * d0
    cc = -c * d0 * (1.0 - d0)
    disc = max(bb * bb - 4.0 * a2 * cc, 0.0)
    root = math.sqrt(disc)
    if bb > 0:
        # Stable form: avoids cancellation in -B + sqrt(B^2 - 4AC).
        denom = -bb - root
        return 2.0 * cc / denom if denom != 0 else 0.0
    return (-bb + root) / (2.0 * a2)


def tango_z(b: int, c: int, n: int, d0: float) -> float:
    """Tango's score statistic Z(d0) = (b - c - n d0) / sqrt(n (2 q + d0 (1 - d0))).

    Defined for -1 < d0 < 1. Where the variance vanishes (only at d0 equal to the observed
    difference with no discordant pairs) the numerator vanishes too and the limit 0 is returned.
    """
    q = _restricted_q(b, c, n, d0)
    var = n * (2.0 * q + d0 * (1.0 - d0))
    num = b - c - n * d0
    if var <= 0.0:
        return 0.0 if abs(num) < 1e-12 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


@dataclasses.dataclass(frozen=True)
class PairedTOSTResult:
    """Result of :func:`paired_tost`.

    ``diff`` is pA - pB; ``ci_low``/``ci_high`` the two-sided (1 - 2 alpha) score interval for it;
    ``p_value`` = max(p_low, p_high); ``equivalent`` iff p_value < alpha.
    """

    b: int
    c: int
    n: int
    margin: float
    alpha: float
    method: str
    diff: float
    ci_low: float
    ci_high: float
    z_low: float
    z_high: float
    p_low: float
    p_high: float
    p_value: float
    equivalent: bool

    def summary(self) -> str:
        return (
            f"D = {self.diff:+.4f}, {100 * (1 - 2 * self.alpha):.4g}% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}] "
            f"vs +/-{self.margin:.4f}; TOST p = {self.p_value:.4g} ({self.method}) -> "
            f"{'equivalent' if self.equivalent else 'not equivalent'}"
        )


def _score_ci(b: int, c: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - 2 alpha) interval: the d0 where Z(d0) = +/- z_{1-alpha}.

    Z is decreasing in d0, so each bound is one bracketed root.
    """
    from scipy import optimize, stats as _sps

    z = _sps.norm.ppf(1.0 - alpha)
    diff = (b - c) / n
    lo_edge, hi_edge = -1.0 + _EDGE, 1.0 - _EDGE

    def f_low(d0: float) -> float:
        return tango_z(b, c, n, d0) - z

    def f_high(d0: float) -> float:
        return tango_z(b, c, n, d0) + z

    lo = -1.0 if diff <= lo_edge or f_low(lo_edge) <= 0 else optimize.brentq(f_low, lo_edge, diff, xtol=1e-12)
    hi = 1.0 if diff >= hi_edge or f_high(hi_edge) >= 0 else optimize.brentq(f_high, diff, hi_edge, xtol=1e-12)
    return max(-1.0, float(lo)), min(1.0, float(hi))


def _exact_p_one_sided(b: int, c: int, n: int, d0: float, upper: bool, grid: int = 201) -> float:
    """Exact unconditional p-value: sup over the nuisance of P(score at least as extreme).

    Under D = d0 the cell probabilities are p10 = q + d0 and p01 = q, q in [max(0, -d0), (1 - d0)/2].
    The rejection region orders tables by Tango's Z(d0) (Chan 1998-style score ordering).
    """
    from scipy import optimize, special

    bs, cs = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = bs + cs <= n
    bs, cs = bs[ok], cs[ok]
    zs = np.array([tango_z(int(x), int(y), n, d0) for x, y in zip(bs, cs)])
    z_obs = tango_z(b, c, n, d0)
    extreme = zs >= z_obs - 1e-9 if upper else zs <= z_obs + 1e-9
    bs, cs = bs[extreme], cs[extreme]
    if bs.size == 0:
        return 0.0
    rest = n - bs - cs
    log_coef = special.gammaln(n + 1) - special.gammaln(bs + 1) - special.gammaln(cs + 1) - special.gammaln(rest + 1)

    q_lo, q_hi = max(0.0, -d0), (1.0 - d0) / 2.0

    def tail(q: float) -> float:
        p10, p01 = q + d0, q
        p00 = 1.0 - p10 - p01
        with np.errstate(divide="ignore", invalid="ignore"):
            lp = log_coef + special.xlogy(bs, p10) + special.xlogy(cs, p01) + special.xlogy(rest, p00)
        return float(np.sum(np.exp(lp[np.isfinite(lp)])))

    qs = np.linspace(q_lo, q_hi, grid)
    vals = np.array([tail(q) for q in qs])
    i = int(np.argmax(vals))
    best = vals[i]
    # Refine around the best grid point.
    a_, b_ = qs[max(i - 1, 0)], qs[min(i + 1, grid - 1)]
    if b_ > a_:
        res = optimize.minimize_scalar(lambda q: -tail(q), bounds=(a_, b_), method="bounded", options={"xatol": 1e-10})
        best = max(best, -float(res.fun))
    return min(1.0, best)


def paired_tost(
    b: int, c: int, n: int, margin: float = MARGIN, alpha: float = ALPHA, method: str = "score"
) -> PairedTOSTResult:
    """Paired TOST for pA - pB within (-margin, +margin).

    ``b`` = pairs with A=1, B=0; ``c`` = pairs with A=0, B=1; ``n`` = all pairs.
    ``method="score"``: Tango's asymptotic score test (p_low = 1 - Phi(Z(-m)), p_high = Phi(Z(+m))).
    ``method="exact"``: the exact unconditional variant (p maximised over the nuisance parameter);
    stricter, guarantees the level. The interval is the score interval in both cases.
    Never NaN or inf for 0 <= b, c, b + c <= n, n >= 1.
    """
    _check_counts(b, c, n)
    b, c, n = int(b), int(c), int(n)
    check_levels(margin, alpha)
    if method not in ("score", "exact"):
        raise ValueError(f"method must be 'score' or 'exact', got {method!r}")
    z_low = tango_z(b, c, n, -margin)
    z_high = tango_z(b, c, n, margin)
    if method == "score":
        from scipy import stats as _sps

        p_low = float(_sps.norm.sf(z_low))
        p_high = float(_sps.norm.cdf(z_high))
    else:
        p_low = _exact_p_one_sided(b, c, n, -margin, upper=True)
        p_high = _exact_p_one_sided(b, c, n, margin, upper=False)
    p = max(p_low, p_high)
    ci_low, ci_high = _score_ci(b, c, n, alpha)
    return PairedTOSTResult(
        b=b,
        c=c,
        n=n,
        margin=float(margin),
        alpha=float(alpha),
        method=method,
        diff=(b - c) / n,
        ci_low=ci_low,
        ci_high=ci_high,
        z_low=float(z_low),
        z_high=float(z_high),
        p_low=p_low,
        p_high=p_high,
        p_value=float(p),
        equivalent=bool(p < alpha),
    )


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for one arm's rate: scipy's ``binomtest(...).proportion_ci`` (method
    "wilson"; statsmodels' ``proportion_confint`` gives the same numbers, a test checks, but importing
    it loads pandas, some 60 MB and 0.5 s of a run that needs nothing else of it)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    from scipy import stats as _sps

    ci = _sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def cohens_h(p_a: float, p_b: float) -> float:
    """Cohen's h = 2 asin(sqrt(pA)) - 2 asin(sqrt(pB)), as statsmodels ``proportion_effectsize`` computes it."""
    return float(2 * (np.arcsin(np.sqrt(p_a)) - np.arcsin(np.sqrt(p_b))))


def required_n(discordance: float, margin: float = MARGIN, alpha: float = ALPHA, power: float = POWER) -> int:
    """Pairs needed for the paired TOST to reach ``power`` at true D = 0 and discordance psi.

    n = (z_{1-alpha} s0 + z_{1-beta/2} sqrt(psi))^2 / m^2, with s0^2 = 2 q + m (1 - m) and
    q = [psi - 2m + sqrt((2m - psi)^2 + 4 psi m (1 - m))] / 4 (beta = 1 - power).
    """
    psi, m = float(discordance), float(margin)
    if not (0.0 <= psi <= 1.0):
        raise ValueError(f"discordance must lie in [0, 1], got {psi!r}")
    if not (0.0 < power < 1.0):
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
    check_levels(margin, alpha)  # alpha 0 or margin 0 would need infinitely many pairs
    q = (psi - 2 * m + math.sqrt((2 * m - psi) ** 2 + 4 * psi * m * (1 - m))) / 4
    s0 = math.sqrt(2 * q + m * (1 - m))
    from scipy import stats as _sps

    z_a = _sps.norm.ppf(1 - alpha)
    z_b = _sps.norm.ppf(1 - (1 - power) / 2)
    return int(math.ceil((z_a * s0 + z_b * math.sqrt(psi)) ** 2 / m**2))


# -- one entry per statistic, for every K ------------------------------------------------------------
def tost(target, speculative, k: int = 1, margin: float = MARGIN, alpha: float = ALPHA, method: str = TOST_METHOD):
    """The equivalence test of one task from per-prompt refused counts (0..k), aligned by prompt.

    K = 1 (greedy): the paired test on the 2x2 table (``method`` "score", Tango's, or "exact");
    K >= 2 (sampled): the clustered test of ``sampled.clustered_tost``, which has one method.
    With all shares 0 or 1 the clustered score test is Tango's (docs/statistics.md, section 8).
    """
    from .clustered import clustered_tost, paired_counts

    x, y, kk = paired_counts(target, speculative, k, least=1)
    if kk == 1:
        table = paired_table(x.astype(bool), y.astype(bool))
        return paired_tost(table.b, table.c, table.n, margin=margin, alpha=alpha, method=method)
    return clustered_tost(x, y, kk, margin=margin, alpha=alpha)


def prompts_needed(
    target, speculative, k: int = 1, margin: float = MARGIN, alpha: float = ALPHA, power: float = POWER
) -> int:
    """Prompts the task needs for ``power`` at true D = 0, given the disagreement the run showed:
    :func:`required_n` at the observed discordance (K = 1), ``sampled.clustered_required_n`` (K >= 2)."""
    from .clustered import clustered_required_n, paired_counts

    x, y, kk = paired_counts(target, speculative, k, least=1)
    if kk == 1:
        return required_n(
            paired_table(x.astype(bool), y.astype(bool)).discordance, margin=margin, alpha=alpha, power=power
        )
    return clustered_required_n(x, y, kk, margin=margin, alpha=alpha, power=power)
