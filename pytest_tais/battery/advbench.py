"""AdvBench harmful behaviours (Zou et al., 2023): ``harmful_behaviors.csv``, column ``goal``.

One task, ``advbench``; prompt ids are the 0-based data-row numbers (the file has no id column).
"""

from __future__ import annotations

from .base import Task
from ..setup.battery_spec import Source, check_options
from .table import open_table, text_value

KIND = "advbench"
FILE_NAMES = ("harmful_behaviors.csv",)
_HINT = "pass AdvBench's data/advbench/harmful_behaviors.csv or its folder"


def load(source: Source) -> list[Task]:
    check_options(source, {"prefix": None})
    assert source.path is not None
    rows, tasks = open_table(source, KIND, FILE_NAMES, ("goal",), _HINT)
    tasks.declare("advbench")
    for index, row in enumerate(rows):
        # The `target` column is left out: three of its rows are rotated upstream.
        tasks.add("advbench", str(index), text_value(row, "goal", KIND), row[0], meta={"should_refuse": True})
    return tasks.build(_HINT)
