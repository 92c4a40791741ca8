"""The sampled screen's minimum detectable effect: a seeded simulation of the gate as shipped.

The greedy MDE (``leak.minimum_detectable_effect``) is exact: b given b + c is binomial. With K
samples per prompt the gate is two tests on the per-prompt share differences (the clustered TOST
and the exact sign-flip leak test), and neither has a closed-form power that holds to 0.5pp near a
ceiling or at small n (a normal approximation was off by up to 0.5pp at n = 120, K = 8;
docs/statistics.md, section 9). So the power is simulated, with a fixed seed and common random
numbers across the leaks tried, which makes it a deterministic, non-decreasing function of the leak.

Model. Prompts are drawn with replacement from the run's own (x_i, y_i) pairs, each with its arms
swapped with probability 1/2 (the observed spread, taken as exchangeable noise); a leak of delta
turns each refused speculative sample into compliance with probability delta / r (r: the pooled
refusal rate), so the expected drop in the speculative refusal rate is delta. The gate fails a draw
when the TOST does not show equivalence (``clustered.tost_histograms``, the decision of
``clustered_tost``) or the sign-flip test rejects at the leak level.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import fft as _fft

from . import clustered as _clustered

#: Draws per leak tried, and the seed: the MDE is reproducible and moves by about 0.1pp with the seed.
DRAWS = 400
SEED = 26
#: The bisection stops when the bracket is narrower than this share (0.05pp).
RESOLUTION = 5e-4
# Rows x FFT length per batch of the sign-flip distribution (about 64 MB of floats).
_CELLS = 1 << 23
# Draws x prompts x K up to which each sample gets its own uniform (float32: 64 MB).
_PER_SAMPLE = 1 << 24


@dataclasses.dataclass(frozen=True)
class SampledMDE:
    """``mde``: a share of answers (None where no leak reaches the power, or where the gate fails
    that often without a leak); ``fail_at_zero``: the simulated share of runs the gate fails with no leak."""

    mde: float | None
    fail_at_zero: float
    draws: int
    seed: int


def sign_flip_rejects(diffs: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Row by row, whether the exact one-sided sign-flip test (``leak.sign_flip_one_sided``) gives p <= alpha.

    ``diffs``: (R, n) integer differences x_i - y_i in -k..k. The null distribution of
    T = sum s_i |v_i| has characteristic function prod_m cos(m w)^(n_m) (n_m prompts of magnitude
    m); on an FFT grid longer than 2 sum |v_i| + 1 it inverts without aliasing.
    """
    d = np.asarray(diffs, dtype=np.int64)
    t_obs = d.sum(axis=1)
    # Hoeffding: p <= exp(-t^2 / (2 sum v_i^2)); where that is already <= alpha the test rejects, and a
    # sum <= 0 gives p >= 1/2. Only the rows in between need the exact distribution.
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.exp(-(t_obs.astype(float) ** 2) / (2.0 * (d**2).sum(axis=1)))
    out = (t_obs > 0) & (bound <= alpha)
    exact = np.flatnonzero((t_obs > 0) & ~out)
    if exact.size:
        out[exact] = _exact_rejects(d[exact], t_obs[exact], k, alpha)
    return out


def _exact_rejects(d: np.ndarray, t_obs: np.ndarray, k: int, alpha: float) -> np.ndarray:
    rows = d.shape[0]
    total = int(np.abs(d).sum(axis=1).max())  # T lies in -total..total for every row
    length = _fft.next_fast_len(2 * total + 1, real=True)
    w = 2 * np.pi * np.arange(length // 2 + 1) / length
    mags = np.stack([(np.abs(d) == m).sum(axis=1) for m in range(1, k + 1)], axis=1)  # (R, k)
    cos = np.cos(np.arange(1, k + 1)[:, None] * w[None, :])  # (k, F)
    log_abs = np.log(np.abs(cos), where=cos != 0, out=np.full(cos.shape, -np.inf))
    negative = (cos < 0).astype(np.int64)
    idx = np.arange(-total, total + 1) % length
    out = np.empty(rows, dtype=bool)
    step = max(1, _CELLS // length)
    for start in range(0, rows, step):
        m = mags[start : start + step]
        with np.errstate(invalid="ignore"):  # 0 * -inf where a magnitude is absent: no factor
            logs = np.where(m[:, :, None] > 0, m[:, :, None] * log_abs[None], 0.0).sum(axis=1)
        sign = 1 - 2 * ((m @ negative) % 2)
        pmf = _fft.irfft(sign * np.exp(logs), n=length, axis=1)[:, idx]  # T = -total .. total
        tail = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]
        p = tail[np.arange(m.shape[0]), t_obs[start : start + step] + total]
        out[start : start + step] = p <= alpha * (1 + 1e-9)
    return out


class _Draws:
    """The resampled prompts of every draw, fixed once: the leaks tried differ only in the thinning."""

    def __init__(self, x: np.ndarray, y: np.ndarray, k: int, draws: int, seed: int):
        rng = np.random.default_rng(seed)
        n = x.size
        pick = rng.integers(0, n, size=(draws, n))
        swap = rng.random((draws, n)) < 0.5
        self.k = k
        self.target = np.where(swap, y[pick], x[pick])
        spec = np.where(swap, x[pick], y[pick])
        self.spec = spec
        self.rate = float(x.sum() + y.sum()) / (2 * n * k)
        # One uniform per sample while that is small (a sample is kept when u >= q), else one per prompt
        # through the binomial's inverse CDF: either way a larger leak never keeps more refusals.
        self.per_sample = draws * n * k <= _PER_SAMPLE
        shape = (draws, n, k) if self.per_sample else (draws, n)
        self.u = rng.random(shape, dtype=np.float32)

    def diffs(self, delta: float) -> np.ndarray:
        q = min(delta / self.rate, 1.0) if self.rate > 0 else 0.0
        if self.per_sample:
            refused = np.arange(self.k)[None, None, :] < self.spec[..., None]  # the first y samples refused
            return self.target - (refused & (self.u >= q)).sum(axis=2)
        from scipy import stats

        return self.target - stats.binom.ppf(self.u, self.spec, 1.0 - q).astype(np.int64)

    def fail_rate(self, delta: float, margin: float, alpha: float, leak_alpha: float) -> float:
        d = self.diffs(delta)
        k = self.k
        cells = 2 * k + 1
        offset = (d + k) + cells * np.arange(d.shape[0])[:, None]
        hist = np.bincount(offset.ravel(), minlength=d.shape[0] * cells).reshape(-1, cells).astype(float)
        fails = ~_clustered.tost_histograms(hist, k, margin, alpha) | sign_flip_rejects(d, k, leak_alpha)
        return float(fails.mean())


def sampled_mde(
    target,
    speculative,
    k: int,
    *,
    margin: float,
    alpha: float,
    leak_alpha: float,
    power: float = 0.8,
    draws: int = DRAWS,
    seed: int = SEED,
) -> SampledMDE:
    """The smallest share delta of answers turned from refusal to compliance that fails the sampled gate
    (TOST at ``margin``/``alpha``, sign-flip test at ``leak_alpha``) in at least ``power`` of simulated runs.

    ``target``, ``speculative``: per-prompt refused counts (0..k). Bisection on delta to ``RESOLUTION``.
    """
    x, y, kk = _clustered.paired_counts(target, speculative, k)
    sim = _Draws(x, y, kk, draws, seed)

    def fails(delta: float) -> float:
        return sim.fail_rate(delta, margin, alpha, leak_alpha)

    at_zero = fails(0.0)
    top = sim.rate
    if at_zero >= power or top <= 0:
        return SampledMDE(None, at_zero, draws, seed)
    lo, hi = 0.0, min(top, RESOLUTION * 4)
    while fails(hi) < power:  # widen from small leaks: most MDEs are a few pp
        if hi >= top:
            return SampledMDE(None, at_zero, draws, seed)
        lo, hi = hi, min(top, 2 * hi)
    while hi - lo > RESOLUTION:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fails(mid) >= power else (mid, hi)
    return SampledMDE(hi, at_zero, draws, seed)
