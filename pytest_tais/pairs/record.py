"""The pair: one prompt answered by both arms, K answers each, every answer scored.

K = 1 is the greedy screen; K >= 2 the sampled screen, where sample i of both arms was drawn with
the same seed. Pairing makes these and the verdict reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["PairRecord"]


@dataclasses.dataclass(frozen=True, slots=True)
class PairRecord:
    """One prompt's K answers in both arms, with each answer's binary score.

    For refusal tasks the score is "refused"; for capability tasks it is "correct". A greedy pair
    may be given with single values (``PairRecord("p1", "text A", "text B", True, False)``); they
    are stored as one-answer tuples. ``target_token_ids``/``speculative_token_ids``: per answer, the
    recorded token ids where the engine or replay file gave them (None where none were given).
    """

    prompt_id: str
    target_texts: tuple[str, ...]
    speculative_texts: tuple[str, ...]
    target_flags: tuple[bool, ...]
    speculative_flags: tuple[bool, ...]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    target_token_ids: tuple[Any, ...] | None = None
    speculative_token_ids: tuple[Any, ...] | None = None
    seeds: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.target_texts, str):  # one answer per arm, given as single values
            for name in ("target", "speculative"):
                object.__setattr__(self, f"{name}_texts", (getattr(self, f"{name}_texts"),))
                ids = getattr(self, f"{name}_token_ids")
                if ids is not None:
                    object.__setattr__(self, f"{name}_token_ids", (ids,))
        for name in ("target_flags", "speculative_flags"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, (getattr(self, name),))

    @property
    def k(self) -> int:
        return len(self.target_flags)

    @property
    def counts(self) -> tuple[int, int]:
        """Refused (or correct) answers per arm."""
        return sum(self.target_flags), sum(self.speculative_flags)

    # The first answer of each arm: the only one at K = 1.
    @property
    def target_text(self) -> str:
        return self.target_texts[0]

    @property
    def speculative_text(self) -> str:
        return self.speculative_texts[0]

    @property
    def target_flag(self) -> bool:
        return self.target_flags[0]

    @property
    def speculative_flag(self) -> bool:
        return self.speculative_flags[0]
