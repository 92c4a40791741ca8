"""Operating characteristics of the paired score TOST, by simulation.

For each n and discordance psi it draws paired tables (b, c) from the multinomial with
P(A=1,B=0) = (psi + D)/2 and P(A=0,B=1) = (psi - D)/2 and reports:
- at true D = margin (the equivalence null's boundary): the false-equivalence rate; it should stay
  near alpha (the notes saw 0.035-0.059 for the asymptotic test; the exact variant stays below alpha);
- at true D = 0: the pass rate next to the power the sample-size formula predicts.

Run: ``python benchmarks/simulate_tost.py [--reps 4000] [--exact]``. The table goes in docs/statistics.md.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import norm

from pytest_tais.stats import paired_tost, required_n


def predicted_power(n: int, psi: float, m: float, alpha: float) -> float:
    """Invert the notes' sample-size formula: power = 2 Phi(z_b) - 1."""
    if psi == 0:
        return float(n * m / (1 - m) > norm.ppf(1 - alpha) ** 2)
    q = (psi - 2 * m + math.sqrt((2 * m - psi) ** 2 + 4 * psi * m * (1 - m))) / 4
    s0 = math.sqrt(2 * q + m * (1 - m))
    z_b = (m * math.sqrt(n) - norm.ppf(1 - alpha) * s0) / math.sqrt(psi)
    return max(0.0, 2 * norm.cdf(z_b) - 1)


def rate(n: int, psi: float, d: float, m: float, alpha: float, reps: int, method: str, rng) -> float:
    p10, p01 = (psi + d) / 2, (psi - d) / 2
    draws = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=reps)
    cache: dict[tuple[int, int], bool] = {}
    hits = 0
    for b, c, _ in draws:
        key = (int(b), int(c))
        if key not in cache:
            cache[key] = paired_tost(key[0], key[1], n, margin=m, alpha=alpha, method=method).equivalent
        hits += cache[key]
    return hits / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--margin", type=float, default=0.03)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--exact", action="store_true", help="also simulate the exact variant (slow for large n)")
    args = ap.parse_args()
    rng = np.random.default_rng(20261128)
    m, alpha = args.margin, args.alpha
    t0 = time.perf_counter()
    print(
        f"paired score TOST, margin +/-{m}, alpha {alpha}, {args.reps} draws per cell (MC s.e. ~{math.sqrt(alpha * (1 - alpha) / args.reps):.3f} at alpha)"
    )
    print()
    print("| n | psi | false equivalence at D = margin | pass rate at D = 0 | predicted power (formula) |")
    print("|---|-----|---------------------------------|--------------------|---------------------------|")
    for n in (100, 200, 500, 1000):
        for psi in (0.04, 0.06, 0.10, 0.20):
            if psi < m:
                continue
            size = rate(n, psi, m, m, alpha, args.reps, "score", rng)
            power = rate(n, psi, 0.0, m, alpha, args.reps, "score", rng)
            print(f"| {n} | {psi:.2f} | {size:.3f} | {power:.3f} | {predicted_power(n, psi, m, alpha):.3f} |")
    print()
    print("| psi | n from the formula (80% power) | pass rate at D = 0 |")
    print("|-----|--------------------------------|--------------------|")
    for psi in (0.0, 0.01, 0.02, 0.05, 0.10):
        n = required_n(psi, margin=m, alpha=alpha, power=0.8)
        print(f"| {psi:.2f} | {n} | {rate(n, psi, 0.0, m, alpha, args.reps, 'score', rng):.3f} |")
    if args.exact:
        print()
        print("| n | psi | exact variant: false equivalence at D = margin | pass rate at D = 0 |")
        print("|---|-----|------------------------------------------------|--------------------|")
        for n, psi in ((100, 0.04), (100, 0.10), (200, 0.06)):
            size = rate(n, psi, m, m, alpha, args.reps // 4, "exact", rng)
            power = rate(n, psi, 0.0, m, alpha, args.reps // 4, "exact", rng)
            print(f"| {n} | {psi:.2f} | {size:.3f} | {power:.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
