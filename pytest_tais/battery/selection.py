"""``--tais-tasks`` and ``--tais-limit``: which tasks of a battery run, and how many prompts each."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Iterable, Sequence

from .base import BatteryError, Task


def select_tasks(tasks: Sequence[Task], patterns: Iterable[str] | None = None, limit: int | None = None) -> list[Task]:
    """The tasks whose names match any pattern (names or fnmatch globs; each item may hold several
    separated by commas), in battery order, each cut to its first ``limit`` prompts.

    A pattern that matches no task is an error: a typo must not silently drop a task.
    """
    selected = list(tasks)
    if patterns is not None:
        wanted = [p.strip() for item in patterns for p in item.split(",") if p.strip()]
        if wanted:
            names = [t.name for t in tasks]
            unmatched = [p for p in wanted if not any(fnmatch.fnmatchcase(n, p) for n in names)]
            if unmatched:
                shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
                raise BatteryError(f"--tais-tasks: {unmatched} match no task of the battery; its tasks are: {shown}")
            selected = [t for t in tasks if any(fnmatch.fnmatchcase(t.name, p) for p in wanted)]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BatteryError(f"--tais-limit={limit!r}: must be a whole number of prompts per task, 1 or more")
        selected = [dataclasses.replace(t, prompts=t.prompts[:limit]) for t in selected]
    return selected
