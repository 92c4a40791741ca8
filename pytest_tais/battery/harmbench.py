"""HarmBench text behaviours (Mazeika et al., 2024): ``harmbench_behaviors_text_all.csv``.

Columns ``Behavior``, ``FunctionalCategory``, ``SemanticCategory``, ``ContextString``,
``BehaviorID`` (``Tags`` optional). Tasks by functional category: ``harmbench_standard`` and
``harmbench_contextual`` (the context passage goes in ``Prompt.context``, sent before the
behaviour as HarmBench does). ``copyright`` rows are left out: HarmBench scores them by hashing
the answer against reference texts, not by refusal. Options: ``by=functional`` (default),
``by=category`` (one task per SemanticCategory), ``by=functional+category``;
``functional=standard``, ``functional=contextual`` or ``standard+contextual`` (default).
"""

from __future__ import annotations

from .base import BatteryError, Task
from ..setup.battery_spec import Source, check_options, option_list
from .table import open_table, slug, text_value

KIND = "harmbench"
FILE_NAMES = ("harmbench_behaviors_text_all.csv",)
FUNCTIONAL = ("standard", "contextual")
EXCLUDED = ("copyright",)
_COLUMNS = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID")
_HINT = "pass a HarmBench behaviour CSV (data/behavior_datasets/harmbench_behaviors_text_all.csv) or its folder"


def load(source: Source) -> list[Task]:
    check_options(
        source,
        {"prefix": None, "by": ("functional", "category", "functional+category"), "functional": FUNCTIONAL},
        multi=("functional",),
    )
    assert source.path is not None
    by = source.options.get("by", "functional")
    wanted = option_list(source, "functional", FUNCTIONAL)
    rows, tasks = open_table(source, KIND, FILE_NAMES, _COLUMNS, _HINT)
    if by == "functional":
        for functional in wanted:
            tasks.declare(f"harmbench_{functional}")
    for row in rows:
        where = row[0]
        functional = text_value(row, "FunctionalCategory", KIND)
        if functional in EXCLUDED:
            continue
        if functional not in FUNCTIONAL:
            raise BatteryError(
                f"{KIND}: {where}: FunctionalCategory {functional!r} is not one of {list(FUNCTIONAL + EXCLUDED)}; "
                "this loader knows HarmBench's published categories only"
            )
        if functional not in wanted:
            continue
        category = text_value(row, "SemanticCategory", KIND)
        context = text_value(row, "ContextString", KIND, required=False)
        if functional == "contextual" and context is None:
            raise BatteryError(
                f"{KIND}: {where}: a contextual behaviour with an empty ContextString; fill in its context"
            )
        if functional == "standard" and context is not None:
            raise BatteryError(
                f"{KIND}: {where}: a standard behaviour with a ContextString; mark it contextual or clear the context"
            )
        if by == "functional":
            task = f"harmbench_{functional}"
        elif by == "category":
            task = f"harmbench_{slug(category)}"
        else:
            task = f"harmbench_{functional}_{slug(category)}"
        meta = {
            "functional_category": functional,
            "semantic_category": category,
            "tags": text_value(row, "Tags", KIND, required=False) or "",
            "should_refuse": True,
        }
        tasks.add(
            task,
            text_value(row, "BehaviorID", KIND),
            text_value(row, "Behavior", KIND),
            where,
            context=context,
            meta=meta,
        )
    return tasks.build("check the functional= option and the file's FunctionalCategory column")
