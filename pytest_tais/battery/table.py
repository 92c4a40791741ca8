"""Reading battery files as rows, and the checks every loader shares.

A row is ``(where, record)``: ``where`` names the file and line ("data.csv:12") for error
messages, ``record`` maps column names to values. Loaders turn rows into :class:`Task` records
and report every problem as a :class:`BatteryError` that names the file, the line or column,
and the fix.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..records.files import check_text, iter_json_lines, read_text
from .base import BatteryError, Prompt, Task

Row = tuple[str, Mapping[str, Any]]


def require_file(path: Path, kind: str, hint: str) -> Path:
    if path.is_dir():
        raise BatteryError(f"{kind}: {path} is a folder; {hint}")
    if not path.is_file():
        raise BatteryError(f"{kind}: no such file {path}; {hint}")
    return path


def _read_text(path: Path, kind: str) -> str:
    try:
        return read_text(path, BatteryError, prefix=f"{kind}: ")
    except OSError as exc:
        raise BatteryError(f"{kind}: cannot read {path} ({exc.strerror})") from None


def read_csv(path: Path, kind: str, delimiter: str = ",") -> tuple[list[str], list[Row]]:
    """The header and the data rows of a CSV file; ``where`` is the line a row starts on."""
    text = _read_text(path, kind)
    rows: list[Row] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise BatteryError(f"{kind}: {path} is empty; it needs a header line and one row per prompt")
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise BatteryError(f"{kind}: {path}: the header repeats column(s) {dup}; give each column a distinct name")
        line = reader.line_num + 1
        for values in reader:
            where = f"{path}:{line}"
            line = reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise BatteryError(
                    f"{kind}: {where}: {len(values)} fields where the header has {len(header)}; "
                    "quote fields that contain the delimiter"
                )
            rows.append((where, dict(zip(header, values))))
    except csv.Error as exc:
        raise BatteryError(f"{kind}: {path}:{reader.line_num}: malformed CSV ({exc})") from None
    return header, rows


def read_jsonl_rows(path: Path, kind: str) -> list[Row]:
    rows: list[Row] = []
    for where, obj in iter_json_lines(path, BatteryError, prefix=f"{kind}: "):
        if not isinstance(obj, dict):
            raise BatteryError(f"{kind}: {where}: expected a JSON object, got {type(obj).__name__}")
        rows.append((where, obj))
    return rows


def read_yaml_rows(path: Path, kind: str) -> list[Row]:
    """A YAML list of mappings, or a mapping whose ``prompts`` key holds that list."""
    try:
        import yaml  # optional dependency: only YAML batteries need it
    except ImportError:
        raise BatteryError(
            f"{kind}: {path} is YAML, which needs PyYAML; `pip install pyyaml` or convert it to JSONL/CSV"
        ) from None
    text = _read_text(path, kind)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BatteryError(f"{kind}: {path}: not valid YAML ({exc})") from None
    check_text(data, str(path), BatteryError, prefix=f"{kind}: ")
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list):
        raise BatteryError(f"{kind}: {path}: expected a list of prompt mappings (or a mapping with a 'prompts' list)")
    rows: list[Row] = []
    for i, item in enumerate(data, 1):
        where = f"{path}: item {i}"
        if not isinstance(item, dict):
            raise BatteryError(
                f"{kind}: {where}: expected a mapping of column names to values, got {type(item).__name__}"
            )
        rows.append((where, item))
    return rows


def require_columns(path: Path, kind: str, present: Iterable[str], needed: Sequence[str], hint: str = "") -> None:
    present = list(present)
    missing = [c for c in needed if c not in present]
    if missing:
        raise BatteryError(
            f"{kind}: {path} lacks column(s) {missing} (it has {present}); "
            + (hint or f"pass a file with the columns {list(needed)}")
        )


def text_value(row: Row, column: str, kind: str, *, required: bool = True) -> str | None:
    """The row's value in ``column`` as text; an empty required value is an error."""
    where, record = row
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BatteryError(f"{kind}: {where}: column {column!r} is empty; every row needs a value there")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BatteryError(f"{kind}: {where}: column {column!r} holds {type(value).__name__}; it must be text")
    return value if isinstance(value, str) else str(value)


def check_task_name(name: str, where: str, kind: str) -> str:
    if not name.strip():
        raise BatteryError(f"{kind}: {where}: empty task name; give every row a task")
    if "," in name or "\n" in name:
        raise BatteryError(
            f"{kind}: {where}: task name {name!r} contains a comma or line break; --tais-tasks splits on commas, rename it"
        )
    return name


def slug(text: str) -> str:
    """A task-name part: lower case, runs of other characters as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class TaskBuilder:
    """Collects prompts per task in file order; refuses duplicate ids and empty tasks."""

    def __init__(self, kind: str, source: str, prefix: str = "") -> None:
        self.kind = kind
        self.source = source
        self.prefix = prefix
        self._prompts: dict[str, list[Prompt]] = {}
        self._metrics: dict[str, str] = {}
        self._ids: dict[tuple[str, str], str] = {}

    def declare(self, task: str, metric: str = "refusal") -> None:
        """A task that must exist even if no row fills it (an empty one is an error at build())."""
        name = self.prefix + task
        self._prompts.setdefault(name, [])
        self._metrics.setdefault(name, metric)

    def add(
        self,
        task: str,
        prompt_id: str,
        text: str,
        where: str,
        *,
        context: str | None = None,
        expected: str | None = None,
        metric: str = "refusal",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        name = check_task_name(self.prefix + task, where, self.kind)
        first = self._ids.get((name, prompt_id))
        if first is not None:
            raise BatteryError(
                f"{self.kind}: {where}: prompt id {prompt_id!r} already used in task {name!r} at {first}; "
                "prompt ids must be unique within a task"
            )
        self._ids[(name, prompt_id)] = where
        if self._metrics.setdefault(name, metric) != metric:
            raise BatteryError(
                f"{self.kind}: {where}: task {name!r} mixes metrics {self._metrics[name]!r} and {metric!r}"
            )
        self._prompts.setdefault(name, []).append(
            Prompt(
                task=name, prompt_id=prompt_id, prompt=text, context=context, expected=expected, meta=dict(meta or {})
            )
        )

    def build(self, empty_hint: str = "") -> list[Task]:
        if not self._prompts:
            raise BatteryError(
                f"{self.kind}: {self.source} holds no prompts" + (f"; {empty_hint}" if empty_hint else "")
            )
        empty = [n for n, ps in self._prompts.items() if not ps]
        if empty:
            raise BatteryError(
                f"{self.kind}: {self.source}: task(s) {empty} would be empty"
                + (f"; {empty_hint}" if empty_hint else "")
            )
        return [
            Task(name=n, prompts=tuple(ps), metric=self._metrics[n], source=self.source)
            for n, ps in self._prompts.items()
        ]


def resolve_file(path: Path, kind: str, file_names: Sequence[str], hint: str) -> Path:
    """``path`` itself, or in a folder the first of the benchmark's published file names."""
    if path.is_dir():
        for name in file_names:
            if (path / name).is_file():
                return path / name
        raise BatteryError(f"{kind}: folder {path} holds none of {list(file_names)}; {hint}")
    return require_file(path, kind, hint)


def open_table(
    source: Any, kind: str, file_names: Sequence[str], columns: Sequence[str], hint: str
) -> tuple[list[Row], "TaskBuilder"]:
    """A benchmark CSV's opening steps: find the file, read it, check its columns, start the tasks."""
    assert source.path is not None
    if source.table is not None:  # read from the hub already (a parquet file)
        path = source.path
        header, rows = source.table
    else:
        path = resolve_file(source.path, kind, file_names, hint)
        header, rows = read_csv(path, kind)
    require_columns(path, kind, header, columns, hint)
    return rows, TaskBuilder(kind, source.text, source.options.get("prefix", ""))
