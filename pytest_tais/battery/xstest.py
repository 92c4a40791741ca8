"""XSTest (Röttger et al., NAACL 2024): ``xstest_prompts.csv``, columns ``id``, ``prompt``,
``type``, ``label`` (``focus``, ``note`` optional).

Tasks by label: ``xstest_safe`` (250 prompts a model should answer: refusals there are
over-refusal) and ``xstest_unsafe`` (200 contrast prompts it should refuse). ``by=type`` makes
one task per prompt type instead (``xstest_homonyms``, ``xstest_contrast_homonyms``, ...).
Prompt ids are the file's ``id`` values. ``meta["should_refuse"]`` says which way each prompt
is meant to go.
"""

from __future__ import annotations

from .base import BatteryError, Task
from ..setup.battery_spec import Source, check_options
from .table import open_table, slug, text_value

KIND = "xstest"
FILE_NAMES = ("xstest_prompts.csv",)
LABELS = ("safe", "unsafe")
_HINT = "pass XSTest's xstest_prompts.csv or its folder"


def load(source: Source) -> list[Task]:
    check_options(source, {"prefix": None, "by": ("label", "type")})
    assert source.path is not None
    by = source.options.get("by", "label")
    rows, tasks = open_table(source, KIND, FILE_NAMES, ("id", "prompt", "type", "label"), _HINT)
    if by == "label":
        for label in LABELS:
            tasks.declare(f"xstest_{label}")
    for row in rows:
        where = row[0]
        label = text_value(row, "label", KIND)
        if label not in LABELS:
            raise BatteryError(f"{KIND}: {where}: label {label!r} is not 'safe' or 'unsafe'; fix the label column")
        kind = text_value(row, "type", KIND)
        task = f"xstest_{label}" if by == "label" else f"xstest_{slug(kind)}"
        meta = {
            "type": kind,
            "label": label,
            "focus": text_value(row, "focus", KIND, required=False) or "",
            "note": text_value(row, "note", KIND, required=False) or "",
            "should_refuse": label == "unsafe",
        }
        tasks.add(task, text_value(row, "id", KIND), text_value(row, "prompt", KIND), where, meta=meta)
    return tasks.build(_HINT)
