"""Teacher-forced scoring for the token audit: what one answer's tokens look like to the target.

A backend's ``score(items)`` feeds each (prompt, answer token ids) through the target model in one
pass and returns, per answer, the positions where the answer's token is not the target's top
token, with the gap between their logprobs (the ``target_scores`` record field without the run's
verifier claim; :mod:`pytest_tais.records.generation`). The classification is the statistics'
(:mod:`pytest_tais.stats.audit`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def answer_scores(
    answer: Sequence[int],
    rows: Sequence[tuple[int, float, float]],
    decode: Callable[[int], str],
    dtype: str,
    scorer: str,
) -> dict[str, Any]:
    """``rows[j]`` = (the target's top token, its logprob, the logprob of ``answer[j]``) at answer position j."""
    if len(rows) != len(answer):
        raise ValueError(f"scored {len(rows)} positions for an answer of {len(answer)} tokens")
    mismatches = []
    for j, (tok, (top, top_lp, lp)) in enumerate(zip(answer, rows)):
        if top != tok and top_lp > lp:  # a tie is no mismatch: the target's argmax may be either
            mismatches.append(
                {
                    "position": j,
                    "target_token": int(top),
                    "emitted_token": int(tok),
                    "gap": float(top_lp - lp),
                    "target_text": decode(int(top)),
                    "emitted_text": decode(int(tok)),
                }
            )
    return {"positions": len(answer), "dtype": dtype, "scorer": scorer, "mismatches": mismatches}


def dtype_name(dtype: Any) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).rsplit(".", 1)[-1]
