"""The statistics, usable outside pytest: ``from pytest_tais.stats import paired_tost, tost, ...``.

- ``levels``: the defaults of margin, alpha and the h cutoff, and the one range check of margin and alpha;
- ``paired``: the paired 2x2 test (K = 1: Tango's score test and its exact variant), Wilson, Cohen's h,
  the needed n; and the one entry per statistic for every K (``tost``, ``prompts_needed``);
- ``clustered``: the test of K >= 2 samples per prompt per arm (prompts are the units);
- ``null``: the swap null of |h|; ``identity``: byte identity (K = 1) and the moved share (K >= 2).

Names load on first use: the option table reads ``levels`` when pytest starts, and numpy, scipy
and rapidfuzz load only when a statistic is computed.
"""

from __future__ import annotations

from typing import Any

_HOMES = {
    "paired": (
        "PairedTable",
        "PairedTOSTResult",
        "paired_table",
        "tango_z",
        "paired_tost",
        "wilson_interval",
        "cohens_h",
        "required_n",
        "tost",
        "prompts_needed",
    ),
    "identity": ("ByteIdentity", "byte_identity", "MovedShare", "moved_share", "rerun_spread"),
    "null": ("swap_null_h_quantile",),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
