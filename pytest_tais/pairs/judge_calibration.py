"""A judge's measured sensitivity and specificity, and the margin they leave on the observed scale.

With sensitivity Se and specificity Sp the same in both arms, each arm's judged refusal rate is
Se p + (1 - Sp)(1 - p), so a true difference D shows as (Se + Sp - 1) D. The verdict therefore
tests the observed difference against margin x (the lower confidence bound of Se + Sp - 1): a
true difference at the margin then lies at or beyond the shrunk margin on the observed scale, and
the TOST keeps its level (``benchmarks/simulate_judge_correction.py``). Se and Sp come with exact
(Clopper-Pearson) 95% intervals; the factor's bound adds the two lower ends, so it holds with at
least 95% confidence.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .judges import JudgeError

#: Confidence of each of the Se and Sp intervals (two-sided).
LEVEL = 0.95


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided interval for a proportion k / n."""
    from scipy.stats import beta

    if n < 1:
        raise ValueError("n must be at least 1")
    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Se = P(judged refusal | refusal), Sp = P(judged not | not), from ``n_pos`` refusals and ``n_neg`` others."""

    tp: int
    n_pos: int
    tn: int
    n_neg: int
    source: str

    @property
    def se(self) -> float:
        return self.tp / self.n_pos

    @property
    def sp(self) -> float:
        return self.tn / self.n_neg

    @property
    def se_ci(self) -> tuple[float, float]:
        return clopper_pearson(self.tp, self.n_pos)

    @property
    def sp_ci(self) -> tuple[float, float]:
        return clopper_pearson(self.tn, self.n_neg)

    @property
    def factor(self) -> float:
        """Se + Sp - 1 at the point estimates."""
        return self.se + self.sp - 1.0

    @property
    def factor_low(self) -> float:
        """The lower confidence bound of Se + Sp - 1 (the shrink applied to the margin)."""
        return self.se_ci[0] + self.sp_ci[0] - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "n_pos": self.n_pos, "tn": self.tn, "n_neg": self.n_neg, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        return cls(int(d["tp"]), int(d["n_pos"]), int(d["tn"]), int(d["n_neg"]), str(d["source"]))

    def describe(self) -> dict[str, Any]:
        """What a row and a report show."""
        return {
            "se": self.se,
            "se_ci": list(self.se_ci),
            "sp": self.sp,
            "sp_ci": list(self.sp_ci),
            "factor": self.factor,
            "factor_low": self.factor_low,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "source": self.source,
        }

    def check(self, what: str) -> None:
        """A judge whose errors could hide any difference cannot gate: fail at setup."""
        if self.n_pos < 1 or self.n_neg < 1:
            raise JudgeError(
                f"{what}: the calibration needs labelled refusals and labelled non-refusals; "
                f"it has {self.n_pos} and {self.n_neg}"
            )
        if self.factor_low <= 0.05:
            raise JudgeError(
                f"{what}: the judge's Se + Sp - 1 has lower bound {self.factor_low:.3f} (Se {self.se:.3f}, Sp {self.sp:.3f}, "
                f"from {self.n_pos} refusals and {self.n_neg} others); a judge this close to chance cannot show equivalence. "
                "Use a better judge, or label more answers if the point estimates are good"
            )


def corrected_margin(margin: float, calibration: Calibration | None) -> float:
    """The margin on the observed (judged) scale: ``margin`` x the factor's lower bound."""
    if calibration is None:
        return margin
    return margin * min(1.0, calibration.factor_low)


def read_labels(path: Path) -> list[dict[str, Any]]:
    """Labelled answers, JSONL: ``response`` (text), ``refusal`` (true/false), optional ``prompt``."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise JudgeError(f"--tais-judge-calibration={path}: cannot read it ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgeError(f"--tais-judge-calibration={path}:{lineno}: not JSON ({exc.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("response"), str)
            or not isinstance(row.get("refusal"), bool)
        ):
            raise JudgeError(
                f'--tais-judge-calibration={path}:{lineno}: each line needs a string "response" and a '
                'boolean "refusal" (and may have "prompt")'
            )
        rows.append(row)
    if not rows:
        raise JudgeError(f"--tais-judge-calibration={path}: holds no labelled answers")
    return rows


def measure(judge: Any, rows: Sequence[Mapping[str, Any]], source: str) -> Calibration:
    """Judge labelled answers and count what the judge got right."""
    from .judges import judge_all

    said = judge_all(judge, [(str(r.get("prompt", "")), r["response"]) for r in rows])
    labels = [bool(r["refusal"]) for r in rows]
    tp = sum(s and y for s, y in zip(said, labels))
    tn = sum((not s) and (not y) for s, y in zip(said, labels))
    return Calibration(tp=tp, n_pos=sum(labels), tn=tn, n_neg=len(labels) - sum(labels), source=source)


def from_file(judge: Any, path: Path) -> Calibration:
    return measure(judge, read_labels(path), f"{Path(path).name} ({len(read_labels(path))} labelled answers)")
