"""The generation store: every arm's outputs, addressed by the arm's fingerprint and the prompt.

Layout of a store folder::

    <fingerprint key>.jsonl   one line per answered prompt: {"k", "prompt", "text", "token_ids", "finish_reason",
                              "sha256"}; "sha256" covers the rest of the line, so an edited line is an error
    <fingerprint key>.json    the full fingerprint (what decided those outputs), for people
    audit-<target key>.jsonl  the token audit's scores through that target (:mod:`.scores`)
    engine-starts.json        a log of engine starts (arm, fingerprint, process, timings, draft counters),
                              written when an engine is about to start ("status": "running") and again when
                              it stops: a killed run stays in the log as "running"
    file-hashes.json          memoised SHA-256 of model files
    .lock                     the writers' lock (filelock)

Writers hold :meth:`GenerationStore.lock`; each line is appended with one ``write`` and each
batch (an engine call's outputs) is fsynced once, so readers without the lock see whole lines, or
a half-written last line that they skip.
After an interrupted run the half-written tail is cut off before the next append: it is never
duplicated, and only the prompts without a whole line are generated again. A changed fingerprint
is a different file, so old outputs are never reused for it; so is a store of another line format
(:data:`STORE_FORMAT` is part of every address).

A folder that cannot be written (permissions, a read-only mount) is served read-only: no lock is
taken, whatever it holds is used, and anything that would have to be written raises a
:class:`StoreError` naming the folder and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .files import atomic_write_text

_MAX_START_LOG = 1000
#: The line format; version 2 added the per-line checksum. Older shards live at other addresses.
STORE_FORMAT = 2
# errno values that mean "this folder cannot be written", not "something is broken".
_READ_ONLY_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_WRITE_FIX = "make the folder writable, point --tais-cache-dir at a writable folder, or pass --tais-no-cache"


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
    if STORE_FORMAT != 1:  # format 1 addressed the fingerprint alone
        canon = f"store-format-{STORE_FORMAT}:{canon}"
    return hashlib.sha256(canon.encode("ascii")).hexdigest()[:32]


def line_checksum(obj: Mapping[str, Any]) -> str:
    """SHA-256 of a store line's fields other than "sha256", in canonical JSON."""
    canon = json.dumps(
        {k: v for k, v in obj.items() if k != "sha256"}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


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
        obj["sha256"] = line_checksum(obj)
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
                if "sha256" not in obj:
                    raise ValueError("no checksum")
                if obj["sha256"] != line_checksum(obj):
                    raise StoreError(
                        f"{where}: this store line was edited or damaged after it was written (its sha256 does not "
                        f"match its content), so its output cannot be trusted; delete {self.path} (its outputs are "
                        "regenerated) or run with --tais-no-cache"
                    )
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
        """Append entries, one ``write`` per line and one fsync for them all (caller holds the store
        lock). Returns the count. A killed process loses no line it wrote (the kernel has it); the
        fsync makes the batch outlive a crash of the machine, whose torn tail the next append cuts.
        One fsync per line cost 0.22-0.25 ms a line here, more on network disks."""
        try:
            if not self.meta_path.exists():
                atomic_write_text(self.meta_path, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")
            self._repair_tail()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the generation store ({exc.strerror}); {_WRITE_FIX}") from None
        n = 0
        try:
            for entry in entries:
                data = entry.to_line()
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                n += 1
            if n:
                os.fsync(fd)
        finally:
            os.close(fd)
        return n


class GenerationStore:
    """A folder of shards, shared by the processes of a run (and by runs, when it is the cache)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.lock_path = self.root / ".lock"
        self.starts_path = self.root / "engine-starts.json"
        self.hash_memo_path = self.root / "file-hashes.json"
        self.read_only: str | None = None  # why the folder cannot be written, once writer() found out
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"generation store {self.root}: cannot create the folder ({exc.strerror}); {_WRITE_FIX}"
            ) from None

    def lock(self, timeout: float = -1):
        """The writers' lock (a ``filelock.FileLock``; released by the OS if the holder dies)."""
        from filelock import FileLock

        return FileLock(str(self.lock_path), timeout=timeout)

    @contextlib.contextmanager
    def writer(self, timeout: float = -1) -> Iterator[bool]:
        """Hold the writers' lock and yield True; where the folder cannot be written (permissions,
        a read-only mount) take no lock and yield False: the store then serves what it holds."""
        lock = self.lock(timeout)
        try:
            lock.acquire()
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise
            self.read_only = exc.strerror or "not writable"
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def read_only_error(self, what: str) -> StoreError:
        """The error for a write that a read-only store cannot take."""
        return StoreError(f"generation store {self.root} is read-only ({self.read_only}): {what}; {_WRITE_FIX}")

    def shard(self, fingerprint: Mapping[str, Any]) -> Shard:
        return Shard(self.root, fingerprint)

    def engine_starts(self) -> list[dict[str, Any]]:
        """The engine-start log, oldest first."""
        try:
            data = json.loads(self.starts_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise StoreError(f"{self.starts_path}: damaged ({msg}); delete it (it is only a log)") from None
        if not isinstance(data, list):
            raise StoreError(f"{self.starts_path}: expected a JSON list; delete it (it is only a log)")
        return data

    def log_engine_start(self, entry: Mapping[str, Any]) -> str:
        """Add one entry to the engine-start log (caller holds the lock; written atomically) and
        return its id, for :meth:`update_engine_start`."""
        log = self.engine_starts()
        entry_id = secrets.token_hex(8)
        log.append({"time": time.time(), "pid": os.getpid(), **entry, "id": entry_id})
        self._write_log(log)
        return entry_id

    def update_engine_start(self, entry_id: str, entry: Mapping[str, Any] | None) -> None:
        """Replace logged entry ``entry_id`` by ``entry`` (its time and pid kept); None removes it."""
        log = self.engine_starts()
        for i, old in enumerate(log):
            if isinstance(old, dict) and old.get("id") == entry_id:
                if entry is None:
                    del log[i]
                else:
                    log[i] = {
                        "time": old.get("time"),
                        "pid": old.get("pid"),
                        **entry,
                        "id": entry_id,
                        "ended": time.time(),
                    }
                break
        else:  # trimmed away by a long log: keep the news
            if entry is None:
                return
            log.append({"time": time.time(), "pid": os.getpid(), **entry, "id": entry_id, "ended": time.time()})
        self._write_log(log)

    def _write_log(self, log: list[dict[str, Any]]) -> None:
        try:
            atomic_write_text(self.starts_path, json.dumps(log[-_MAX_START_LOG:], indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            raise StoreError(
                f"{self.starts_path}: cannot write the engine-start log ({exc.strerror}); {_WRITE_FIX}"
            ) from None
