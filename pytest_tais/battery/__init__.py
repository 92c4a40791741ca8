"""The battery stage: tasks and prompts from files.

``load_battery(spec)`` takes the ``--tais-battery`` value: comma-separated sources, each
``KIND:PATH?key=value&...`` (see ``spec.py`` and ``docs/batteries.md``):

- ``advbench:PATH``, ``harmbench:PATH``, ``xstest:PATH``, ``jbb:PATH``, ``strongreject:PATH``:
  the published benchmark files (or their folders);
- ``csv:PATH``, ``tsv:PATH``, ``jsonl:PATH``, ``yaml:PATH``: users' own rows with a column mapping;
- a plain ``PATH.jsonl`` (the battery JSONL format), or ``PATH.csv`` / ``.tsv`` / ``.yaml``;
- ``example``: the small battery that ships with the package;
- ``advbench``, ``xstest@REVISION``, ...: a published benchmark by name, from its hub dataset
  repository (``published.py``).

``select_tasks(tasks, patterns, limit)`` applies ``--tais-tasks`` and ``--tais-limit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import advbench, generic, harmbench, jbb, strongreject, xstest
from .base import BatteryError, Prompt, Task
from .jsonl import load_jsonl
from .selection import select_tasks
from ..setup.battery_spec import PUBLISHED_NAMES, Source, check_options, parse_source, split_spec

__all__ = ["BatteryError", "Prompt", "Task", "load_battery", "load_source", "select_tasks", "KINDS"]


def _example_path() -> Path:
    try:
        from .example import EXAMPLE_PATH
    except ImportError:  # the example module is optional in a stripped install
        return Path(__file__).parent / "data" / "example.jsonl"
    return Path(EXAMPLE_PATH)


def _load_example(source: Source) -> list[Task]:
    check_options(source, {})
    path = _example_path()
    if not path.is_file():
        raise BatteryError(f"example: the built-in battery {path} is missing; reinstall pytest-tais")
    return load_jsonl(path)


def _generic(fmt: str) -> Callable[[Source], list[Task]]:
    return lambda source: generic.load(source, fmt)


#: Source kinds and their loaders.
KINDS: dict[str, Callable[[Source], list[Task]]] = {
    "advbench": advbench.load,
    "harmbench": harmbench.load,
    "xstest": xstest.load,
    "jbb": jbb.load,
    "strongreject": strongreject.load,
    **{fmt: _generic(fmt) for fmt in generic.FORMATS},
    "example": _load_example,
}


def load_source(source: Source) -> list[Task]:
    if source.path is None and source.kind in PUBLISHED_NAMES:
        from .published import load_published

        return load_published(source, KINDS)
    if source.kind is not None:
        loader = KINDS.get(source.kind)
        if loader is None:
            raise BatteryError(
                f"--tais-battery source {source.text!r}: unknown kind {source.kind!r}; known kinds: "
                f"{', '.join(KINDS)} (a plain path must end in .jsonl, .csv, .tsv, .yaml or .yml)"
            )
        return loader(source)
    assert source.path is not None
    fmt = generic.EXTENSIONS.get(source.path.suffix.lower())
    if fmt is None:
        raise BatteryError(
            f"--tais-battery source {source.text!r}: cannot tell the format of {source.path.name}; "
            f"name a kind ({', '.join(KINDS)}), e.g. csv:{source.path.name}, or use a .jsonl/.csv/.tsv/.yaml file; "
            f"a published benchmark by name is one of {', '.join(PUBLISHED_NAMES)} (optionally NAME@REVISION)"
        )
    if fmt == "jsonl" and not source.options:
        return load_jsonl(source.path)
    return generic.load(source, fmt)


def load_battery(spec: str, base_dir: str | Path = ".") -> list[Task]:
    """Load every source named in ``spec``; task names must be unique across sources."""
    tasks: list[Task] = []
    for part in split_spec(spec):
        tasks.extend(load_source(parse_source(part, base_dir)))
    if not tasks:
        raise BatteryError(f"--tais-battery={spec!r} names no source; e.g. --tais-battery=example")
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BatteryError(
            f"--tais-battery: task names {dup} appear more than once; load each file once, or tell them apart "
            "with ?prefix=... on a source"
        )
    return tasks
