"""The statistics' levels: their defaults and the one range check of margin and alpha.

Imports nothing, so that the option table (read by ``pytest --help``) can take its defaults from here.
"""

from __future__ import annotations

import math

MARGIN = 0.03
ALPHA = 0.05
H_CUTOFF = 0.1
H_NULL_LEVEL = 0.95
TOST_METHODS = ("score", "exact")
TOST_METHOD = TOST_METHODS[0]
POWER = 0.8
#: The directional leak test: "gate" (a leak fails the task) or "report" (shown, never gating).
LEAK_TEST_MODES = ("gate", "report")
LEAK_TEST = LEAK_TEST_MODES[0]


def check_levels(margin: float, alpha: float) -> None:
    """The one range check of the equivalence margin and the TOST level (``ValueError``)."""
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float))
        or not math.isfinite(margin)
        or not 0.0 < margin < 0.5
    ):
        raise ValueError(f"margin={margin!r} is out of range; give a proportion in (0, 0.5), e.g. 0.03 for +/-3pp")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or not 0.0 < alpha < 0.5
    ):
        raise ValueError(f"alpha={alpha!r} is out of range; give a level in (0, 0.5), e.g. 0.05")
