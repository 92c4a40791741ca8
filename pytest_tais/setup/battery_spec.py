"""The ``--tais-battery`` syntax: comma-separated sources, each ``KIND:PATH?key=value&key=value``.

``KIND`` names a loader (``harmbench``, ``xstest``, ``csv``, ...); a plain path without a kind is
loaded by its extension; ``example`` is the built-in battery; a published benchmark's bare name
(``advbench``, ``xstest@REVISION``, ...) is resolved from the hub (``published.py``). Options after ``?`` tune the loader
(``by=category``, ``prompt=question``, ``prefix=val_``); list values are joined with ``+``
(``functional=standard+contextual``). Paths may not contain commas or ``?``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import BatteryError

_KIND_RE = re.compile(r"([a-z][a-z0-9_-]+):(.*)", re.DOTALL)
#: Benchmarks resolved by name from their hub dataset repositories (``published.py`` holds where).
PUBLISHED_NAMES = ("advbench", "harmbench", "xstest", "jbb", "strongreject")
_PUBLISHED_RE = re.compile(rf"({'|'.join(PUBLISHED_NAMES)})(?:@(\S*))?")


@dataclasses.dataclass(frozen=True)
class Source:
    """One parsed source of a battery spec."""

    text: str  # as written, for messages and Task.source
    kind: str | None  # None: a plain path, loaded by its extension
    path: Path | None
    options: Mapping[str, str]
    revision: str | None = None  # a published benchmark's hub revision (None: main)
    #: (header, rows) already read (a hub parquet file); the loader uses them instead of reading ``path``.
    table: tuple[list[str], list[tuple[str, Mapping[str, Any]]]] | None = None


def split_spec(spec: str) -> list[str]:
    return [part.strip() for part in spec.split(",") if part.strip()]


def parse_source(text: str, base_dir: str | Path = ".") -> Source:
    head, sep, query = text.partition("?")
    options: dict[str, str] = {}
    if sep:
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key:
                raise BatteryError(
                    f"--tais-battery source {text!r}: option {item!r} is not key=value; write e.g. '?by=category&prefix=val_'"
                )
            if key in options:
                raise BatteryError(f"--tais-battery source {text!r}: option {key!r} given twice")
            options[key] = value
    head = head.strip()
    if head == "example":
        return Source(text=text, kind="example", path=None, options=options)
    published = _PUBLISHED_RE.fullmatch(head)
    if published:
        if published.group(2) == "":
            raise BatteryError(
                f"--tais-battery source {text!r}: no revision after '@'; write {published.group(1)}@REVISION "
                "(a branch, tag or commit of its dataset repository)"
            )
        return Source(text=text, kind=published.group(1), path=None, options=options, revision=published.group(2))
    m = _KIND_RE.fullmatch(head)
    # A one-letter prefix is a Windows drive ("C:\\battery.jsonl"), not a kind.
    kind, raw_path = (m.group(1), m.group(2).strip()) if m else (None, head)
    if not raw_path:
        raise BatteryError(f"--tais-battery source {text!r}: no path; write {kind or 'KIND'}:PATH")
    path = Path(raw_path).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    return Source(text=text, kind=kind, path=path, options=options)


def absolute_spec(spec: str, base_dir: str | Path) -> str:
    """``spec`` with each source's relative path made absolute under ``base_dir`` (where it was given)."""
    out = []
    for part in split_spec(spec):
        head, sep, query = part.partition("?")
        head = head.strip()
        m = _KIND_RE.fullmatch(head)
        kind, raw_path = (m.group(1), m.group(2).strip()) if m else (None, head)
        if head == "example" or _PUBLISHED_RE.fullmatch(head) or not raw_path:
            out.append(part)  # a name, not a path; parse_source names what is wrong with an empty path
            continue
        path = Path(raw_path).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        out.append(f"{kind + ':' if kind else ''}{path}{sep}{query}")
    return ",".join(out)


def check_options(source: Source, allowed: Mapping[str, tuple[str, ...] | None], multi: tuple[str, ...] = ()) -> None:
    """Unknown option names are errors. ``allowed[name]`` lists a choice option's values (None:
    free text); an option named in ``multi`` takes several values joined with ``+``."""
    for key, value in source.options.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise BatteryError(
                f"--tais-battery source {source.text!r}: unknown option {key!r}; options for this kind: {names}"
            )
        if not value:
            raise BatteryError(f"--tais-battery source {source.text!r}: option {key!r} needs a value")
        if "," in value:
            raise BatteryError(f"--tais-battery source {source.text!r}: option {key!r} may not contain a comma")
        choices = allowed[key]
        if choices is None:
            continue
        for part in value.split("+") if key in multi else [value]:
            if part not in choices:
                raise BatteryError(
                    f"--tais-battery source {source.text!r}: {key}={value!r} is not valid; use "
                    + (
                        f"one or more of {', '.join(choices)} joined with '+'"
                        if key in multi
                        else f"one of {', '.join(choices)}"
                    )
                )


def option_list(source: Source, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = source.options.get(key)
    return default if value is None else tuple(dict.fromkeys(value.split("+")))
