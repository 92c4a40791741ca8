"""The token audit's scores in the generation store: one answer scored once per target engine.

``audit-<target fingerprint key>.jsonl`` beside the target's shard, one line per scored answer:
``{"k": sha256(prompt, answer token ids), "scores": {...}, "sha256": ...}`` (``scores`` as the
``target_scores`` record field, without the run's verifier claim). A warm run that finds every
differing answer scored starts no engine for the audit. Lines are appended whole under the store's
lock; a half-written last line, or a line whose checksum does not match, is not served.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .store import line_checksum


def score_key(prompt: str, token_ids: Sequence[int]) -> str:
    """The address of one answer: its prompt text and its token ids."""
    ids = ",".join(str(int(t)) for t in token_ids)
    return hashlib.sha256(f"{prompt}\0{ids}".encode("utf-8")).hexdigest()


class ScoreCache:
    def __init__(self, root: Path, target_key: str) -> None:
        self.path = Path(root) / f"audit-{target_key}.jsonl"

    def read(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return out
        for line in raw.split(b"\n"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # blank, or the half-written tail of an interrupted run
            if (
                isinstance(obj, dict)
                and obj.get("sha256") == line_checksum(obj)
                and isinstance(obj.get("scores"), dict)
            ):
                out.setdefault(obj["k"], obj["scores"])
        return out

    def append(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        lines = []
        for key, scores in entries:
            obj: dict[str, Any] = {"k": key, "scores": dict(scores)}
            obj["sha256"] = line_checksum(obj)
            lines.append(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")
        if not lines:
            return
        with open(self.path, "ab") as f:
            if f.tell() and not self.path.read_bytes().endswith(b"\n"):
                f.write(b"\n")  # after an interrupted append: the half line stays alone and unread
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
