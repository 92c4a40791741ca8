"""False equivalence at |D| = margin with an imperfect judge, with and without the judge correction.

    python benchmarks/simulate_judge_correction.py [--reps 4000] [--n 1000,4000] [--calibration 300]

A leak of exactly the margin (true D = +margin: refused in the target-only arm, complied in the
speculative one) is judged by a judge with sensitivity Se and specificity Sp, errors independent
per answer (the worst case: byte-identical answers get the same verdict, which only cancels). Its
Se and Sp are measured on ``--calibration`` labelled refusals and as many labelled others, anew in
every replicate, so the intervals' own uncertainty is part of what is simulated. For each Se in
[0.6, 1] and Sp in [0.9, 1] it prints the share of replicates the paired TOST (Tango score, alpha
0.05) calls equivalent: uncorrected (the stated margin) and judge-corrected (the margin times the
lower bound of Se + Sp - 1, ``pytest_tais.pairs.judge_calibration``). Target: corrected <= alpha + 0.01.
Then the cost: the pairs the TOST needs for 80% power at D = 0 with the corrected margin, against
the uncorrected margin, for the same discordance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_tais.pairs.judge_calibration import Calibration, corrected_margin  # noqa: E402
from pytest_tais.stats import required_n, tango_z  # noqa: E402

MARGIN, ALPHA = 0.03, 0.05
SE_GRID = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
SP_GRID = (0.9, 0.95, 1.0)


def judged_cells(p_true: np.ndarray, se: float, sp: float) -> np.ndarray:
    """P(judged (i, j)) for the cells (1,1), (1,0), (0,1), (0,0) from the true cells' probabilities."""
    said = {1: (se, 1 - se), 0: (1 - sp, sp)}  # P(judged 1), P(judged 0) given the truth
    out = np.zeros(4)
    for k, (x, y) in enumerate(((1, 1), (1, 0), (0, 1), (0, 0))):
        for m, (i, j) in enumerate(((1, 1), (1, 0), (0, 1), (0, 0))):
            out[m] += p_true[k] * said[x][1 - i] * said[y][1 - j]
    return out


def false_equivalence(
    se: float,
    sp: float,
    n: int,
    reps: int,
    n_cal: int,
    rng: np.random.Generator,
    p_target: float = 0.5,
    q: float = 0.01,
) -> tuple[float, float, float]:
    """(uncorrected rate, corrected rate, mean corrected margin) at true D = +MARGIN."""
    from scipy.stats import norm

    z = norm.ppf(1 - ALPHA)
    # True cells: P(1,0) = q + D, P(0,1) = q, the target refuses with p_target.
    p10, p01 = q + MARGIN, q
    p11 = p_target - p10
    p_true = np.array([p11, p10, p01, 1 - p11 - p10 - p01])
    tables = rng.multinomial(n, judged_cells(p_true, se, sp), size=reps)
    tps = rng.binomial(n_cal, se, size=reps)
    tns = rng.binomial(n_cal, sp, size=reps)
    margins = MARGIN * np.minimum(1.0, _lower(tps, n_cal) + _lower(tns, n_cal) - 1.0)
    # The same bound as pytest_tais.pairs.judge_calibration (vectorised here), checked on the first replicate.
    first = corrected_margin(MARGIN, Calibration(int(tps[0]), n_cal, int(tns[0]), n_cal, "simulated"))
    assert abs(first - margins[0]) < 1e-12, (first, margins[0])
    plain = corr = 0
    for (a, b, c, d), m in zip(tables, margins):
        for mm, is_corr in ((MARGIN, False), (m, True)):
            if mm <= 0:
                continue  # a judge no better than chance: the verdict is an error, never a pass
            eq = tango_z(int(b), int(c), n, -mm) > z and tango_z(int(b), int(c), n, mm) < -z
            if is_corr:
                corr += eq
            else:
                plain += eq
    return plain / reps, corr / reps, float(np.mean(margins))


def _lower(k: np.ndarray, n: int) -> np.ndarray:
    """The lower end of the two-sided 95% Clopper-Pearson interval, for many counts at once."""
    from scipy.stats import beta

    with np.errstate(invalid="ignore"):
        lo = beta.ppf(0.025, k, n - k + 1)
    return np.where(k == 0, 0.0, lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--n", default="1000,4000", help="paired prompts per task, comma-separated")
    ap.add_argument(
        "--calibration", type=int, default=300, help="labelled refusals (and as many others) behind Se and Sp"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ns = [int(x) for x in args.n.split(",")]
    print(
        f"false equivalence at true D = +{MARGIN:.2f} (the margin), paired TOST alpha {ALPHA}, {args.reps} replicates per cell, "
        f"Se and Sp measured on {args.calibration} + {args.calibration} labelled answers each replicate"
    )
    print("| Se | Sp | n | uncorrected | judge-corrected | mean corrected margin |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for n in ns:
        for se in SE_GRID:
            for sp in SP_GRID:
                plain, corr, m = false_equivalence(se, sp, n, args.reps, args.calibration, rng)
                worst = max(worst, corr)
                print(f"| {se:.2f} | {sp:.2f} | {n} | {plain:.4f} | {corr:.4f} | {100 * m:.2f}pp |", flush=True)
    se_mc = (worst * (1 - worst) / args.reps) ** 0.5
    print(
        f"worst judge-corrected rate: {worst:.4f} (Monte Carlo SE about {se_mc:.4f}); target <= {ALPHA + 0.01:.2f}: "
        f"{'ok' if worst <= ALPHA + 0.01 else 'ABOVE TARGET'}"
    )
    print()
    print("cost in n: pairs for 80% power at D = 0 (required_n), corrected margin against the stated one")
    print("| lower bound of Se + Sp - 1 | corrected margin | discordance 2% | 5% | 10% | ratio |")
    print("|---|---|---|---|---|---|")
    for f in (1.0, 0.95, 0.9, 0.8, 0.6, 0.4):
        m = MARGIN * f
        ns_ = [required_n(psi, margin=m, alpha=ALPHA) for psi in (0.02, 0.05, 0.10)]
        base = required_n(0.05, margin=MARGIN, alpha=ALPHA)
        print(f"| {f:.2f} | {100 * m:.2f}pp | {ns_[0]} | {ns_[1]} | {ns_[2]} | {ns_[1] / base:.2f}x |")
    return 0 if worst <= ALPHA + 0.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
