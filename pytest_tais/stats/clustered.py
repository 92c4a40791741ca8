"""The clustered statistics of K >= 2 samples per prompt per arm at temperature > 0.

Per prompt i each arm's refusal share over its K samples, x_i / K (target) and y_i / K
(speculative); prompts are the independent units. The per-prompt difference
d_i = (x_i - y_i) / K lives on the grid {-1, -1 + 1/K, ..., 1}, and the overall difference of the
pooled refusal rates is D = E[d]. The equivalence test (|D| < margin) is a score test for the mean
of a multinomial over that grid: the variance of d is taken from the restricted maximum-likelihood
distribution under D = D0, over the whole grid, so data that show no difference still carry the
variance of the cheapest null that could have produced them (mass at the far end of the grid).
Each one-sided p-value is the larger of the score test's and the exact tail of D_hat under that
restricted distribution, which keeps the level where the normal reference fails (a ceiling, where
the null can sit on a few prompts that flip completely). With all shares 0 or 1 the score part is
exactly Tango's paired score test (``stats.paired_tost``), the K = 1 case of ``stats.tost``; see docs/statistics.md, section 8, for
the formulas, the candidates that lost and the simulation.

All functions are usable outside pytest (numpy and scipy; Cohen's h via ``stats``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import fft as _fft, stats as _sps

from .levels import ALPHA, MARGIN, POWER, check_levels
from .paired import cohens_h

__all__ = [
    "ClusteredTostResult",
    "as_counts",
    "paired_counts",
    "share_differences",
    "clustered_tost",
    "restricted_variance",
    "clustered_required_n",
]

# Bisection steps for the Lagrange multiplier (the bracket has width < 2 / (1 - |D0|)).
_BISECT = 80


def _check_k(k, least: int = 2) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k (samples per prompt per arm) must be an integer >= {least}, got {k!r}")
    if k < least:
        raise ValueError(
            f"k (samples per prompt per arm) must be at least {least}, got {k}; with one sample use stats.tost"
        )
    return int(k)


def as_counts(values, k: int | None, name: str, least: int = 2) -> tuple[np.ndarray, int]:
    """Per-prompt refused-sample counts from counts (1-D, needs ``k``) or 0/1 flags (2-D, n x K).

    Returns (counts as int64, k). Raises ValueError naming ``name`` and the fix on bad input.
    """
    arr = np.asarray(values)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected numbers, got a ragged or non-numeric sequence")
    if arr.ndim == 2:
        kk = arr.shape[1]
        if k is not None and _check_k(k, least) != kk:
            raise ValueError(
                f"{name}: per-sample array has {kk} samples per prompt but k={k}; pass matching k or counts"
            )
        kk = _check_k(kk, least)
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name}: per-sample flags must be 0/1 (refused or not)")
        return arr.astype(np.int64).sum(axis=1), kk
    if arr.ndim != 1:
        raise ValueError(
            f"{name}: expected per-prompt counts (1-D) or per-sample 0/1 flags (n x K), got shape {arr.shape}"
        )
    if k is None:
        raise ValueError(f"{name}: per-prompt counts need k, the number of samples per prompt per arm")
    kk = _check_k(k, least)
    if arr.dtype.kind == "b":
        raise ValueError(f"{name}: booleans given as counts; pass per-sample flags as an n x K array")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: counts must be numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: counts contain NaN or infinity")
        if (arr != np.round(arr)).any():
            raise ValueError(f"{name}: counts must be whole numbers of refused samples")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() > kk):
        raise ValueError(f"{name}: counts must lie in 0..k={kk}, got {int(out.min())}..{int(out.max())}")
    return out, kk


def paired_counts(target, speculative, k, least: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """Both arms' per-prompt refused counts, checked against each other: (x, y, K)."""
    x, kx = as_counts(target, k, "target", least)
    y, ky = as_counts(speculative, k, "speculative", least)
    if kx != ky:
        raise ValueError(f"the arms have different samples per prompt: target {kx}, speculative {ky}")
    if x.size != y.size:
        raise ValueError(f"the arms cover different numbers of prompts: target {x.size}, speculative {y.size}")
    if x.size < 1:
        raise ValueError("no prompts: the TOST needs at least one prompt in both arms")
    return x, y, kx


def share_differences(target, speculative, k: int | None = None) -> np.ndarray:
    """d_i = (x_i - y_i) / K, target minus speculative, one per prompt."""
    x, y, kk = paired_counts(target, speculative, k)
    return (x - y) / kk


def _histogram(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Counts of d over the grid index j = x - y + K, j = 0..2K."""
    return np.bincount(x - y + k, minlength=2 * k + 1).astype(float)


def _grid(k: int) -> np.ndarray:
    return np.arange(-k, k + 1) / k


def _restricted(w: np.ndarray, vals: np.ndarray, d0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restricted MLE of the grid distribution under E[d] = d0, row by row.

    ``w``: (R, G) non-negative weights (counts or probabilities) over the grid ``vals`` (G,), which
    runs from -1 to 1; ``d0`` a scalar or one value per row. The maximiser of sum_j w_j log pi_j
    subject to sum_j pi_j (v_j - d0) = 0 is pi_j = w_j / (W (1 + lam e_j)), e_j = v_j - d0, with lam
    the root of g(lam) = sum_j w_j e_j / (1 + lam e_j) = 0 in (-1 / (1 - d0), 1 / (1 + d0)); when g
    has no root there (the observed values cannot average d0), lam sits at the bound and the rest
    of the mass goes to the unobserved end of the grid (v = 1 or v = -1). Returns (V0, end, pi):
    V0 = sum_j pi_j e_j^2, the variance of d under that distribution, the mass put on an end of
    the grid beyond what the data showed, and pi (R, G) itself.
    """
    r = w.shape[0]
    d0 = np.broadcast_to(np.asarray(d0, dtype=float), (r,))
    e = vals[None, :] - d0[:, None]
    tot = w.sum(axis=1)
    pos = w > 0
    lam_lo, lam_hi = -1.0 / e[:, -1], -1.0 / e[:, 0]

    def g(lam: np.ndarray) -> np.ndarray:
        den = 1.0 + lam[:, None] * e
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pos, w * e / den, 0.0)
        return terms.sum(axis=1)

    at_lo = ~pos[:, -1] & (g(lam_lo) <= 0)
    at_hi = ~pos[:, 0] & (g(lam_hi) >= 0) & ~at_lo
    lo, hi = lam_lo.copy(), lam_hi.copy()
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        up = g(mid) > 0  # g decreases in lam: a positive g means the root lies above
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    lam = np.where(at_lo, lam_lo, np.where(at_hi, lam_hi, 0.5 * (lo + hi)))
    den = 1.0 + lam[:, None] * e
    with np.errstate(divide="ignore", invalid="ignore"):
        pi = np.where(pos & (den > 0), w / (tot[:, None] * den), 0.0)
    # What the observed cells do not hold sits at the end lam points to: exactly so at a bound, and
    # in the limit where an end cell's weight is below float resolution (population weights).
    rest = np.clip(1.0 - pi.sum(axis=1), 0.0, 1.0)
    pi[:, -1] += np.where(lam < 0, rest, 0.0)
    pi[:, 0] += np.where(lam >= 0, rest, 0.0)
    pi /= pi.sum(axis=1, keepdims=True)
    v0 = (pi * e**2).sum(axis=1)
    return v0, rest, pi


def _score_z(w: np.ndarray, vals: np.ndarray, d0) -> tuple[np.ndarray, np.ndarray]:
    """Score Z at d0, row by row: z = sum_j w_j (v_j - d0) / sqrt(W V0); also the restricted pi."""
    tot = w.sum(axis=1)
    d0 = np.broadcast_to(np.asarray(d0, dtype=float), tot.shape)
    num = (w * (vals[None, :] - d0[:, None])).sum(axis=1)
    v0, _, pi = _restricted(w, vals, d0)
    scale = np.sqrt(tot * v0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scale > 0, num / scale, 0.0)
    # Zero variance only when every prompt sits exactly at d0 (numerator 0): no evidence either way.
    z = np.where((scale <= 0) & (np.abs(num) > 1e-12), np.copysign(np.inf, num), z)
    return z, pi


# Rows x FFT length per batch in the exact tail (bounds memory at about 64 MB of complex numbers).
_FFT_CELLS = 1 << 22


def _int_power(z: np.ndarray, n: int) -> np.ndarray:
    """z ** n by repeated squaring (numpy's complex power goes through exp and log: slow)."""
    out = np.ones_like(z)
    base = z.copy()
    while n:
        if n & 1:
            out *= base
        n >>= 1
        if n:
            base *= base
    return out


def _exact_tail(pi: np.ndarray, n: int, s_obs: np.ndarray, lower: bool) -> np.ndarray:
    """P(S <= s_obs) (``lower``) or P(S >= s_obs) for S, the sum of n iid grid indices drawn from
    each row of ``pi`` (R, G): the distribution of n * K * (D_hat + 1), by FFT convolution.

    Where the support (2K n + 1 values) is long, a circular window of mean +/- (15 sd + 20 K) is
    used instead; Bernstein's inequality puts the mass folded in from outside it below 1e-7.
    """
    g = pi.shape[1]
    k2 = g - 1
    size = k2 * n + 1
    j = np.arange(g)
    mean = n * (pi * j).sum(axis=1)
    sd = np.sqrt(n * np.clip((pi * j**2).sum(axis=1) - (pi * j).sum(axis=1) ** 2, 0.0, None))
    half = int(np.ceil(15.0 * sd.max() + 10.0 * k2)) + 1
    length = _fft.next_fast_len(min(size, 2 * half + 1), real=True)
    out = np.empty(pi.shape[0])
    step = max(1, _FFT_CELLS // length)
    for start in range(0, pi.shape[0], step):
        sl = slice(start, start + step)
        block = pi[sl]
        circ = np.clip(_fft.irfft(_int_power(_fft.rfft(block, n=length, axis=1), n), n=length, axis=1), 0.0, None)
        # The window holds S = lo .. lo + length - 1, S stored at circ[S mod length]; sum a
        # circular run of it through a cumulative sum with a leading zero.
        lo = np.clip(np.floor(mean[sl]).astype(np.int64) - length // 2, 0, max(size - length, 0))
        if lower:
            first, count = lo, np.clip(s_obs[sl] - lo + 1, 0, length)
        else:
            first, count = np.maximum(s_obs[sl], lo), np.clip(lo + length - np.maximum(s_obs[sl], lo), 0, length)
        cum = np.concatenate([np.zeros((block.shape[0], 1)), np.cumsum(circ, axis=1)], axis=1)
        rows = np.arange(block.shape[0])
        a = first % length
        end = a + count
        inner = cum[rows, np.minimum(end, length)] - cum[rows, a]
        wrapped = np.where(end > length, cum[rows, np.clip(end - length, 0, length)], 0.0)
        out[sl] = inner + wrapped
    return np.clip(out, 0.0, 1.0)


def _side(w: np.ndarray, vals: np.ndarray, d0, upper: bool, alpha: float | None = None, tail: bool = True):
    """One-sided p-values, row by row: (p, z, p_score, p_tail).

    upper: H0 D >= d0 against D < d0 (small D_hat is extreme); else H0 D <= d0 against D > d0.
    p = max(p_score, p_tail): p_score from the normal reference, p_tail the exact probability, under
    the restricted MLE, of a D_hat at least as extreme as the observed one (Storer & Kim 1990).
    With ``alpha`` given, p_tail is only computed where p_score < alpha (elsewhere it cannot
    change a decision) and is NaN there.
    """
    z, pi = _score_z(w, vals, d0)
    p_score = _sps.norm.cdf(z) if upper else _sps.norm.sf(z)
    p_tail = np.full(z.shape, np.nan)
    if tail:
        need = np.ones(z.shape, dtype=bool) if alpha is None else p_score < alpha
        if need.any():
            ns = w.sum(axis=1)
            n = int(round(float(ns[0])))
            if not np.allclose(ns, n):
                raise ValueError("internal: rows must hold the same number of prompts")
            s_obs = np.rint((w * np.arange(w.shape[1])[None, :]).sum(axis=1)).astype(np.int64)
            p_tail[need] = _exact_tail(pi[need], n, s_obs[need], lower=upper)
    p = np.fmax(p_score, np.nan_to_num(p_tail, nan=0.0))
    return p, z, p_score, p_tail


def tost_histograms(w: np.ndarray, k: int, margin: float, alpha: float, tail: bool = True) -> np.ndarray:
    """Vectorised decision for (R, 2K+1) histograms of d, all rows with the same n: True where
    equivalent. For simulation; ``tail=False`` gives the bare score test (a rejected candidate)."""
    vals = _grid(k)
    ph = _side(w, vals, margin, True, alpha, tail)[0]
    pl = _side(w, vals, -margin, False, alpha, tail)[0]
    return np.maximum(ph, pl) < alpha


@dataclasses.dataclass(frozen=True)
class ClusteredTostResult:
    """Result of :func:`clustered_tost`.

    ``p_target``/``p_speculative`` are the pooled refusal rates (all n K samples of an arm);
    ``diff`` = p_target - p_speculative = mean per-prompt share difference; ``ci_low``/``ci_high``
    the (1 - 2 alpha) interval (the d0 that neither one-sided test rejects); ``p_low``/``p_high``
    the one-sided p-values, each the larger of its score and exact-tail parts (``p_score`` and
    ``p_tail`` are the larger side of each part); ``p_value`` = max(p_low, p_high); ``equivalent``
    iff p_value < alpha. ``moved_prompts`` counts prompts whose shares differ at all;
    ``cohens_h`` is on the pooled rates.
    """

    n: int
    k: int
    margin: float
    alpha: float
    method: str
    p_target: float
    p_speculative: float
    diff: float
    ci_low: float
    ci_high: float
    z_low: float
    z_high: float
    p_low: float
    p_high: float
    p_score: float
    p_tail: float
    p_value: float
    equivalent: bool
    moved_prompts: int
    cohens_h: float

    def summary(self) -> str:
        return (
            f"{self.n} prompts x {self.k} samples: D = {self.diff:+.4f}, "
            f"{100 * (1 - 2 * self.alpha):.0f}% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}] vs +/-{self.margin:.4f}; "
            f"TOST p = {self.p_value:.4g} ({self.method}: score {self.p_score:.4g}, exact tail {self.p_tail:.4g}) -> "
            f"{'equivalent' if self.equivalent else 'not equivalent'}"
        )


def _bound(w: np.ndarray, vals: np.ndarray, diff: float, alpha: float, upper: bool) -> float:
    """The CI end: the d0 beyond ``diff`` where the one-sided p-value falls below alpha.

    p falls monotonically away from ``diff``; the crossing is bracketed on a batch of d0 values
    at once and the bracket refined until it is below 1e-9 wide.
    """
    far = 1.0 - 1e-9 if upper else -1.0 + 1e-9
    if (upper and diff >= far) or (not upper and diff <= far):
        return 1.0 if upper else -1.0

    def p(d0: np.ndarray) -> np.ndarray:
        return _side(np.repeat(w, d0.size, axis=0), vals, d0, upper, alpha)[0]

    inside, outside = diff, far
    if p(np.array([outside]))[0] >= alpha:
        return 1.0 if upper else -1.0
    batch = 32
    while abs(outside - inside) > 1e-9:
        d0 = np.linspace(inside, outside, batch + 2)[1:-1]
        below = np.flatnonzero(p(d0) < alpha)
        first = int(below[0]) if below.size else batch
        new_outside = d0[first] if first < batch else outside
        new_inside = d0[first - 1] if first > 0 else inside
        inside, outside = float(new_inside), float(new_outside)
    return float(0.5 * (inside + outside))


def clustered_tost(
    target, speculative, k: int | None = None, margin: float = MARGIN, alpha: float = ALPHA
) -> ClusteredTostResult:
    """TOST for |p_target - p_speculative| < margin with K samples per prompt per arm.

    ``target`` and ``speculative``: per-prompt counts of refused samples (1-D, 0..k, aligned by
    prompt; give ``k``) or per-sample 0/1 flags (n x K arrays; ``k`` optional, must match).
    Each one-sided p-value is the larger of the grid score test's (normal reference) and the
    exact tail under the restricted MLE; docs/statistics.md section 8. Never NaN.
    """
    check_levels(margin, alpha)
    x, y, kk = paired_counts(target, speculative, k)
    n = int(x.size)
    w = _histogram(x, y, kk)[None, :]
    vals = _grid(kk)
    ph, zh, sh, th = _side(w, vals, float(margin), True)
    pl, zl, sl, tl = _side(w, vals, -float(margin), False)
    p_high, p_low = float(ph[0]), float(pl[0])
    p = max(p_high, p_low)
    diff = float((x - y).sum() / (n * kk))
    pt, ps = float(x.sum() / (n * kk)), float(y.sum() / (n * kk))
    return ClusteredTostResult(
        n=n,
        k=kk,
        margin=float(margin),
        alpha=float(alpha),
        method="grid score + exact tail",
        p_target=pt,
        p_speculative=ps,
        diff=diff,
        ci_low=_bound(w, vals, diff, alpha, upper=False),
        ci_high=_bound(w, vals, diff, alpha, upper=True),
        z_low=float(zl[0]),
        z_high=float(zh[0]),
        p_low=p_low,
        p_high=p_high,
        p_score=float(max(sh[0], sl[0])),
        p_tail=float(max(th[0], tl[0])),
        p_value=p,
        equivalent=bool(p < alpha),
        moved_prompts=int(np.count_nonzero(x != y)),
        cohens_h=cohens_h(pt, ps),
    )


def restricted_variance(probs: Sequence[float], k: int, d0: float) -> tuple[float, float]:
    """Population version of the restricted MLE under E[d] = d0: (V0, mass put on the grid end).

    ``probs``: the distribution of d over the 2K+1 grid points (-1 .. 1). Used for sample sizes.
    """
    kk = _check_k(k)
    w = np.asarray(probs, dtype=float)
    if w.shape != (2 * kk + 1,) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"probs must be {2 * kk + 1} non-negative weights over the grid -1..1 in steps of 1/{kk}")
    v0, rest, _ = _restricted((w / w.sum())[None, :], _grid(kk), float(d0))
    return float(v0[0]), float(rest[0])


def _required_n_from_probs(probs: np.ndarray, k: int, margin: float, alpha: float, power: float) -> int:
    """n = (z_{1-alpha} s0 + z_{1-beta/2} sigma)^2 / m^2 at true D = 0, raised where needed until a
    sample with D_hat = 0 passes the exact tail too."""
    vals = _grid(k)
    sym = 0.5 * (probs + probs[::-1])  # the same spread of d, recentred at D = 0
    sigma2 = float((sym * vals**2).sum())
    v0, _, pi = _restricted(sym[None, :], vals, margin)
    z_a = _sps.norm.ppf(1 - alpha)
    z_b = _sps.norm.ppf(1 - (1 - power) / 2)
    n = max(1, int(math.ceil((z_a * math.sqrt(v0[0]) + z_b * math.sqrt(sigma2)) ** 2 / margin**2 - 1e-9)))

    def tail_ok(nn: int) -> bool:  # P(D_hat <= 0) under the restricted MLE, n = nn
        return float(_exact_tail(pi, nn, np.array([nn * k]), lower=True)[0]) < alpha

    if tail_ok(n):
        return n
    lo, hi = n, 2 * n
    while not tail_ok(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if tail_ok(mid) else (mid, hi)
    return hi


def clustered_required_n(
    target, speculative, k: int | None = None, margin: float = MARGIN, alpha: float = ALPHA, power: float = POWER
) -> int:
    """Prompts needed for ``power`` at true D = 0, given the spread of d the run showed.

    The observed distribution of d is mirrored (d and -d, so that D = 0 with the same spread) and
    put into n = (z_{1-alpha} s0 + z_{1-beta/2} sigma)^2 / m^2, sigma^2 = E[d^2], s0^2 = the
    restricted variance at D0 = m; n is then raised, where needed, until a sample with D_hat = 0
    passes the exact tail (all shares equal at a ceiling: n >= log(alpha) / log(1 - m), 99).
    """
    check_levels(margin, alpha)
    if not (0.0 < power < 1.0):
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
    x, y, kk = paired_counts(target, speculative, k)
    h = _histogram(x, y, kk)
    return _required_n_from_probs(h / h.sum(), kk, float(margin), float(alpha), float(power))
