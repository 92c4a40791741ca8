"""The token-level losslessness audit: is each speculative answer the target's own greedy output?

Greedy engine runs (K = 1, temperature 0) score every speculative answer that is not byte-identical
to its target-only partner through the target model, teacher-forced (prompt + the emitted tokens;
``engines.arms`` does it, identical pairs cost nothing). The record of one scored answer is its
``target_scores`` (:mod:`pytest_tais.records.generation`): the positions where the emitted token is
not the target's top token, each with ``gap`` = the target's top logprob - the emitted token's
logprob, in nats. Here those positions are classified:

- **near-tie**: ``gap <= tolerance``; the two tokens are within the stack's numeric noise of each
  other, so the target itself could have emitted either on another batch shape;
- **violation**: ``gap > tolerance``; the target would not have produced this token.

The tolerance comes from the stack's own noise where ``--tais-null-runs`` measured it (the largest
gap at the divergence positions of the target-vs-target reruns, scored the same way, never below
:data:`NULL_FLOOR`), else from :data:`DEFAULT_TOLERANCE` by the dtype the target ran in
(docs/sensitivity.md, "False failures on real numerics drift", has the measurements behind them).

A method that claims lossless verification fails the task on any violation; a lossy one (typical,
synthetic, wrong-q acceptance) reports its violation rate. Sampled screens: not applicable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

#: nats, per dtype the target ran in: the largest gap still called a near-tie without null reruns.
#: Measured (docs/sensitivity.md, "False failures on real numerics drift"): every bfloat16
#: divergence seen was one rounding step of the logits (0.125 nats for SmolLM2-135M). A bfloat16
#: logit of magnitude 64-128 rounds in steps of 0.5, a float16 one in steps of 0.0625; a draft's own
#: token that the target would not emit sits many nats below its top (15-22 for the bundled models).
DEFAULT_TOLERANCE: dict[str, float] = {"float32": 0.01, "bfloat16": 0.5, "float16": 0.0625}
#: The smallest tolerance null reruns can set: reruns that never diverge still leave float32's rounding.
NULL_FLOOR = 0.01
NEAR_TIE = "near-tie"
VIOLATION = "violation"
#: The verifier claims recorded with the scores.
LOSSLESS = "lossless"


def classify_gap(gap: float, tolerance: float) -> str:
    """One position: a near-tie when ``gap <= tolerance`` (nats), else a violation."""
    return NEAR_TIE if gap <= tolerance else VIOLATION


def classify_positions(mismatches: Iterable[Mapping[str, Any]], tolerance: float) -> dict[str, list[dict[str, Any]]]:
    """Positions where the emitted token is not the target's top token, split by ``gap`` (nats).

    Each mismatch is a mapping with at least ``gap``; it comes back unchanged (a copy) with
    ``"class"`` set, under ``"near_ties"`` or ``"violations"``.
    """
    if not tolerance >= 0.0:
        raise ValueError(f"the audit's tolerance must be a number >= 0 (nats), got {tolerance!r}")
    out: dict[str, list[dict[str, Any]]] = {"near_ties": [], "violations": []}
    for m in mismatches:
        kind = classify_gap(float(m["gap"]), tolerance)
        out["near_ties" if kind == NEAR_TIE else "violations"].append({**m, "class": kind})
    return out


def default_tolerance(dtype: str | None) -> tuple[float, str]:
    """The documented default for ``dtype`` and where it came from (an unknown dtype gets the widest)."""
    if dtype in DEFAULT_TOLERANCE:
        return DEFAULT_TOLERANCE[dtype], f"default for {dtype} (no --tais-null-runs)"
    widest = max(DEFAULT_TOLERANCE.values())
    return widest, f"default for an unrecorded dtype {dtype!r}: the widest, {widest} (no --tais-null-runs)"


def tolerance_from_null(gaps: Sequence[float], reruns: int) -> tuple[float, str]:
    """The tolerance the null reruns measured: their largest divergence gap, at least :data:`NULL_FLOOR`."""
    largest = max(gaps, default=0.0)
    tol = max(NULL_FLOOR, float(largest))
    seen = f"largest of {len(gaps)} divergence gap(s) {largest:.4g}" if gaps else "no divergence"
    return tol, f"{reruns} target-vs-target null rerun(s) ({seen}; floor {NULL_FLOOR})"


@dataclasses.dataclass(frozen=True)
class Audit:
    """One task's audit. ``status``: "run", "not run" (``why``) or "not applicable" (``why``)."""

    status: str
    why: str = ""
    differing: int = 0  # pairs whose answers are not byte-identical
    audited: int = 0  # of those, answers scored through the target
    positions: int = 0  # tokens scored
    near_ties: int = 0
    violations: tuple[dict[str, Any], ...] = ()
    answers_violating: int = 0
    n: int = 0
    tolerance: float | None = None
    tolerance_source: str = ""
    verifier: str | None = None  # "lossless" or "lossy: <rule>", as the records say
    cost: Mapping[str, Any] | None = None

    @property
    def lossless_claim(self) -> bool:
        return self.verifier == LOSSLESS

    @property
    def gates(self) -> bool:
        """A method that claims lossless verification fails on any violation."""
        return self.status == "run" and self.lossless_claim and bool(self.violations)

    @property
    def violation_rate(self) -> float | None:
        """Answers with at least one violation, as a share of the task's pairs."""
        return self.answers_violating / self.n if self.status == "run" and self.n else None

    def summary(self) -> str:
        if self.status != "run":
            return f"token audit {self.status}: {self.why}"
        tail = f"; tolerance {self.tolerance:.3g} nats from {self.tolerance_source}"
        return (
            f"token audit: {len(self.violations)} violation(s) in {self.answers_violating} answer(s), "
            f"{self.near_ties} near-tie(s); {self.audited} of {self.n} answers differ and were scored "
            f"({self.positions} tokens), verifier {self.verifier or 'not recorded'}{tail}"
        )

    def reason(self, metric: str = "") -> str:
        """The failure reason (``metric``: as the leak test's ``reason`` takes it; the audit reads tokens, not scores)."""
        first = self.violations[0]
        return (
            f"token audit: {len(self.violations)} violation(s) of lossless verification in {self.answers_violating} "
            f"answer(s) (gap > {self.tolerance:.3g} nats, {self.tolerance_source}); first: prompt "
            f"{first['prompt_id']!r} token {first['position']}: target {first['target_text']!r}, emitted "
            f"{first['emitted_text']!r}, gap {first['gap']:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"audit_status": self.status, "audit_violations": len(self.violations) if self.status == "run" else None}
        body = dataclasses.asdict(self)
        body["violations"] = list(self.violations)
        body.update(gates=self.gates, violation_rate=self.violation_rate)
        return {**out, "audit": body}


def audit_pairs(
    pairs: Sequence[Any],
    k: int,
    tolerance: tuple[float, str] | None = None,
    unscored_why: str | None = None,
    cost: Mapping[str, Any] | None = None,
    verifier: str | None = None,
    dtype: str | None = None,
) -> Audit:
    """The audit of one task's pairs (``PairRecord``: texts, and ``meta["target_scores"]`` where scored).

    ``tolerance``: (nats, where it came from), else the default for the dtype the scores record.
    ``unscored_why``: why differing answers may lack scores (a replay, a backend that cannot score).
    ``verifier``, ``dtype``: the run's claim and dtype where no scored record says them (every pair identical).
    """
    if k > 1:
        return Audit("not applicable", "sampled screen (K > 1, temperature > 0): a sampled answer is no greedy output")
    differing = [p for p in pairs if p.target_texts != p.speculative_texts]
    scored = [(p, p.meta.get("target_scores")) for p in differing]
    missing = sum(1 for _, s in scored if s is None)
    if missing:
        why = f"{missing} of {len(differing)} differing answer(s) carry no target scores"
        return Audit("not run", f"{why}: {unscored_why}" if unscored_why else why, len(differing), n=len(pairs))
    first = scored[0][1] if scored else {}
    tol, source = tolerance if tolerance is not None else default_tolerance(first.get("dtype") or dtype)
    near, bad, violating = 0, [], 0
    for p, s in scored:
        split = classify_positions(s["mismatches"], tol)
        near += len(split["near_ties"])
        bad += [{"prompt_id": p.prompt_id, **m} for m in split["violations"]]
        violating += bool(split["violations"])
    return Audit(
        "run",
        differing=len(differing),
        audited=len(scored),
        positions=sum(int(s["positions"]) for _, s in scored),
        near_ties=near,
        violations=tuple(bad),
        answers_violating=violating,
        n=len(pairs),
        tolerance=tol,
        tolerance_source=source,
        verifier=first.get("verifier") or verifier,
        cost=cost,
    )
