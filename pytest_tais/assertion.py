"""The ``tais_equivalent`` assertion: a failing verdict becomes a readable AssertionError."""

from __future__ import annotations

from typing import Any

from .verdict import Verdict, explain


class TaisNotEquivalent(AssertionError):
    """The speculative arm's behaviour moved: the TOST or the |h| bound was breached."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(explain(verdict))


class TaisControlNotCaught(AssertionError):
    """A negative control (``expect="fail"``) passed: the gate did not catch a leak it must catch."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(
            "NEGATIVE CONTROL NOT CAUGHT: this contrast is meant to fail the gate, and it passed\n" + explain(verdict)
        )


def tais_equivalent(task: Any, expect: str = "pass", **overrides: Any) -> Verdict:
    """Assert that a task's arms are equivalent; return the verdict.

    ``task`` is a :class:`~pytest_tais.verdict.Verdict`, or anything with a ``verdict(**overrides)``
    method (the ``tais_task`` fixture's handle); ``overrides`` may set margin, alpha, h_cutoff,
    tost_method for this one assertion. ``expect="fail"`` declares a negative control: the test
    passes when the gate fails the contrast (reported as "control: caught") and fails when it passes.
    """
    __tracebackhide__ = True
    if expect not in ("pass", "fail"):
        raise ValueError(f"expect={expect!r}: use 'pass' or 'fail' (a negative control)")
    if isinstance(task, Verdict):
        if overrides or expect != "pass":
            raise TypeError("overrides and expect need a task handle, not a finished Verdict")
        verdict = task
    elif hasattr(task, "verdict"):
        verdict = task.verdict(**({"expect": expect} if expect != "pass" else {}), **overrides)
        if getattr(task, "is_control", False):  # a canary's contrast must fail, whatever the test expected
            expect = "fail"
    else:
        raise TypeError(f"tais_equivalent expects a tais_task handle or a Verdict, got {type(task).__name__}")
    if expect == "fail":
        if verdict.passed:
            raise TaisControlNotCaught(verdict)
        return verdict
    if not verdict.passed:
        raise TaisNotEquivalent(verdict)
    return verdict
