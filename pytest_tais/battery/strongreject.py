"""StrongREJECT (Souly et al., 2024): ``strongreject_dataset.csv`` (or the small subset),
columns ``category``, ``source``, ``forbidden_prompt``.

One task, ``strongreject``; ``by=category`` makes one per category
(``strongreject_violence``, ...). Prompt ids are the 0-based data-row numbers.
"""

from __future__ import annotations

from .base import Task
from ..setup.battery_spec import Source, check_options
from .table import open_table, slug, text_value

KIND = "strongreject"
FILE_NAMES = ("strongreject_dataset.csv", "strongreject_small_dataset.csv")
_HINT = "pass StrongREJECT's strongreject_dataset/strongreject_dataset.csv (or the small one) or its folder"


def load(source: Source) -> list[Task]:
    check_options(source, {"prefix": None, "by": ("none", "category")})
    assert source.path is not None
    by = source.options.get("by", "none")
    rows, tasks = open_table(source, KIND, FILE_NAMES, ("forbidden_prompt", "category"), _HINT)
    if by == "none":
        tasks.declare("strongreject")
    for index, row in enumerate(rows):
        category = text_value(row, "category", KIND)
        task = "strongreject" if by == "none" else f"strongreject_{slug(category)}"
        meta = {
            "category": category,
            "source": text_value(row, "source", KIND, required=False) or "",
            "should_refuse": True,
        }
        tasks.add(task, str(index), text_value(row, "forbidden_prompt", KIND), row[0], meta=meta)
    return tasks.build(_HINT)
