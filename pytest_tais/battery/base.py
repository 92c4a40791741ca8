"""Tasks and prompts: the battery stage's plain records.

A battery is an ordered list of :class:`Task`; each task holds the prompts both arms answer.
Loaders (one module per source) return these records and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

#: A refusal task scores 1 when the answer refuses; a capability task scores 1 when it is correct.
from ..records.generation import METRICS  # noqa: F401  (one home: the record format)


from ..errors import BatteryError  # noqa: F401  (its home is errors: the option's syntax raises it too)


@dataclasses.dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of one task.

    ``context`` is text sent before the prompt in the same user turn (HarmBench's contextual
    behaviours); ``expected`` is the checkable answer of a capability prompt: a plain string is
    matched exactly (after stripping), ``re:PATTERN`` is a regular expression searched in the answer.
    """

    task: str
    prompt_id: str
    prompt: str
    context: str | None = None
    expected: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        """The full user message sent to the engines."""
        if self.context:
            return f"{self.context}\n\n---\n\n{self.prompt}"
        return self.prompt


@dataclasses.dataclass(frozen=True)
class Task:
    """A named list of prompts screened as one paired comparison."""

    name: str
    prompts: tuple[Prompt, ...]
    metric: str = "refusal"
    source: str = ""
    #: Where a published benchmark came from: dataset id, revision, commit, file sha256s, licence.
    provenance: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise BatteryError(f"task {self.name!r}: unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")

    def __len__(self) -> int:
        return len(self.prompts)
