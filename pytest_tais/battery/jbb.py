"""JailbreakBench JBB-Behaviors (Chao et al., 2024): ``harmful-behaviors.csv`` and
``benign-behaviors.csv``, columns ``Index``, ``Goal``, ``Target``, ``Behavior``, ``Category``,
``Source``.

The prompt is ``Goal``; the id is ``Index`` (the data-row number where the column is absent).
A folder loads both files (also from its ``data/`` subfolder, the dataset's own layout); a file
is harmful or benign by its name, or by ``split=harmful`` / ``split=benign``. Tasks:
``jbb_harmful`` and ``jbb_benign``; ``by=category`` makes ``jbb_harmful_<category>`` etc.
"""

from __future__ import annotations

from pathlib import Path

from .base import BatteryError, Task
from ..setup.battery_spec import Source, check_options, option_list
from .table import TaskBuilder, read_csv, require_columns, require_file, slug, text_value

KIND = "jbb"
SPLITS = ("harmful", "benign")
FILE_NAMES = {"harmful": "harmful-behaviors.csv", "benign": "benign-behaviors.csv"}
_HINT = "pass JBB-Behaviors' data/harmful-behaviors.csv, data/benign-behaviors.csv or their folder"


def _files(source: Source) -> list[tuple[str, Path]]:
    assert source.path is not None
    splits = option_list(source, "split", ())
    if source.path.is_dir():
        found = []
        for split in splits or SPLITS:
            for folder in (source.path, source.path / "data"):
                if (folder / FILE_NAMES[split]).is_file():
                    found.append((split, folder / FILE_NAMES[split]))
                    break
            else:
                raise BatteryError(
                    f"{KIND}: folder {source.path} has no {FILE_NAMES[split]} (nor data/{FILE_NAMES[split]}); {_HINT}"
                )
        return found
    path = require_file(source.path, KIND, _HINT)
    if len(splits) > 1:
        raise BatteryError(f"{KIND}: {source.text!r}: one file holds one split; pass the folder to load both")
    if splits:
        return [(splits[0], path)]
    named = [s for s in SPLITS if s in path.name.lower()]
    if len(named) != 1:
        raise BatteryError(
            f"{KIND}: cannot tell whether {path.name} is the harmful or the benign file; add ?split=harmful or ?split=benign"
        )
    return [(named[0], path)]


def load(source: Source) -> list[Task]:
    check_options(source, {"prefix": None, "by": ("split", "category"), "split": SPLITS}, multi=("split",))
    by = source.options.get("by", "split")
    tasks = TaskBuilder(KIND, source.text, source.options.get("prefix", ""))
    for split, path in _files(source):
        header, rows = read_csv(path, KIND)
        require_columns(path, KIND, header, ("Goal", "Behavior", "Category"), _HINT)
        if by == "split":
            tasks.declare(f"jbb_{split}")
        for index, row in enumerate(rows):
            category = text_value(row, "Category", KIND)
            task = f"jbb_{split}" if by == "split" else f"jbb_{split}_{slug(category)}"
            pid = text_value(row, "Index", KIND) if "Index" in header else str(index)
            meta = {
                "behavior": text_value(row, "Behavior", KIND),
                "category": category,
                "source": text_value(row, "Source", KIND, required=False) or "",
                "should_refuse": split == "harmful",
            }
            tasks.add(task, pid, text_value(row, "Goal", KIND), row[0], meta=meta)
    return tasks.build(_HINT)
