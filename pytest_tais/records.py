"""The generation record: one arm's answer to one prompt.

This is the replay format and the format the engines record: one JSON object per line,

    {"task": str, "prompt_id": str, "prompt": str, "arm": "target" | "speculative", "text": str,
     "metric": "refusal" | "accuracy", "expected": str (accuracy tasks),
     "token_ids": [int, ...] (optional), "meta": {...} (optional),
     "sample": int, "seed": int (sampled screens: the sample's index 0..K-1 and its seed)}

``metric`` may be left out when the replay run names the battery (``--tais-battery``), which then
says how each task is scored. A file whose records carry ``sample`` is a sampled screen: every
prompt needs samples 0..K-1 in both arms, each index once.

so a run captured on a GPU box can be re-gated anywhere with ``--tais-replay``.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import re
import tempfile
import types
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

try:  # the `fast` extra: about 3x faster on long answers; json stays the reference
    import orjson

    _fast_loads: Callable[[bytes], Any] | None = orjson.loads
    _FAST_ERROR: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads, _FAST_ERROR = None, ValueError

#: The two arms of the screen.
TARGET = "target"
SPECULATIVE = "speculative"
ARMS = (TARGET, SPECULATIVE)
#: What a task's binary score means: refused, or answered correctly (capability tasks).
METRICS = ("refusal", "accuracy")


class RecordError(ValueError):
    """A replay/record file is malformed. The message names the file, the line and the fix."""


_NO_META: Mapping[str, Any] = types.MappingProxyType({})


class TokenIds(array):
    """Token ids held compactly: 4 (or 8) bytes a token where a tuple of ints takes about 36, so a
    replay of long answers fits in a few times its file size. It equals, and hashes like, the
    tuple of the same ids, so records read from a file compare equal to those built in memory."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):
            return len(self) == len(other) and tuple(self) == other
        return array.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))


def _token_column(value: Any, where: str) -> Sequence[int]:
    if isinstance(value, list) and not any(type(t) is bool for t in value):
        for typecode in ("i", "q"):
            try:
                return TokenIds(typecode, value)
            except OverflowError:
                continue
            except TypeError:
                break
    raise RecordError(f"{where}: 'token_ids' must be a list of integers")


@dataclasses.dataclass(frozen=True, slots=True)
class Generation:
    task: str
    prompt_id: str
    prompt: str
    arm: str
    text: str
    token_ids: Sequence[int] | None = None  # a tuple, or TokenIds read from a file
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: What scoring the task needs, so that a replay scores it as the live run did.
    metric: str | None = None
    expected: str | None = None
    #: Sampled screens: which of the K samples this is, and the seed it was drawn with.
    sample: int | None = None
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "arm": self.arm,
            "text": self.text,
        }
        if self.token_ids is not None:
            out["token_ids"] = list(self.token_ids)
        if self.meta:
            out["meta"] = dict(self.meta)
        if self.metric is not None:
            out["metric"] = self.metric
        if self.expected is not None:
            out["expected"] = self.expected
        if self.sample is not None:
            out["sample"] = self.sample
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "record", intern: Callable[[str], str] | None = None) -> "Generation":
        """A record from one parsed line; ``intern`` shares the strings both arms repeat."""
        try:
            task, prompt_id, prompt, arm, text = obj["task"], obj["prompt_id"], obj["prompt"], obj["arm"], obj["text"]
            plain = type(task) is str and type(prompt_id) is str and type(prompt) is str and type(text) is str
        except (KeyError, TypeError, IndexError):
            plain = False
        # The checks below run in full only for a line the common shape does not fit.
        if not (plain and (arm == TARGET or arm == SPECULATIVE)):
            _check_record(obj, where)
            task, prompt_id, prompt, arm, text = obj["task"], str(obj["prompt_id"]), obj["prompt"], obj["arm"], obj["text"]
        token_ids = obj.get("token_ids")
        if token_ids is not None:
            token_ids = _token_column(token_ids, where)
        meta = obj.get("meta") or _NO_META
        if meta is not _NO_META and not isinstance(meta, dict):
            raise RecordError(f"{where}: 'meta' must be an object")
        metric, expected = obj.get("metric"), obj.get("expected")
        if metric is not None and metric not in METRICS:
            raise RecordError(f"{where}: 'metric' is {metric!r}; use one of {', '.join(METRICS)}")
        if expected is not None and not isinstance(expected, str):
            raise RecordError(f"{where}: 'expected' must be a string")
        if metric == "accuracy" and expected is None:
            raise RecordError(f"{where}: an accuracy record needs its 'expected' answer to be scored")
        sample, seed = obj.get("sample"), obj.get("seed")
        for key, value in (("sample", sample), ("seed", seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise RecordError(f"{where}: {key!r} must be a whole number >= 0 (the sample's index 0..K-1, or its seed)")
        if seed is not None and sample is None:
            raise RecordError(f"{where}: 'seed' without 'sample'; a sampled record names its sample index 0..K-1 too")
        share = intern or _same
        return cls(task=share(task), prompt_id=share(prompt_id), prompt=share(prompt), arm=arm, text=share(text),
                   token_ids=token_ids, meta=meta, metric=metric, expected=expected, sample=sample, seed=seed)


@dataclasses.dataclass
class ArmOutputs:
    """Both arms' outputs keyed by (task, prompt_id), with problems found while indexing them."""

    outputs: dict[str, dict[tuple[str, str], Generation]]
    duplicates: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # task -> "arm:prompt_id"
    fingerprints: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_of_scope: list[str] = dataclasses.field(default_factory=list)
    header_lines: list[str] = dataclasses.field(default_factory=list)
    store_dir: Path | None = None
    #: Sampled screens: arm -> (task, prompt_id) -> sample index -> Generation. ``outputs`` then
    #: holds each prompt's first record, so that task discovery and metrics read it as before.
    samples: dict[str, dict[tuple[str, str], dict[int, Generation]]] = dataclasses.field(default_factory=dict)
    #: Tasks whose records mix greedy lines (no "sample") and sampled ones.
    mixed: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return any(self.samples.get(arm) for arm in ARMS)


def index_generations(gens: Iterable[Generation]) -> ArmOutputs:
    outputs: dict[str, dict[tuple[str, str], Generation]] = {TARGET: {}, SPECULATIVE: {}}
    duplicates: dict[str, list[str]] = {}
    samples: dict[str, dict[tuple[str, str], dict[int, Generation]]] = {TARGET: {}, SPECULATIVE: {}}
    greedy: set[tuple[str, str, str]] = set()
    mixed: dict[str, list[str]] = {}
    with gc_paused():
        for g in gens:
            _index_one(g, outputs, duplicates, samples, greedy, mixed)
    for arm in ARMS:  # the first record shown for a sampled prompt is sample 0 where there is one
        for key, per in samples[arm].items():
            outputs[arm][key] = per[min(per)]
    if not any(samples.values()):
        samples = {}
    return ArmOutputs(outputs=outputs, duplicates=duplicates, samples=samples, mixed=mixed)


def _index_one(g: Generation, outputs: dict, duplicates: dict, samples: dict, greedy: set, mixed: dict) -> None:
    key = (g.task, g.prompt_id)
    if g.sample is not None:
        per = samples[g.arm].setdefault(key, {})
        if g.sample in per:
            duplicates.setdefault(g.task, []).append(f"{g.arm}:{g.prompt_id}#sample {g.sample}")
            return
        per[g.sample] = g
        if (g.arm, *key) in greedy:
            mixed.setdefault(g.task, []).append(f"{g.arm}:{g.prompt_id}")
        outputs[g.arm].setdefault(key, g)
        return
    greedy.add((g.arm, *key))
    if key in samples[g.arm]:
        mixed.setdefault(g.task, []).append(f"{g.arm}:{g.prompt_id}")
        return
    if key in outputs[g.arm]:
        duplicates.setdefault(g.task, []).append(f"{g.arm}:{g.prompt_id}")
        return
    outputs[g.arm][key] = g


def _check_record(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("task", "prompt_id", "prompt", "arm", "text"):
        if key not in obj:
            raise RecordError(f"{where}: missing key {key!r}; every line needs task, prompt_id, prompt, arm, text")
    for key in ("task", "prompt", "arm", "text"):
        if not isinstance(obj[key], str):
            raise RecordError(f"{where}: {key!r} must be a string")
    prompt_id = obj["prompt_id"]
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)):
        raise RecordError(f"{where}: 'prompt_id' must be a string")
    if obj["arm"] not in ARMS:
        raise RecordError(f"{where}: 'arm' is {obj['arm']!r}; use 'target' or 'speculative'")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: loading a large replay allocates several objects a
    record and frees none, so the collector's passes over the growing heap are wasted (a third of
    the load time on 48,072 pairs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_frozen = False


def freeze_long_lived() -> None:
    """Take every object alive now out of the collector's passes (``gc.freeze``).

    Called once a replay is loaded, at configure time: its records, and pytest's and the plugin's
    own objects, live until the run ends, and every later full collection would walk them again
    (about 0.9 s of a 48,072-pair run). Objects still free as usual by reference count; only a
    reference cycle among them would wait for :func:`unfreeze_long_lived`, which the plugin calls
    when the run ends, before pytest's own final collection. A process that froze objects of its
    own is left alone. (An in-process vLLM engine, a model judge's, unfreezes everything when it
    closes: the records are then walked again, which costs time, not correctness.)
    """
    global _frozen
    if not _frozen and gc.get_freeze_count() == 0:
        gc.freeze()
        _frozen = True


def unfreeze_long_lived() -> None:
    global _frozen
    if _frozen:
        gc.unfreeze()
        _frozen = False


def _same(text: str) -> str:
    return text


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = _walk_jsonl(path)
        if not files:
            raise RecordError(f"{path}: folder holds no *.jsonl files; point --tais-replay at a JSONL file or a folder of them")
        return files
    if not path.exists():
        raise RecordError(f"{path}: no such file or folder; point --tais-replay at a JSONL file or a folder of them")
    return [path]


def _walk_jsonl(root: Path) -> list[Path]:
    """Every ``*.jsonl`` under ``root``, sorted, following symlinked folders (each real folder once:
    a link back up is no loop); a dangling link or an unreadable folder is an error naming it."""
    files: list[Path] = []
    seen: set[str] = set()

    def fail(exc: OSError) -> None:
        raise exc

    def unreadable(where: Any, exc: OSError) -> RecordError:
        return RecordError(f"--tais-replay: {where} cannot be read ({exc.strerror or exc}); make it readable "
                           "(chmod) or move it out of the replay folder")

    try:
        for folder, dirs, names in os.walk(root, onerror=fail, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []  # a symlink loop, or a second link to a folder already read
                continue
            seen.add(real)
            for name in dirs + names:
                entry = Path(folder) / name
                if entry.is_symlink() and not entry.exists():
                    raise RecordError(f"--tais-replay: {entry} is a dangling symlink (to {os.readlink(entry)}); "
                                      "fix or remove the link")
            files.extend(Path(folder) / n for n in names if n.endswith(".jsonl") and (Path(folder) / n).is_file())
    except OSError as exc:
        raise unreadable(exc.filename or root, exc) from None
    return sorted(files)


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff) is text only as half of a valid pair.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_utf8(path: Any, lineno: int, line: bytes, at: int, fix: str = "save the file as UTF-8") -> str:
    return f"{path}:{lineno}: not UTF-8 text (byte 0x{line[at]:02x} at byte {at + 1} of the line); {fix}"


def _unreadable(path: Any, exc: OSError) -> str:
    """A file that cannot be opened: no read permission, or a folder where a file was expected."""
    if isinstance(exc, IsADirectoryError):
        return f"{os.fspath(path)}: is a folder, not a file; point the option at a file"
    return f"{os.fspath(path)}: cannot be read ({exc.strerror or exc}); make it readable (chmod) or point the option at another file"


def read_text(path: str | os.PathLike[str], error: type[Exception], prefix: str = "", fix: str = "save the file as UTF-8") -> str:
    """A whole file as text (a leading byte-order mark dropped); bytes that are not UTF-8 raise
    ``error`` naming the file and line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise  # the callers name a missing file in their own words
    except OSError as exc:
        raise error(prefix + _unreadable(path, exc)) from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        lineno = data.count(b"\n", 0, start) + 1
        raise error(prefix + _not_utf8(path, lineno, data[start:end if end >= 0 else len(data)], at - start, fix)) from None


def check_text(obj: Any, where: str, error: type[Exception], prefix: str = "") -> None:
    """Every string in ``obj`` must be encodable as UTF-8 (a JSON escape can make a lone surrogate)."""
    try:
        json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{prefix}{where}: a \\u escape stands for a lone UTF-16 surrogate, which is not text; "
                    "fix the escape (a pair such as \\ud83d\\ude00 is fine) or write the file again") from None


def iter_json_lines(path: str | os.PathLike[str], error: type[Exception], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", object)`` for each non-blank line; a bad line raises ``error`` naming it.

    orjson parses where it is installed; a line it rejects (bad UTF-8, a lone surrogate escape, NaN,
    huge integers) is parsed again by ``json``, so both accept the same files and fail the same way.
    """
    name = os.fspath(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise  # the callers name a missing file in their own words
    except OSError as exc:
        raise error(prefix + _unreadable(path, exc)) from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if _fast_loads is not None:
                try:
                    yield f"{name}:{lineno}", _fast_loads(raw)
                    continue
                except _FAST_ERROR:
                    pass
            where = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(prefix + _not_utf8(path, lineno, raw, exc.start)) from None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{prefix}{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
            if _SURROGATE_ESCAPE.search(line):
                check_text(obj, where, error, prefix)
            yield where, obj


def read_generations(path: str | os.PathLike[str]) -> Iterator[Generation]:
    """Yield every record of a JSONL file or of all ``*.jsonl`` files under a folder (sorted).

    Both arms repeat each task name, prompt id and prompt, and often the answer: one copy of each
    equal string is kept.
    """
    seen: dict[str, str] = {}
    share = lambda text: seen.setdefault(text, text)  # noqa: E731
    for file in _jsonl_files(Path(path)):
        for where, obj in iter_json_lines(file, RecordError):
            yield Generation.from_json(obj, where, share)


def read_replay(path: str | os.PathLike[str]) -> list[Generation]:
    """The ``--tais-replay`` records; a file or folder without any record is an error naming it."""
    gens = list(read_generations(path))
    if not gens:
        what = "its *.jsonl files hold" if Path(path).is_dir() else "the file holds"
        raise RecordError(
            f"--tais-replay={path}: {what} no records (only blank lines or nothing); point --tais-replay at the "
            "outputs a run wrote with --tais-record, one JSON record per line"
        )
    return gens


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (model weights do not fit a read_bytes())."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_generations(path: str | os.PathLike[str], generations: Iterable[Generation]) -> None:
    """Write a replay file atomically."""
    lines = [json.dumps(g.to_json(), ensure_ascii=False, sort_keys=True) for g in generations]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
