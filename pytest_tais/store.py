"""The generation store: every arm's outputs, addressed by the arm's fingerprint and the prompt.

Layout of a store folder::

    <fingerprint key>.jsonl   one line per answered prompt: {"k", "prompt", "text", "token_ids", "finish_reason"}
    <fingerprint key>.json    the full fingerprint (what decided those outputs), for people
    engine-starts.json        a log of engine starts (arm, fingerprint, process, timings, draft counters)
    file-hashes.json          memoised SHA-256 of model files
    .lock                     the writers' lock (filelock)

Writers hold :meth:`GenerationStore.lock`; each line is appended with one ``write`` + flush +
fsync, so readers without the lock see whole lines, or a half-written last line that they skip.
After an interrupted run the half-written tail is cut off before the next append: it is never
duplicated, and only the prompts without a whole line are generated again. A changed fingerprint
is a different file, so old outputs are never reused for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .records import atomic_write_text

_MAX_START_LOG = 1000


class StoreError(RuntimeError):
    """A store file is damaged; the message names the file and the fix."""


def prompt_key(text: str) -> str:
    """The address of a prompt inside a shard: SHA-256 of its exact text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_key(text: str, sample: int | None, seed: int | None) -> str:
    """A prompt's address, or for a sampled answer that of (prompt, sample index, seed); greedy keys are unchanged."""
    if sample is None:
        return prompt_key(text)
    return hashlib.sha256(f"{sample}\0{seed}\0{text}".encode("utf-8")).hexdigest()


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """The address of a fingerprint: SHA-256 of its canonical JSON (first 32 hex digits)."""
    canon = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode("ascii")).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class StoredOutput:
    prompt: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    #: Sampled screens: the sample's index and seed (None for greedy answers).
    sample: int | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        return sample_key(self.prompt, self.sample, self.seed)

    def to_line(self) -> bytes:
        obj = {
            "k": self.key,
            "prompt": self.prompt,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
        }
        if self.sample is not None:
            obj.update(sample=self.sample, seed=self.seed)
        return (json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


class Shard:
    """One fingerprint's outputs."""

    def __init__(self, root: Path, fingerprint: Mapping[str, Any]) -> None:
        self.fingerprint = dict(fingerprint)
        self.key = fingerprint_key(fingerprint)
        self.path = root / f"{self.key}.jsonl"
        self.meta_path = root / f"{self.key}.json"

    def read(self) -> dict[str, StoredOutput]:
        """Whole lines by prompt key (the first line wins); a half-written last line is skipped."""
        out: dict[str, StoredOutput] = {}
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return out
        end = data.rfind(b"\n") + 1  # bytes after the last newline are a write in progress or cut off
        for lineno, raw in enumerate(data[:end].splitlines(), 1):
            if not raw.strip():
                continue
            where = f"{self.path}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
                entry = StoredOutput(
                    prompt=obj["prompt"],
                    text=obj["text"],
                    token_ids=tuple(int(t) for t in obj["token_ids"]),
                    finish_reason=str(obj["finish_reason"]),
                    sample=obj.get("sample"),
                    seed=obj.get("seed"),
                )
                if not isinstance(entry.prompt, str) or not isinstance(entry.text, str) or obj["k"] != entry.key:
                    raise ValueError("key does not match the prompt")
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise StoreError(
                    f"{where}: damaged store line ({exc}); delete {self.path} (its outputs are regenerated) "
                    "or run with --tais-no-cache"
                ) from None
            out.setdefault(obj["k"], entry)
        return out

    def _repair_tail(self) -> None:
        """Cut a half-written last line left by an interrupted writer (caller holds the lock)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # Scan back for the last newline; everything after it is the partial line.
            pos = size
            block = 1 << 16
            keep = 0
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                pos = start
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, entries: Iterable[StoredOutput]) -> int:
        """Append entries, one fsynced write per line (caller holds the store lock). Returns the count."""
        if not self.meta_path.exists():
            atomic_write_text(self.meta_path, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")
        self._repair_tail()
        n = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for entry in entries:
                data = entry.to_line()
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
                n += 1
        finally:
            os.close(fd)
        return n


class GenerationStore:
    """A folder of shards, shared by the processes of a run (and by runs, when it is the cache)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.root / ".lock"
        self.starts_path = self.root / "engine-starts.json"
        self.hash_memo_path = self.root / "file-hashes.json"

    def lock(self, timeout: float = -1):
        """The writers' lock (a ``filelock.FileLock``; released by the OS if the holder dies)."""
        from filelock import FileLock

        return FileLock(str(self.lock_path), timeout=timeout)

    def shard(self, fingerprint: Mapping[str, Any]) -> Shard:
        return Shard(self.root, fingerprint)

    def engine_starts(self) -> list[dict[str, Any]]:
        """The engine-start log, oldest first."""
        try:
            data = json.loads(self.starts_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.starts_path}: damaged ({exc.msg}); delete it (it is only a log)") from None
        if not isinstance(data, list):
            raise StoreError(f"{self.starts_path}: expected a JSON list; delete it (it is only a log)")
        return data

    def log_engine_start(self, entry: Mapping[str, Any]) -> None:
        """Add one entry to the engine-start log (caller holds the lock; written atomically)."""
        log = self.engine_starts()
        log.append({"time": time.time(), "pid": os.getpid(), **entry})
        atomic_write_text(self.starts_path, json.dumps(log[-_MAX_START_LOG:], indent=1, sort_keys=True) + "\n")
