"""The ``tais_equivalent`` assertion: a failing verdict becomes a readable AssertionError."""

from __future__ import annotations

from typing import Any

from .verdict import Verdict, explain


class TaisNotEquivalent(AssertionError):
    """The speculative arm's behaviour moved: the TOST or the |h| bound was breached."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(explain(verdict))


def tais_equivalent(task: Any, **overrides: Any) -> Verdict:
    """Assert that a task's arms are equivalent; return the verdict.

    ``task`` is a :class:`~pytest_tais.verdict.Verdict`, or anything with a ``verdict(**overrides)``
    method (the ``tais_task`` fixture's handle); ``overrides`` may set margin, alpha, h_cutoff,
    tost_method for this one assertion.
    """
    __tracebackhide__ = True
    if isinstance(task, Verdict):
        if overrides:
            raise TypeError("overrides need a task handle, not a finished Verdict")
        verdict = task
    elif hasattr(task, "verdict"):
        verdict = task.verdict(**overrides)
    else:
        raise TypeError(f"tais_equivalent expects a tais_task handle or a Verdict, got {type(task).__name__}")
    if not verdict.passed:
        raise TaisNotEquivalent(verdict)
    return verdict
