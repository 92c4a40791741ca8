"""The generation record: one arm's answer to one prompt.

This is the replay format and the format the engines record: one JSON object per line,

    {"task": str, "prompt_id": str, "prompt": str, "arm": "target" | "speculative", "text": str,
     "metric": "refusal" | "accuracy", "expected": str (accuracy tasks),
     "token_ids": [int, ...] (optional), "meta": {...} (optional),
     "sample": int, "seed": int (sampled screens: the sample's index 0..K-1 and its seed),
     "target_scores": {...} (optional; see below)}

``metric`` may be left out when the replay run names the battery (``--tais-battery``), which then
says how each task is scored. A file whose records carry ``sample`` is a sampled screen: every
prompt needs samples 0..K-1 in both arms, each index once.

``target_scores`` (greedy speculative records whose text differs from the target-only answer):
the token-level audit's teacher-forced scoring of this answer's ``token_ids`` through the target
model (:mod:`pytest_tais.stats.audit`)::

    {"positions": int (tokens scored), "dtype": str (the target's, e.g. "bfloat16"),
     "scorer": str (e.g. "vllm prompt_logprobs"), "verifier": "lossless" | "lossy: <rule>",
     "mismatches": [{"position": int (0-based in token_ids), "target_token": int, "emitted_token": int,
                     "gap": float (target's top logprob - emitted token's logprob, nats),
                     "target_text": str, "emitted_text": str}, ...]}

Only positions where the emitted token is not the target's top token are listed. A replay audits
its differing answers from this field; without it the audit is reported "not run".

A run captured on a GPU box can be re-gated anywhere with ``--tais-replay``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .files import atomic_write_text, gc_paused, iter_json_lines


#: The two arms of the screen.
TARGET = "target"
SPECULATIVE = "speculative"
ARMS = (TARGET, SPECULATIVE)
#: What a task's binary score means: refused, or answered correctly (capability tasks).
METRICS = ("refusal", "accuracy")


class RecordError(ValueError):
    """A replay/record file is malformed. The message names the file, the line and the fix."""


_NO_META: Mapping[str, Any] = types.MappingProxyType({})
#: The keys of the common record, which needs no check past its types.
_PLAIN_KEYS = frozenset({"task", "prompt_id", "prompt", "arm", "text", "metric"})


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
    #: The token audit's scores of this answer through the target model (see the module docstring).
    target_scores: Mapping[str, Any] | None = None

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
        if self.target_scores is not None:
            out["target_scores"] = dict(self.target_scores)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "record", intern: Callable[[str], str] | None = None) -> "Generation":
        """A record from one parsed line; ``intern`` shares the strings both arms repeat."""
        try:
            task, prompt_id, prompt, arm, text = obj["task"], obj["prompt_id"], obj["prompt"], obj["arm"], obj["text"]
            plain = type(task) is str and type(prompt_id) is str and type(prompt) is str and type(text) is str
        except (KeyError, TypeError, IndexError):
            plain = False
        plain = plain and (arm == TARGET or arm == SPECULATIVE)
        share = intern or _same
        if plain and obj.keys() <= _PLAIN_KEYS:
            metric = obj.get("metric")
            if metric is None or metric == "refusal":  # nothing else to check: the greedy refusal record
                return cls(share(task), share(prompt_id), share(prompt), arm, share(text), None, _NO_META, metric)
        # The checks below run in full only for a line the common shape does not fit.
        if not plain:
            _check_record(obj, where)
            task, prompt_id, prompt, arm, text = (
                obj["task"],
                str(obj["prompt_id"]),
                obj["prompt"],
                obj["arm"],
                obj["text"],
            )
        token_ids = obj.get("token_ids")
        if token_ids is not None:
            token_ids = _token_column(token_ids, where)
        meta = obj.get("meta") or _NO_META
        if meta is not _NO_META and not isinstance(meta, dict):
            raise RecordError(f"{where}: 'meta' must be an object")
        metric, expected, sample, seed = _checked_options(obj, where)
        scores = obj.get("target_scores")
        if scores is not None:
            _check_scores(scores, where)
        return cls(
            task=share(task),
            prompt_id=share(prompt_id),
            prompt=share(prompt),
            arm=arm,
            text=share(text),
            token_ids=token_ids,
            meta=meta,
            metric=metric,
            expected=expected,
            sample=sample,
            seed=seed,
            target_scores=scores,
        )


def _checked_options(obj: Mapping[str, Any], where: str) -> tuple[Any, Any, Any, Any]:
    """A record's metric, expected answer, sample index and seed, each checked."""
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
    return metric, expected, sample, seed


_MISMATCH_KEYS = {"position": int, "target_token": int, "emitted_token": int, "gap": (int, float)}


def _check_scores(scores: Any, where: str) -> None:
    """The shape the audit reads (the module docstring); anything else names the field and the fix."""
    fix = "record the run again with --tais-record, or drop the field (the audit is then reported not run)"
    ok = (
        isinstance(scores, dict) and type(scores.get("positions")) is int and isinstance(scores.get("mismatches"), list)
    )
    for m in scores.get("mismatches", ()) if ok else ():
        ok = isinstance(m, dict) and all(
            isinstance(m.get(k), t) and type(m.get(k)) is not bool for k, t in _MISMATCH_KEYS.items()
        )
        if not ok:
            break
    if not ok:
        raise RecordError(
            f'{where}: \'target_scores\' must be {{"positions": int, "mismatches": [{{"position", '
            f'"target_token", "emitted_token", "gap", ...}}]}}; {fix}'
        )


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
    #: The token audit's context: "unscored_why" (why differing answers may lack target scores),
    #: "verifier" (the run's claim) and "cost" (the scoring's timers); empty for a replay.
    audit: dict[str, Any] = dataclasses.field(default_factory=dict)

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


def _same(text: str) -> str:
    return text


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = _walk_jsonl(path)
        if not files:
            raise RecordError(
                f"{path}: folder holds no *.jsonl files; point --tais-replay at a JSONL file or a folder of them"
            )
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
        return RecordError(
            f"--tais-replay: {where} cannot be read ({exc.strerror or exc}); make it readable "
            "(chmod) or move it out of the replay folder"
        )

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
                    raise RecordError(
                        f"--tais-replay: {entry} is a dangling symlink (to {os.readlink(entry)}); "
                        "fix or remove the link"
                    )
            files.extend(Path(folder) / n for n in names if n.endswith(".jsonl") and (Path(folder) / n).is_file())
    except OSError as exc:
        raise unreadable(exc.filename or root, exc) from None
    return sorted(files)


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


def write_generations(path: str | os.PathLike[str], generations: Iterable[Generation]) -> None:
    """Write a replay file atomically."""
    lines = [json.dumps(g.to_json(), ensure_ascii=False, sort_keys=True) for g in generations]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
