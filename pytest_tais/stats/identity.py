"""Identity evidence: how far the arms' answers differ.

At K = 1 (greedy) the arms should answer byte for byte alike: :func:`byte_identity`. At K >= 2
(sampled) answers differ by chance, and the evidence is the share of prompts whose refusal share
moved by more than the stack's own rerun spread: :func:`moved_share` with :func:`rerun_spread`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq, Prefix

__all__ = ["ByteIdentity", "byte_identity", "MovedShare", "moved_share", "rerun_spread"]


@dataclasses.dataclass(frozen=True)
class ByteIdentity:
    """Byte-identity evidence between the arms' outputs for one task (docs/statistics.md, sec. 4).

    - ``identical``: pairs whose UTF-8 bytes are equal; ``identical_share`` = identical / n.
    - ``first_divergence``: for each differing pair, the byte offset of the first differing byte
      (the length of the common prefix), in input order; summarised by median/quartiles.
    - ``changed_bytes_share``: mean over all pairs of 1 - LCS / max(len_A, len_B), LCS the length
      of a longest common subsequence of the two byte strings (0 for identical pairs).
    - ``changed_bytes_share_weighted``: the same, pooled: 1 - sum(LCS) / sum(max(len_A, len_B)).
    - ``first_divergence_tokens``: where token ids were recorded for every differing pair, the
      token offset of the first differing token for each, in the order of ``first_divergence``;
      None otherwise.
    """

    n: int
    identical: int
    identical_share: float
    first_divergence: tuple[int, ...]
    first_divergence_median: float | None
    first_divergence_quartiles: tuple[float, float, float] | None
    changed_bytes_share: float
    changed_bytes_share_weighted: float
    first_divergence_tokens: tuple[int, ...] | None = None
    first_divergence_tokens_median: float | None = None
    first_divergence_tokens_quartiles: tuple[float, float, float] | None = None


def _common_prefix(x: Sequence[int], y: Sequence[int]) -> int:
    if type(x) is not type(y):  # a tuple against an array: slices of the two never compare equal
        x, y = tuple(x), tuple(y)
    m = min(len(x), len(y))
    i = 0
    # Compare in chunks first: most differing outputs share a long prefix.
    step = 64
    while i + step <= m and x[i : i + step] == y[i : i + step]:
        i += step
    while i < m and x[i] == y[i]:
        i += 1
    return i


def _quartiles(values: Sequence[int]) -> tuple[float, float, float] | None:
    if not len(values):
        return None
    q = np.percentile(values, [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def byte_identity(
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    token_ids_a: Sequence[Sequence[int] | None] | None = None,
    token_ids_b: Sequence[Sequence[int] | None] | None = None,
) -> ByteIdentity:
    """Compare two aligned lists of outputs byte by byte (see :class:`ByteIdentity`).

    Identical pairs cost one comparison; the others go to rapidfuzz in one batch per measure
    (common prefix, LCS), which strips the common prefix and suffix itself and runs a
    bit-parallel LCS on the rest. ``token_ids_a``/``token_ids_b``, aligned with the texts,
    add the first divergence in tokens.
    """
    if len(texts_a) != len(texts_b):
        raise ValueError(f"arms differ in length: {len(texts_a)} vs {len(texts_b)}")
    n = len(texts_a)
    xa = [t.encode("utf-8") for t in texts_a]
    xb = [t.encode("utf-8") for t in texts_b]
    longer = np.maximum(np.fromiter(map(len, xa), np.int64, n), np.fromiter(map(len, xb), np.int64, n))
    differs = np.fromiter(map(bytes.__ne__, xa, xb), bool, n)
    idx = np.flatnonzero(differs)
    da, db = [xa[i] for i in idx], [xb[i] for i in idx]
    del xa, xb
    if idx.size:
        firsts = process.cpdist(da, db, scorer=Prefix.similarity, dtype=np.int64, workers=-1)
        lcs = process.cpdist(da, db, scorer=LCSseq.similarity, dtype=np.int64, workers=-1)
    else:
        firsts = lcs = np.zeros(0, np.int64)
    matched = longer.copy()
    matched[idx] = lcs
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(longer > 0, 1.0 - matched / np.maximum(longer, 1), 0.0)
    longer_total = int(longer.sum())
    tokens = None
    if token_ids_a is not None and token_ids_b is not None:
        if len(token_ids_a) != n or len(token_ids_b) != n:
            raise ValueError(
                f"token ids differ in length from the texts: {len(token_ids_a)}, {len(token_ids_b)} vs {n}"
            )
        got = [(token_ids_a[i], token_ids_b[i]) for i in idx]
        if all(ta is not None and tb is not None for ta, tb in got):
            tokens = tuple(_common_prefix(ta, tb) for ta, tb in got)
    first_list = tuple(int(v) for v in firsts)
    quart = _quartiles(first_list)
    tquart = _quartiles(tokens) if tokens is not None else None
    identical = n - int(idx.size)
    return ByteIdentity(
        n=n,
        identical=identical,
        identical_share=identical / n if n else 0.0,
        first_divergence=first_list,
        first_divergence_median=quart[1] if quart else None,
        first_divergence_quartiles=quart,
        changed_bytes_share=float(shares.mean()) if n else 0.0,
        changed_bytes_share_weighted=1.0 - int(matched.sum()) / longer_total if longer_total else 0.0,
        first_divergence_tokens=tokens,
        first_divergence_tokens_median=tquart[1] if tquart else None,
        first_divergence_tokens_quartiles=tquart,
    )


def rerun_spread(run_a, run_b, k: int | None = None, level: float = 0.95) -> float:
    """How far a prompt's refusal share moves between two runs of the same arm (e.g. target reruns
    with other seeds): the ``level`` quantile (lower, an observed value) of |a_i - b_i| over prompts."""
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    from .clustered import share_differences

    d = np.abs(share_differences(run_a, run_b, k))
    return float(np.quantile(d, level, method="lower"))


@dataclasses.dataclass(frozen=True)
class MovedShare:
    """Prompts whose refusal share moved by more than ``spread`` between the arms."""

    n: int
    moved: int
    share: float
    spread: float

    def summary(self) -> str:
        return f"{self.moved}/{self.n} prompts ({100 * self.share:.1f}%) moved by more than {self.spread:.3f}"


def moved_share(target, speculative, k: int | None = None, spread: float = 0.0) -> MovedShare:
    """Share of prompts with |x_i - y_i| / K > ``spread`` (the sampled stand-in for byte identity;
    take ``spread`` from :func:`rerun_spread` of target-vs-target reruns)."""
    if not (isinstance(spread, (int, float)) and math.isfinite(spread) and 0.0 <= spread <= 1.0):
        raise ValueError(f"spread must lie in [0, 1], got {spread!r}")
    from .clustered import share_differences

    d = np.abs(share_differences(target, speculative, k))
    moved = int(np.count_nonzero(d > spread + 1e-12))
    return MovedShare(n=int(d.size), moved=moved, share=moved / d.size, spread=float(spread))
