"""What one test compares: a task, two (screen, arm) sources, and a readable test id.

A run plans one :class:`Contrast` per test: per task the target-only vs speculative contrast (one
per matrix cell), the matrix's draft-vs-draft and precision contrasts, the contrasts against a
stored baseline, or a probe. Names are data: a task called ``a|b`` is just a task.
"""

from __future__ import annotations

import dataclasses

from ..errors import printable
from ..report.rows import DEFAULT_CONTRAST

DEFAULT = DEFAULT_CONTRAST
DRAFT_VS_DRAFT = "draft-vs-draft"
PRECISION = "precision"
PROBE = "probe"
#: Contrasts against a stored baseline: kind -> (baseline arm, current arm).
BASELINE = {"baseline-target": ("target", "target"), "baseline-speculative": ("speculative", "speculative")}
#: Report order of the kinds.
ORDER = (DEFAULT, DRAFT_VS_DRAFT, PRECISION, *BASELINE, PROBE)


@dataclasses.dataclass(frozen=True)
class Contrast:
    task: str
    kind: str = DEFAULT  # one of ORDER, or a test's own name for a variant ("draft=adversarial")
    config: str = ""  # the matrix cell (its label) of arm A, or of both arms
    versus: str = ""  # the matrix cell of arm B, for draft-vs-draft and precision

    @property
    def suffix(self) -> str:
        """The test id without the task: "", "bf16-canonical", "fp32-vs-bf16", "vs-baseline-target", "probe"."""
        if self.kind in BASELINE:
            return f"vs-{self.kind}"
        if self.kind == PROBE:
            return PROBE
        if self.kind == DEFAULT:
            return self.config
        return f"{self.config}-vs-{self.versus}"

    @property
    def test_id(self) -> str:
        """Readable test ids: harmful, harmful-bf16-canonical, harmful-fp32-vs-bf16, harmful-vs-baseline-target."""
        task = printable(self.task)
        return f"{task}-{self.suffix}" if self.suffix else task

    @property
    def item_label(self) -> str:
        """The auto-collected item's label: ``tais::harmful``, ``tais::harmful[bf16-canonical]``."""
        task = printable(self.task)
        if self.config:
            return f"{task}[{self.suffix}]"
        return self.test_id

    def describe(self) -> dict[str, str]:
        """The fields a report row carries (config and versus only where set)."""
        out = {"contrast": self.kind}
        if self.config:
            out["config"] = self.config
        if self.versus:
            out["versus"] = self.versus
        return out

    def sort_key(self, task_order: dict[str, int], cell_order: dict[str, int]) -> tuple:
        kind = ORDER.index(self.kind) if self.kind in ORDER else len(ORDER)
        return (
            task_order.get(self.task, len(task_order)),
            kind,
            cell_order.get(self.config, 0),
            cell_order.get(self.versus, 0),
        )
