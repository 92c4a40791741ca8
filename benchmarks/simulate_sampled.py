"""Operating characteristics of the sampled screen's TOST (pytest_tais.stats.clustered), by simulation.

n prompts, K samples per prompt per arm. Each prompt has a target refusal rate p_i and a
speculative one r_i (per scenario); the arms' counts are X_i ~ Bin(K, p_i), Y_i ~ Bin(K, r_i), and
since prompts are iid a run's histogram of d_i = (X_i - Y_i) / K is drawn as one multinomial.
Printed, as Markdown tables for docs/statistics.md section 8:
1. size: the false-equivalence rate at a true difference D = E[p - r] = margin, for ceiling, floor,
   mid-rate and mixed scenarios, each with the difference spread over all prompts and concentrated
   on a few prompts that flip completely; K in {2, 4, 8, 16};
2. the candidates that were rejected, on the cells where they fail;
3. power at D = 0 and the required n per K (formula of sampled.clustered_required_n) with the pass
   rate simulated at that n.

Run: ``python benchmarks/simulate_sampled.py [--reps 4000]`` (one core, about two minutes at the
default). Seeded: the same command prints the same tables. The last line times one clustered_tost
call against the greedy screen's paired_tost.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from pytest_tais.stats import clustered as sampled
from pytest_tais import stats

KS = (2, 4, 8, 16)
SIZE_NS = (50, 90, 100, 200, 500, 1000)
POWER_NS = (100, 200, 500, 1000)
CHUNK = 1000  # reps per batch: bounds memory at n = 1000


# -- scenarios ----------------------------------------------------------------------------------
# Prompts are iid, so a run's histogram of d over the 2K+1 grid values is Multinomial(n, probs),
# probs the population distribution of d = (X - Y) / K; it is computed exactly for point rates and
# by quadrature (M quantile nodes) for Beta-distributed prompt rates.
M = 20000


def _beta_nodes(a: float, b: float) -> np.ndarray:
    return sps.beta(a, b).ppf((np.arange(M) + 0.5) / M)


U_SHAPED = _beta_nodes(0.5, 0.5)  # most prompts near 0 or 1, as in real batteries
NEAR_CEILING = _beta_nodes(19.0, 1.0)  # mean 0.95


def _pt(x: float) -> np.ndarray:
    return np.array([x])


# name: (description, m -> [(weight, p nodes, r nodes)]); every one has E[p - r] = m (to quadrature error)
NULL_SCENARIOS = {
    "ceiling-spread": ("p = 1, r = 1 - m on every prompt", lambda m: [(1.0, _pt(1.0), _pt(1 - m))]),
    "ceiling-flips": (
        "p = 1; r = 0 on a share m of prompts, else 1",
        lambda m: [(m, _pt(1.0), _pt(0.0)), (1 - m, _pt(1.0), _pt(1.0))],
    ),
    "floor-spread": ("p = m, r = 0", lambda m: [(1.0, _pt(m), _pt(0.0))]),
    "floor-flips": (
        "p = 1 on a share m of prompts, else 0; r = 0",
        lambda m: [(m, _pt(1.0), _pt(0.0)), (1 - m, _pt(0.0), _pt(0.0))],
    ),
    "mid-spread": ("p = 0.5 + m/2, r = 0.5 - m/2", lambda m: [(1.0, _pt(0.5 + m / 2), _pt(0.5 - m / 2))]),
    "mixed-proportional": (
        "u ~ Beta(0.5, 0.5); p = u, r = u (1 - 2m)",
        lambda m: [(1.0, U_SHAPED, U_SHAPED * (1 - 2 * m))],
    ),
    "mixed-flips": (
        "u ~ Beta(0.5, 0.5); p = u; r = 0 on a share 2m of prompts, else u",
        lambda m: [(2 * m, U_SHAPED, np.zeros(M)), (1 - 2 * m, U_SHAPED, U_SHAPED)],
    ),
    "near-ceiling-mixed": (
        "u ~ Beta(19, 1); p = u, r = u (1 - m / 0.95)",
        lambda m: [(1.0, NEAR_CEILING, NEAR_CEILING * (1 - m / 0.95))],
    ),
}

# name: (description, nodes u with p = r = u): true D = 0
POWER_SCENARIOS = {
    "ceiling": ("p = r = 1", _pt(1.0)),
    "near-ceiling": ("p = r = 0.97", _pt(0.97)),
    "near-ceiling-mixed": ("p = r = u, u ~ Beta(19, 1)", NEAR_CEILING),
    "mixed": ("p = r = u, u ~ Beta(0.5, 0.5)", U_SHAPED),
    "mid": ("p = r = 0.5", _pt(0.5)),
}


def population_probs(parts, k: int) -> np.ndarray:
    """Distribution of d = (X - Y) / K over the grid, X ~ Bin(K, p), Y ~ Bin(K, r) given the prompt."""
    probs = np.zeros(2 * k + 1)
    ks = np.arange(k + 1)
    for weight, p, r in parts:
        fx = sps.binom.pmf(ks[None, :], k, p[:, None])  # (M, K+1)
        fy = sps.binom.pmf(ks[None, :], k, r[:, None])
        joint = np.einsum("mx,my->xy", fx, fy) / p.size  # P(X = x, Y = y)
        for x in range(k + 1):
            probs[x - ks + k] += weight * joint[x]
    return probs / probs.sum()


def draw_hists(rng, probs: np.ndarray, n: int, reps: int):
    for start in range(0, reps, CHUNK):
        yield rng.multinomial(n, probs, size=min(CHUNK, reps - start)).astype(float)


# -- the candidates, each: (R, G) histograms -> (R,) bool "equivalent" ----------------------------
def _moments(w: np.ndarray, k: int):
    vals = np.arange(-k, k + 1) / k
    n = w.sum(axis=1)
    mean = (w * vals).sum(axis=1) / n
    ss = (w * (vals[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return vals, n, mean, ss


def cand_chosen(w, k, m, alpha):
    return sampled.tost_histograms(w, k, m, alpha)


def cand_score_only(w, k, m, alpha):
    return sampled.tost_histograms(w, k, m, alpha, tail=False)


def cand_paired_t(w, k, m, alpha):
    """statsmodels ttost_paired on the per-prompt shares: t with n - 1 df, sample variance."""
    _, n, mean, ss = _moments(w, k)
    se = np.sqrt(ss / (n - 1) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low, t_high = (mean + m) / se, (mean - m) / se
    p = np.maximum(sps.t.sf(t_low, n - 1), sps.t.cdf(t_high, n - 1))
    return np.nan_to_num(p, nan=1.0) < alpha


def cand_variance_floor(w, k, m, alpha):
    """Paired z TOST with the variance floored at m (1 - m) / K, the least variance a null can have."""
    _, n, mean, ss = _moments(w, k)
    se = np.sqrt(np.maximum(ss / (n - 1), m * (1 - m) / k) / n)
    p = np.maximum(sps.norm.sf((mean + m) / se), sps.norm.cdf((mean - m) / se))
    return p < alpha


def cand_null_centred(w, k, m, alpha):
    """Obuchowski/Durkalski-style cluster variance taken under the null: sum (d_i - D0)^2 / n^2."""
    vals, n, mean, _ = _moments(w, k)
    out = []
    for d0, upper in ((m, True), (-m, False)):
        v = (w * (vals[None, :] - d0) ** 2).sum(axis=1) / n
        z = (mean - d0) / np.sqrt(v / n)
        out.append(sps.norm.cdf(z) if upper else sps.norm.sf(z))
    return np.maximum(*out) < alpha


def cand_bootstrap(w, k, m, alpha, rng, b=400):
    """Cluster (prompt) bootstrap, percentile (1 - 2 alpha) interval inside (-m, m)."""
    vals = np.arange(-k, k + 1) / k
    out = np.empty(w.shape[0], dtype=bool)
    for i, row in enumerate(w):
        n = int(row.sum())
        boot = rng.multinomial(n, row / n, size=b) @ vals / n
        lo, hi = np.quantile(boot, [alpha, 1 - alpha])
        out[i] = (lo > -m) and (hi < m)
    return out


def rate(rng, probs, n, k, reps, m, alpha, cand=None) -> float:
    cand = cand or cand_chosen
    hits = 0
    for w in draw_hists(rng, probs, n, reps):
        hits += int(cand(w, k, m, alpha).sum())
    return hits / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4000, help="draws per cell (default 4000: MC s.e. ~0.0034 at alpha)")
    ap.add_argument("--margin", type=float, default=0.03)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    rng = np.random.default_rng(20261201)
    m, alpha, reps = args.margin, args.alpha, args.reps
    t0 = time.perf_counter()
    se = math.sqrt(alpha * (1 - alpha) / reps)
    print(
        f"sampled TOST (grid score + exact tail), margin +/-{m}, alpha {alpha}, {reps} draws per cell "
        f"(MC s.e. ~{se:.4f} at alpha)"
    )
    null_probs = {(name, k): population_probs(parts(m), k) for name, (_, parts) in NULL_SCENARIOS.items() for k in KS}
    for (name, k), probs in null_probs.items():
        d = float(probs @ (np.arange(-k, k + 1) / k))
        assert abs(d - m) < 1e-4, (name, k, d)

    print("\nSize: false-equivalence rate at true D = +margin\n")
    for name, (desc, _) in NULL_SCENARIOS.items():
        print(f"- {name}: {desc}")
    print()
    print("| scenario | n | " + " | ".join(f"K = {k}" for k in KS) + " |")
    print("|---|---|" + "---|" * len(KS))
    worst = (0.0, "")
    for name in NULL_SCENARIOS:
        for n in SIZE_NS:
            cells = [rate(rng, null_probs[name, k], n, k, reps, m, alpha) for k in KS]
            for k, c in zip(KS, cells):
                worst = max(worst, (c, f"{name}, n = {n}, K = {k}"))
            print(f"| {name} | {n} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print(f"\nworst cell: {worst[0]:.3f} ({worst[1]}); limit alpha + 0.01 = {alpha + 0.01:.3f}")

    print(
        f"\nRejected candidates: false-equivalence rate at D = +margin ({reps // 4} draws per cell; "
        "cluster bootstrap: 400 resamples)\n"
    )
    cands = [
        ("paired t (ttost_paired)", cand_paired_t),
        ("z, variance floor m(1-m)/K", cand_variance_floor),
        ("z, null-centred cluster variance", cand_null_centred),
        ("cluster bootstrap", lambda w, k_, m_, a_: cand_bootstrap(w, k_, m_, a_, rng)),
        ("grid score alone", cand_score_only),
        ("grid score + exact tail (chosen)", cand_chosen),
    ]
    print("| scenario | K | n | " + " | ".join(c[0] for c in cands) + " |")
    print("|---|---|---|" + "---|" * len(cands))
    for name in ("ceiling-flips", "ceiling-spread", "mixed-flips"):
        for k in (2, 16):
            for n in (20, 50, 90, 200):
                cells = [rate(rng, null_probs[name, k], n, k, reps // 4, m, alpha, fn) for _, fn in cands]
                print(f"| {name} | {k} | {n} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")

    print("\nPower: pass rate at true D = 0 (p = r per prompt)\n")
    for name, (desc, _) in POWER_SCENARIOS.items():
        print(f"- {name}: {desc}")
    print()
    power_probs = {
        (name, k): population_probs([(1.0, u, u)], k) for name, (_, u) in POWER_SCENARIOS.items() for k in KS
    }
    print("| scenario | n | " + " | ".join(f"K = {k}" for k in KS) + " |")
    print("|---|---|" + "---|" * len(KS))
    for name in POWER_SCENARIOS:
        for n in POWER_NS:
            cells = [rate(rng, power_probs[name, k], n, k, reps, m, alpha) for k in KS]
            print(f"| {name} | {n} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")

    print(
        "\nRequired n for 80% power at D = 0 (the formula of clustered_required_n on the population), "
        "and the pass rate simulated at that n\n"
    )
    print("| scenario | " + " | ".join(f"K = {k}: n / pass" for k in KS) + " |")
    print("|---|" + "---|" * len(KS))
    for name in POWER_SCENARIOS:
        cells = []
        for k in KS:
            probs = power_probs[name, k]
            n = sampled._required_n_from_probs(probs, k, m, alpha, 0.8)
            cells.append(f"{n} / {rate(rng, probs, n, k, reps, m, alpha):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    # What one verdict costs: the API on a realistic run, next to the greedy screen's test.
    x, y = rng.binomial(8, 0.9, 500), rng.binomial(8, 0.9, 500)
    t1 = time.perf_counter()
    for _ in range(5):
        sampled.clustered_tost(x, y, 8)
    t_sampled = (time.perf_counter() - t1) / 5
    t1 = time.perf_counter()
    for _ in range(5):
        stats.paired_tost(20, 18, 500)
    t_greedy = (time.perf_counter() - t1) / 5
    print(
        f"\none clustered_tost call (500 prompts x 8 samples, with its interval): {1000 * t_sampled:.0f} ms; "
        f"stats.paired_tost on 500 pairs: {1000 * t_greedy:.1f} ms"
    )
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
