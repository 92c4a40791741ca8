"""Statistics of a sampled screen: K samples per prompt per arm at temperature > 0.

Per prompt i each arm's refusal share over its K samples, x_i / K (target) and y_i / K
(speculative); prompts are the independent units. The per-prompt difference
d_i = (x_i - y_i) / K lives on the grid {-1, -1 + 1/K, ..., 1}, and the overall difference of the
pooled refusal rates is D = E[d]. The equivalence test (|D| < margin) is a score test for the mean
of a multinomial over that grid: the variance of d is taken from the restricted maximum-likelihood
distribution under D = D0, over the whole grid, so data that show no difference still carry the
variance of the cheapest null that could have produced them (mass at the far end of the grid). With
all shares 0 or 1 it is exactly Tango's paired score test (``stats.paired_tost``); see
docs/statistics.md, section 8, for the formulas, the candidates that lost and the simulation.

All functions are usable outside pytest; numpy and scipy only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats as _sps

from .stats import cohens_h

__all__ = [
    "SampledTostResult",
    "MovedShare",
    "as_counts",
    "share_differences",
    "sampled_tost",
    "restricted_variance",
    "sampled_required_n",
    "rerun_spread",
    "moved_share",
]

# Bisection steps for the Lagrange multiplier (the bracket has width < 2 / (1 - |D0|)).
_BISECT = 80


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k (samples per prompt per arm) must be an integer >= 2, got {k!r}")
    if k < 2:
        raise ValueError(f"k (samples per prompt per arm) must be at least 2, got {k}; with one sample use stats.paired_tost")
    return int(k)


def as_counts(values, k: int | None, name: str) -> tuple[np.ndarray, int]:
    """Per-prompt refused-sample counts from counts (1-D, needs ``k``) or 0/1 flags (2-D, n x K).

    Returns (counts as int64, k). Raises ValueError naming ``name`` and the fix on bad input.
    """
    arr = np.asarray(values)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected numbers, got a ragged or non-numeric sequence")
    if arr.ndim == 2:
        kk = arr.shape[1]
        if k is not None and _check_k(k) != kk:
            raise ValueError(f"{name}: per-sample array has {kk} samples per prompt but k={k}; pass matching k or counts")
        kk = _check_k(kk)
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name}: per-sample flags must be 0/1 (refused or not)")
        return arr.astype(np.int64).sum(axis=1), kk
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected per-prompt counts (1-D) or per-sample 0/1 flags (n x K), got shape {arr.shape}")
    if k is None:
        raise ValueError(f"{name}: per-prompt counts need k, the number of samples per prompt per arm")
    kk = _check_k(k)
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


def _pair(target, speculative, k) -> tuple[np.ndarray, np.ndarray, int]:
    x, kx = as_counts(target, k, "target")
    y, ky = as_counts(speculative, k, "speculative")
    if kx != ky:
        raise ValueError(f"the arms have different samples per prompt: target {kx}, speculative {ky}")
    if x.size != y.size:
        raise ValueError(f"the arms cover different numbers of prompts: target {x.size}, speculative {y.size}")
    if x.size < 1:
        raise ValueError("no prompts: the sampled TOST needs at least one prompt in both arms")
    return x, y, kx


def share_differences(target, speculative, k: int | None = None) -> np.ndarray:
    """d_i = (x_i - y_i) / K, target minus speculative, one per prompt."""
    x, y, kk = _pair(target, speculative, k)
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
    of the mass goes to the unobserved end of the grid (v = 1 or v = -1). Returns (V0, top, bottom):
    V0 = sum_j pi_j e_j^2, the variance of d under that distribution, and the mass put on an
    unobserved v = 1 or v = -1.
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
        pi = np.where(pos, w / (tot[:, None] * den), 0.0)
    rest = np.clip(1.0 - pi.sum(axis=1), 0.0, 1.0)
    top = np.where(at_lo, rest, 0.0)
    bottom = np.where(at_hi, rest, 0.0)
    v0 = (pi * e ** 2).sum(axis=1) + top * e[:, -1] ** 2 + bottom * e[:, 0] ** 2
    return v0, top, bottom


def _one_side(w: np.ndarray, vals: np.ndarray, d0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score Z at d0 and the extreme-mass guard, row by row: (z, guard, v0).

    z = sum_j w_j (v_j - d0) / sqrt(W V0). guard = (1 - w_end)^W, the probability, under the
    restricted distribution, that none of W prompts lands on the grid end that the null needed
    but the data never showed (0 where no mass was added).
    """
    tot = w.sum(axis=1)
    d0 = np.broadcast_to(np.asarray(d0, dtype=float), tot.shape)
    num = (w * (vals[None, :] - d0[:, None])).sum(axis=1)
    v0, top, bottom = _restricted(w, vals, d0)
    scale = np.sqrt(tot * v0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scale > 0, num / scale, 0.0)
    # Zero variance only when every prompt sits exactly at d0 (numerator 0): no evidence either way.
    z = np.where((scale <= 0) & (np.abs(num) > 1e-12), np.copysign(np.inf, num), z)
    extra = np.maximum(top, bottom)
    guard = np.where(extra > 0, np.exp(tot * np.log1p(-np.minimum(extra, 1.0 - 1e-16))), 0.0)
    return z, guard, v0


def _p_high(w: np.ndarray, vals: np.ndarray, d0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H0: D >= d0 against D < d0. Returns (p, z, guarded)."""
    z, guard, _ = _one_side(w, vals, d0)
    ps = _sps.norm.cdf(z)
    return np.maximum(ps, np.where(z < 0, guard, 0.0)), z, (z < 0) & (guard > ps)


def _p_low(w: np.ndarray, vals: np.ndarray, d0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H0: D <= d0 against D > d0. Returns (p, z, guarded)."""
    z, guard, _ = _one_side(w, vals, d0)
    ps = _sps.norm.sf(z)
    return np.maximum(ps, np.where(z > 0, guard, 0.0)), z, (z > 0) & (guard > ps)


def tost_histograms(w: np.ndarray, k: int, margin: float, alpha: float) -> np.ndarray:
    """Vectorised decision for (R, 2K+1) histograms of d: True where equivalent. For simulation."""
    vals = _grid(k)
    ph, _, _ = _p_high(w, vals, margin)
    pl, _, _ = _p_low(w, vals, -margin)
    return np.maximum(ph, pl) < alpha


@dataclasses.dataclass(frozen=True)
class SampledTostResult:
    """Result of :func:`sampled_tost`.

    ``p_target``/``p_speculative`` are the pooled refusal rates (all n K samples of an arm);
    ``diff`` = p_target - p_speculative = mean per-prompt share difference; ``ci_low``/``ci_high``
    the (1 - 2 alpha) interval (the d0 that neither one-sided test rejects); ``p_value`` =
    max(p_low, p_high); ``equivalent`` iff p_value < alpha. ``guarded`` says that the extreme-mass
    guard, not the score, set the deciding p-value. ``moved_prompts`` counts prompts whose shares
    differ at all; ``cohens_h`` is on the pooled rates.
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
    p_value: float
    equivalent: bool
    guarded: bool
    moved_prompts: int
    cohens_h: float

    def summary(self) -> str:
        guard = ", extreme-mass guard" if self.guarded else ""
        return (
            f"{self.n} prompts x {self.k} samples: D = {self.diff:+.4f}, "
            f"{100 * (1 - 2 * self.alpha):.0f}% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}] vs +/-{self.margin:.4f}; "
            f"TOST p = {self.p_value:.4g} ({self.method}{guard}) -> "
            f"{'equivalent' if self.equivalent else 'not equivalent'}"
        )


def _check_margin_alpha(margin: float, alpha: float) -> None:
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and 0.0 < margin < 1.0):
        raise ValueError(f"margin must lie in (0, 1), got {margin!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 < alpha < 0.5):
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha!r}")


def _bound(w: np.ndarray, vals: np.ndarray, diff: float, alpha: float, upper: bool) -> float:
    """The CI end: the d0 beyond ``diff`` where the one-sided p-value falls below alpha.

    p falls monotonically away from ``diff``; the crossing is bracketed on a batch of d0 values
    at once and the bracket refined until it is below 1e-10 wide.
    """
    side = _p_high if upper else _p_low
    far = 1.0 - 1e-9 if upper else -1.0 + 1e-9
    if (upper and diff >= far) or (not upper and diff <= far):
        return 1.0 if upper else -1.0
    inside, outside = diff, far
    if side(w, vals, outside)[0][0] >= alpha:
        return 1.0 if upper else -1.0
    batch = 64
    while abs(outside - inside) > 1e-10:
        d0 = np.linspace(inside, outside, batch + 2)[1:-1]
        p = side(np.repeat(w, batch, axis=0), vals, d0)[0]
        below = np.flatnonzero(p < alpha)
        first = int(below[0]) if below.size else batch
        new_outside = d0[first] if first < batch else outside
        new_inside = d0[first - 1] if first > 0 else inside
        inside, outside = float(new_inside), float(new_outside)
    return float(0.5 * (inside + outside))


def sampled_tost(target, speculative, k: int | None = None, margin: float = 0.03, alpha: float = 0.05) -> SampledTostResult:
    """TOST for |p_target - p_speculative| < margin with K samples per prompt per arm.

    ``target`` and ``speculative``: per-prompt counts of refused samples (1-D, 0..k, aligned by
    prompt; give ``k``) or per-sample 0/1 flags (n x K arrays; ``k`` optional, must match).
    One-sided p-values: p_high = max(Phi(Z(+m)), guard), p_low = max(1 - Phi(Z(-m)), guard), with
    Z the grid score statistic and the guard as in docs/statistics.md section 8. Never NaN.
    """
    _check_margin_alpha(margin, alpha)
    x, y, kk = _pair(target, speculative, k)
    n = int(x.size)
    w = _histogram(x, y, kk)[None, :]
    vals = _grid(kk)
    ph, zh, gh = _p_high(w, vals, float(margin))
    pl, zl, gl = _p_low(w, vals, -float(margin))
    p_high, p_low = float(ph[0]), float(pl[0])
    p = max(p_high, p_low)
    deciding_guard = bool(gh[0]) if p_high >= p_low else bool(gl[0])
    diff = float((x - y).sum() / (n * kk))
    pt, ps = float(x.sum() / (n * kk)), float(y.sum() / (n * kk))
    return SampledTostResult(
        n=n, k=kk, margin=float(margin), alpha=float(alpha), method="grid-score",
        p_target=pt, p_speculative=ps, diff=diff,
        ci_low=_bound(w, vals, diff, alpha, upper=False), ci_high=_bound(w, vals, diff, alpha, upper=True),
        z_low=float(zl[0]), z_high=float(zh[0]), p_low=p_low, p_high=p_high,
        p_value=p, equivalent=bool(p < alpha), guarded=deciding_guard,
        moved_prompts=int(np.count_nonzero(x != y)), cohens_h=cohens_h(pt, ps),
    )


def restricted_variance(probs: Sequence[float], k: int, d0: float) -> tuple[float, float]:
    """Population version of the restricted MLE: (V0, mass added at an unobserved grid end).

    ``probs``: the distribution of d over the 2K+1 grid points (-1 .. 1). Used for sample sizes.
    """
    kk = _check_k(k)
    w = np.asarray(probs, dtype=float)
    if w.shape != (2 * kk + 1,) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"probs must be {2 * kk + 1} non-negative weights over the grid -1..1 in steps of 1/{kk}")
    v0, top, bottom = _restricted((w / w.sum())[None, :], _grid(kk), float(d0))
    return float(v0[0]), float(max(top[0], bottom[0]))


def _required_n_from_probs(probs: np.ndarray, k: int, margin: float, alpha: float, power: float) -> int:
    """n = (z_{1-alpha} s0 + z_{1-beta/2} sigma)^2 / m^2 at true D = 0, and the guard's own floor."""
    vals = _grid(k)
    sym = 0.5 * (probs + probs[::-1])  # the same spread of d, recentred at D = 0
    sigma2 = float((sym * vals ** 2).sum())
    v0, extra = restricted_variance(sym, k, margin)
    z_a = _sps.norm.ppf(1 - alpha)
    z_b = _sps.norm.ppf(1 - (1 - power) / 2)
    n = (z_a * math.sqrt(v0) + z_b * math.sqrt(sigma2)) ** 2 / margin ** 2
    if extra > 0:
        n = max(n, math.log(alpha) / math.log1p(-extra))
    return int(math.ceil(n - 1e-9))


def sampled_required_n(target, speculative, k: int | None = None, margin: float = 0.03, alpha: float = 0.05,
                       power: float = 0.8) -> int:
    """Prompts needed for ``power`` at true D = 0, given the spread of d the run showed.

    The observed distribution of d is mirrored (d and -d, so that D = 0 with the same spread) and
    put into n = (z_{1-alpha} s0 + z_{1-beta/2} sigma)^2 / m^2, sigma^2 = E[d^2], s0^2 = the
    restricted variance at D0 = m; where that adds mass at a grid end, n is at least
    log(alpha) / log(1 - mass), the guard's own requirement.
    """
    _check_margin_alpha(margin, alpha)
    if not (0.0 < power < 1.0):
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
    x, y, kk = _pair(target, speculative, k)
    h = _histogram(x, y, kk)
    return _required_n_from_probs(h / h.sum(), kk, float(margin), float(alpha), float(power))


def rerun_spread(run_a, run_b, k: int | None = None, level: float = 0.95) -> float:
    """How far a prompt's refusal share moves between two runs of the same arm (e.g. target reruns
    with other seeds): the ``level`` quantile (lower, an observed value) of |a_i - b_i| over prompts."""
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    d = np.abs(share_differences(run_a, run_b, k))
    return float(np.quantile(d, level, method="lower"))


@dataclasses.dataclass(frozen=True)
class MovedShare:
    """Prompts whose refusal share moved by more than ``spread`` between the arms."""

    n: int
    moved: int
    share: float
    spread: float

    def summary(self) -> str:
        return f"{self.moved}/{self.n} prompts ({100 * self.share:.1f}%) moved by more than {self.spread:.3f}"


def moved_share(target, speculative, k: int | None = None, spread: float = 0.0) -> MovedShare:
    """Share of prompts with |x_i - y_i| / K > ``spread`` (the sampled stand-in for byte identity;
    take ``spread`` from :func:`rerun_spread` of target-vs-target reruns)."""
    if not (isinstance(spread, (int, float)) and math.isfinite(spread) and 0.0 <= spread <= 1.0):
        raise ValueError(f"spread must lie in [0, 1], got {spread!r}")
    d = np.abs(share_differences(target, speculative, k))
    moved = int(np.count_nonzero(d > spread + 1e-12))
    return MovedShare(n=int(d.size), moved=moved, share=moved / d.size, spread=float(spread))
