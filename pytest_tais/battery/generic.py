"""Users' own batteries: CSV, TSV, JSONL or YAML rows with a column mapping.

``csv:PATH?prompt=question&task=category`` maps the file's columns onto a prompt's fields:

- ``prompt=COL``: the prompt text (default column ``prompt``).
- ``task=COL``: the column that names each row's task (default ``task`` where present);
  ``name=NAME`` instead puts every row in one task (default: the file name's stem).
- ``id=COL``: the prompt id (default ``prompt_id`` where present, else the 0-based row number).
- ``context=COL``, ``expected=COL``: text sent before the prompt; a capability answer
  (defaults: the columns ``context`` and ``expected`` where present).
- ``metric=refusal|accuracy``: default ``accuracy`` when an expected column is used.
- ``prefix=STR``: prepended to every task name.

Columns the mapping does not use are kept in ``Prompt.meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import METRICS, BatteryError, Task
from ..setup.battery_spec import Source, check_options
from .table import Row, TaskBuilder, read_csv, read_jsonl_rows, read_yaml_rows, require_file, slug, text_value

FORMATS = ("csv", "tsv", "jsonl", "yaml")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".yaml": "yaml", ".yml": "yaml"}
OPTIONS: dict[str, tuple[str, ...] | None] = {
    "prompt": None,
    "task": None,
    "name": None,
    "id": None,
    "context": None,
    "expected": None,
    "metric": METRICS,
    "prefix": None,
}


def _read(fmt: str, path: Path) -> tuple[list[str], list[Row]]:
    if fmt in ("csv", "tsv"):
        return read_csv(path, fmt, "\t" if fmt == "tsv" else ",")
    rows = read_jsonl_rows(path, fmt) if fmt == "jsonl" else read_yaml_rows(path, fmt)
    columns = list(dict.fromkeys(key for _, record in rows for key in record))
    return columns, rows


def _mapped(source: Source, columns: list[str], field: str, default: str, path: Path) -> str | None:
    """The column for ``field``: the option's value (which must exist) or the default if present."""
    chosen = source.options.get(field)
    if chosen is not None:
        if chosen not in columns:
            raise BatteryError(
                f"{source.kind}: {path} has no column {chosen!r} (from {field}={chosen}); its columns are {columns}"
            )
        return chosen
    return default if default in columns else None


def load(source: Source, fmt: str) -> list[Task]:
    check_options(source, OPTIONS)
    assert source.path is not None
    hint = f"pass a {fmt.upper()} file with one prompt per row"
    path = require_file(source.path, fmt, hint)
    columns, rows = _read(fmt, path)
    if not rows:
        raise BatteryError(f"{fmt}: {path} holds no prompts; {hint}")
    if "task" in source.options and "name" in source.options:
        raise BatteryError(f"{fmt}: {source.text!r}: give task=COLUMN or name=NAME, not both")
    prompt_col = _mapped(source, columns, "prompt", "prompt", path)
    if prompt_col is None:
        raise BatteryError(
            f"{fmt}: {path} has no 'prompt' column (its columns are {columns}); name the prompt column with ?prompt=COLUMN"
        )
    task_col = None if "name" in source.options else _mapped(source, columns, "task", "task", path)
    id_col = _mapped(source, columns, "id", "prompt_id", path)
    context_col = _mapped(source, columns, "context", "context", path)
    expected_col = _mapped(source, columns, "expected", "expected", path)
    metric = source.options.get("metric") or ("accuracy" if expected_col else "refusal")
    if metric == "accuracy" and expected_col is None:
        raise BatteryError(f"{fmt}: {path}: metric=accuracy needs the answers; name their column with ?expected=COLUMN")
    fixed_name = source.options.get("name") or slug(path.stem) or "battery"
    used = {c for c in (prompt_col, task_col, id_col, context_col, expected_col) if c}
    tasks = TaskBuilder(fmt, source.text, source.options.get("prefix", ""))
    for index, row in enumerate(rows):
        where, record = row
        task = text_value(row, task_col, fmt) if task_col else fixed_name
        pid = text_value(row, id_col, fmt) if id_col else str(index)
        text = record.get(prompt_col)
        if not isinstance(text, str) or not text.strip():
            raise BatteryError(
                f"{fmt}: {where}: column {prompt_col!r} must hold the prompt text; it is empty or not text"
            )
        expected = text_value(row, expected_col, fmt, required=metric == "accuracy") if expected_col else None
        meta: dict[str, Any] = {}
        extra = record.get("meta") if fmt != "csv" and fmt != "tsv" else None
        if isinstance(extra, dict):
            meta.update(extra)
        meta.update({k: v for k, v in record.items() if k not in used and k != "meta" and v not in (None, "")})
        tasks.add(
            task,
            pid,
            text,
            where,
            context=text_value(row, context_col, fmt, required=False) if context_col else None,
            expected=expected,
            metric=metric,
            meta=meta,
        )
    return tasks.build(hint)
