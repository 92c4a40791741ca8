"""pytest-tais: the Typical-Acceptance Invariance Screen as a pytest plugin.

Public API (importable without pytest running, and without torch or vLLM)::

    from pytest_tais import tais_equivalent, screen_task, TaisNotEquivalent, Verdict
    from pytest_tais.stats import paired_tost, wilson_interval, cohens_h, byte_identity, required_n
    from pytest_tais.pairs.judges import default_judge
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "tais_equivalent",
    "TaisNotEquivalent",
    "TaisControlNotCaught",
    "screen_task",
    "Verdict",
    "PairRecord",
    "TaskError",
    "decide",
]

_LAZY = {
    "tais_equivalent": ("assertion", "tais_equivalent"),
    "TaisNotEquivalent": ("assertion", "TaisNotEquivalent"),
    "TaisControlNotCaught": ("assertion", "TaisControlNotCaught"),
    "screen_task": ("run.screen", "screen_task"),
    "Verdict": ("verdict", "Verdict"),
    "PairRecord": ("pairs.record", "PairRecord"),
    "TaskError": ("verdict", "TaskError"),
    "decide": ("verdict", "decide"),
}


def __getattr__(name: str) -> Any:
    # Lazy: the plugin is loaded by every pytest run; statsmodels/scipy load only when used.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
