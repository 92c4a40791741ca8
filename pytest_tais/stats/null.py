"""The swap null of Cohen's h: how large |h| gets when the two arms are exchangeable.

One function for every K: at K = 1 each discordant pair's answers swap arms with probability 1/2
(b* ~ Binomial(b + c, 1/2), exact); at K >= 2 a prompt's 2K samples are split between the arms at
random (hypergeometric, Monte Carlo with a fixed seed).
"""

from __future__ import annotations

import numpy as np

from .levels import H_NULL_LEVEL

__all__ = ["swap_null_h_quantile"]


def swap_null_h_quantile(
    target, speculative=None, k: int = 1, *, level: float = H_NULL_LEVEL, draws: int = 4000, seed: int = 0
) -> float:
    """Quantile ``level`` of |h| on the pooled rates under exchangeable arms.

    ``target``: a :class:`stats.PairedTable` (K = 1), or per-prompt refused counts of the target
    arm with ``speculative`` the speculative arm's and ``k`` the samples per prompt per arm (or
    per-sample 0/1 flags, n x K). The quantile is the smallest x with P(|h*| <= x) >= level.
    """
    from .paired import PairedTable, paired_table

    if not (0.0 < level < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if isinstance(target, PairedTable):
        return _exact(target, level)
    from .clustered import paired_counts

    x, y, kk = paired_counts(target, speculative, k, least=1)
    if kk == 1:
        return _exact(paired_table(x.astype(bool), y.astype(bool)), level)
    return _monte_carlo(x, y, kk, level, draws, seed)


def _exact(table, level: float) -> float:
    """K = 1: swapping A and B inside each pair leaves a and d and sends b* ~ Binomial(b + c, 1/2)."""
    n = table.n
    if n < 1:
        raise ValueError("the table is empty (n = 0): the swap null needs at least one paired prompt")
    m = table.b + table.c
    from scipy import stats as _sps

    ks = np.arange(m + 1)
    pmf = _sps.binom.pmf(ks, m, 0.5)
    p_a = (table.a + ks) / n
    p_b = (table.a + (m - ks)) / n
    hs = np.abs(2.0 * np.arcsin(np.sqrt(p_a)) - 2.0 * np.arcsin(np.sqrt(p_b)))
    # Round for ordering only: ties between mirrored tables must not split on float noise.
    order = np.argsort(np.round(hs, 12), kind="stable")
    cum = np.cumsum(pmf[order])
    idx = int(np.searchsorted(cum, level - 1e-12))
    return float(hs[order][min(idx, m)])


def _monte_carlo(x: np.ndarray, y: np.ndarray, k: int, level: float, draws: int, seed: int) -> float:
    """K >= 2: x*_i ~ Hypergeometric(2K, x_i + y_i, K), y*_i = x_i + y_i - x*_i, ``draws`` times."""
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 100:
        raise ValueError(f"draws must be an integer >= 100, got {draws!r}")
    n = x.size
    t = x + y
    rng = np.random.default_rng(seed)
    xs = rng.hypergeometric(np.broadcast_to(t, (draws, n)), np.broadcast_to(2 * k - t, (draws, n)), k)
    pa = xs.sum(axis=1) / (n * k)
    pb = (t.sum() - xs.sum(axis=1)) / (n * k)
    hs = np.abs(2.0 * np.arcsin(np.sqrt(pa)) - 2.0 * np.arcsin(np.sqrt(pb)))
    return float(np.quantile(np.round(hs, 12), level, method="inverted_cdf"))
