"""The expansion matrix: several drafts, dtypes, seeds and speculative token counts in one run.

``--tais-draft=canonical=PATH,adversarial=PATH --tais-dtype=float32,bfloat16 --tais-seed=0,1
--tais-num-speculative-tokens=2,4`` expands into one configuration ("cell") per combination, each
with its own engines (started once) and its own test per task, e.g. ``harmful[bf16-seed0-canonical]``.
Only axes with more than one value appear in a cell's label.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Mapping

from .engine import DTYPES

#: matrix axis -> (ini/option dest, EngineSettings field)
AXES = {
    "dtype": ("tais_dtype", "dtype"),
    "seed": ("tais_seed", "seed"),
    "draft": ("tais_draft", "draft"),
    "k": ("tais_num_speculative_tokens", "num_speculative_tokens"),
}


class MatrixError(ValueError):
    """A matrix option is malformed; the message names the option and the fix."""


@dataclasses.dataclass(frozen=True)
class Cell:
    label: str
    changes: dict[str, Any]  # EngineSettings field -> value
    values: dict[str, str]  # axis -> value label

    def differs_only_in(self, other: "Cell", axis: str) -> bool:
        return self.values[axis] != other.values[axis] and all(
            self.values[a] == other.values[a] for a in self.values if a != axis
        )


def _raw(options: Mapping[str, Any], dest: str) -> str | None:
    value = options.get(dest)
    return None if value is None else str(value)


def _split(raw: str) -> list[str]:
    return [p.strip() for p in raw.split(",") if p.strip()]


def read_axes(options: Mapping[str, Any], rootdir: Path) -> dict[str, list[tuple[str, Any]]]:
    """Each axis's (label, value) list, from the raw option values (``pytest_tais.setup.options.read``)."""
    axes: dict[str, list[tuple[str, Any]]] = {}
    raw = _raw(options, "tais_draft")
    # A single plain value is no axis: the engine options read it as given.
    if raw and ("," in raw or "=" in raw):
        drafts = []
        for part in _split(raw):
            name, sep, path = part.partition("=")
            if not sep:
                if len(_split(raw)) > 1:
                    raise MatrixError(
                        f"--tais-draft={raw!r}: name each draft when giving several (canonical=PATH,adversarial=PATH)"
                    )
                name, path = "draft", part
            name, path = name.strip(), path.strip()
            if not name or not all(c.isalnum() or c in "._-" for c in name):
                raise MatrixError(f"--tais-draft: draft name {name!r} must use letters, digits, '.', '_' or '-'")
            p = Path(path).expanduser()
            drafts.append((name, p if p.is_absolute() else rootdir / p))
        names = [n for n, _ in drafts]
        if len(set(names)) != len(names):
            raise MatrixError(f"--tais-draft={raw!r}: draft names must be unique")
        axes["draft"] = drafts
    raw = _raw(options, "tais_dtype")
    if raw and "," in raw:
        axes["dtype"] = [(DTYPES.get(v, v), v) for v in _split(raw)]
    for axis, dest, prefix in (("seed", "tais_seed", "seed"), ("k", "tais_num_speculative_tokens", "k")):
        raw = _raw(options, dest)
        if raw and "," in raw:
            values = []
            for v in _split(raw):
                try:
                    values.append((f"{prefix}{int(v)}", int(v)))
                except ValueError:
                    raise MatrixError(f"--{dest.replace('_', '-')}={raw!r}: {v!r} is not a whole number") from None
            axes[axis] = values
    for axis, values in axes.items():
        labels = [label for label, _ in values]
        if len(set(labels)) != len(labels):
            raise MatrixError(f"--{AXES[axis][0].replace('_', '-')}: a value is given twice")
    return axes


def cells(axes: dict[str, list[tuple[str, Any]]]) -> list[Cell]:
    """Every combination, in axis order dtype, seed, draft, k; labels name the expanded axes only."""
    order = [a for a in ("dtype", "seed", "draft", "k") if a in axes]
    out = []
    for combo in itertools.product(*(axes[a] for a in order)):
        values = {a: label for a, (label, _) in zip(order, combo)}
        changes = {AXES[a][1]: value for a, (_, value) in zip(order, combo)}
        label = "-".join(label for a, (label, _) in zip(order, combo) if len(axes[a]) > 1)
        out.append(Cell(label=label, changes=changes, values=values))
    return out


def first_values(options: Mapping[str, Any], axes: Mapping[str, list[tuple[str, Any]]]) -> dict[str, Any]:
    """The raw options with each matrix option at its first value: the first cell's settings.

    The other cells are that settings object with the matrix fields replaced.
    """
    out = dict(options)
    out.update({AXES[a][0]: str(values[0][1]) for a, values in axes.items()})
    return out
