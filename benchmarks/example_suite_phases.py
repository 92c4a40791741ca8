"""Where a cold example-suite run spends its time: phase timers with wall and CPU seconds.

Copies ``example_suite/`` into a fresh folder (an empty ``.tais-cache``: a cold run, as on a fresh
clone), runs ``pytest SUITE -q`` in a child process with timers around each stage, and prints, per
phase, wall seconds and CPU seconds (user + system of pytest's process, its children included):

- ``import torch`` / ``import transformers`` / ``import vllm``: imported first, each timed (the run
  imports them anyway; timed here they are not hidden inside the first engine start);
- per engine (backend, arm, what the variant changes): start, generation, the token audit's
  scoring, shutdown, fingerprint;
- the store and bookkeeping around the engines (``run_arms`` less its engines);
- judging, verdicts, and the reports (``TaisSession.finish``);
- pytest itself: start-up and collection, and everything not inside a timer.

Times are exclusive: a phase inside another is not counted twice. On a shared machine the wall
clock moves with the other work; the CPU seconds move much less, so compare those. ``--warm``
reruns the same copy (everything from the generation store). Run it nice'd on a shared machine:
``nice -n 10 .venv/bin/python benchmarks/example_suite_phases.py [--warm] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- inside the child: timers ---------------------------------------------------------------------
def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


EVENTS: list[dict] = []
_STACK: list[list[float]] = []
_PARTIAL: list[str] = []


def _timed(phase: str, label: str, fn, *args, **kwargs):
    w0, c0 = time.perf_counter(), _cpu()
    _STACK.append([0.0, 0.0])
    try:
        return fn(*args, **kwargs)
    finally:
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        inner_wall, inner_cpu = _STACK.pop()
        EVENTS.append({"phase": phase, "label": label, "wall": wall - inner_wall, "cpu": cpu - inner_cpu})
        if _PARTIAL:  # each event as it ends, so that a run stopped part-way still tells where it was
            with open(_PARTIAL[0], "a", encoding="utf-8") as f:
                f.write(json.dumps(EVENTS[-1]) + "\n")
        if _STACK:
            _STACK[-1][0] += wall
            _STACK[-1][1] += cpu


def _variant(settings) -> str:
    """What distinguishes an engine: backend, draft, and the settings the example suite varies."""
    bits = [settings.backend]
    for name in ("dtype", "samples", "hf_acceptance", "canary", "max_tokens"):
        value = getattr(settings, name, None)
        if value not in (None, "", 0, 1, "exact"):
            bits.append(f"{name}={value}")
    return ",".join(bits)


def _wrap(cls, method: str, phase: str, labeled: bool = True) -> None:
    original = getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        label = ""
        if labeled:
            draft = f" {self.spec.draft.name}" if self.spec.draft is not None else ""
            label = f"{self.spec.arm}{draft} [{_variant(self.settings)}]"
        return _timed(phase, label, original, self, *args, **kwargs)

    setattr(cls, method, wrapper)


def _install() -> None:
    from pytest_tais.engines import arms
    from pytest_tais.engines.hf import HFBackend
    from pytest_tais.engines.vllm import VllmBackend
    from pytest_tais.run.screen import Screen
    from pytest_tais.run.session import TaisSession

    for cls, backend in ((VllmBackend, "vllm"), (HFBackend, "hf")):
        _wrap(cls, "_start", f"{backend} start")
        _wrap(cls, "generate", f"{backend} generate")
        _wrap(cls, "close", f"{backend} shutdown")
        _wrap(cls, "score", f"{backend} token-audit")  # the token audit's forward passes on the target engine
        _wrap(cls, "fingerprint", "fingerprints (model hashes)")
    _wrap(Screen, "_score_all", "judging", labeled=False)
    _wrap(Screen, "verdict", "verdicts", labeled=False)
    _wrap(TaisSession, "finish", "reports", labeled=False)
    original = arms.run_arms

    def run_arms(*args, **kwargs):
        return _timed("store and bookkeeping", "", original, *args, **kwargs)

    arms.run_arms = run_arms
    # The session imports run_arms from the package at call time.
    import pytest_tais.engines as engines

    engines.run_arms = run_arms


class _PytestPhases:
    def __init__(self) -> None:
        self.t0 = (time.perf_counter(), _cpu())
        self.marks: dict[str, tuple[float, float]] = {}

    def pytest_collection_finish(self, session) -> None:
        self.marks["collected"] = (time.perf_counter(), _cpu())


def inner(suite: str, events_file: str) -> int:
    import pytest

    _PARTIAL.append(events_file + "l")
    for name, stmt in (
        ("import torch", "import torch"),
        ("import transformers", "import transformers; from transformers import AutoModelForCausalLM, AutoTokenizer"),
        ("import vllm", "from vllm import LLM, SamplingParams"),
    ):
        _timed("imports", name, exec, stmt, {})
    _install()
    phases = _PytestPhases()
    w0, c0 = time.perf_counter(), _cpu()
    code = pytest.main([suite, "-q"], plugins=[phases])
    wall, cpu = time.perf_counter() - w0, _cpu() - c0
    cw, cc = phases.marks.get("collected", (w0, c0))
    EVENTS.append({"phase": "pytest start-up and collection", "label": "", "wall": cw - w0, "cpu": cc - c0})
    timed_wall = sum(e["wall"] for e in EVENTS if e["phase"] not in ("imports", "pytest start-up and collection"))
    timed_cpu = sum(e["cpu"] for e in EVENTS if e["phase"] not in ("imports", "pytest start-up and collection"))
    EVENTS.append(
        {
            "phase": "pytest, tests and fixtures outside the timers",
            "label": "",
            "wall": wall - (cw - w0) - timed_wall,
            "cpu": cpu - (cc - c0) - timed_cpu,
        }
    )
    Path(events_file).write_text(json.dumps({"exit": int(code), "events": EVENTS}), encoding="utf-8")
    return 0


# -- the parent: runs and prints ------------------------------------------------------------------
def _run(workdir: Path, suite: Path, events: Path, log: Path) -> tuple[float, float, dict]:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    before = os.times()
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, __file__, "--inner", str(suite), "--events", str(events)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    if proc.returncode != 0 or not events.exists():
        sys.exit(f"the run failed (exit {proc.returncode}); its output: {log}")
    return wall, cpu, json.loads(events.read_text(encoding="utf-8"))


def _print(title: str, wall: float, cpu: float, data: dict) -> None:
    print(f"\n{title}: {wall:.1f} s wall, {cpu:.1f} s CPU (the whole child process); pytest exit {data['exit']}")
    print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    by_phase: dict[str, list[float]] = {}
    for e in data["events"]:
        agg = by_phase.setdefault(e["phase"], [0, 0.0, 0.0])
        agg[0] += 1
        agg[1] += e["wall"]
        agg[2] += e["cpu"]
    print(f"{'phase':<48} {'calls':>6} {'wall s':>8} {'CPU s':>8}")
    for phase, (n, w, c) in sorted(by_phase.items(), key=lambda kv: -kv[1][2]):
        print(f"{phase:<48} {n:>6} {w:>8.1f} {c:>8.1f}")
    print("per engine (start / generate / shutdown, wall s; CPU s):")
    per: dict[str, dict[str, tuple[float, float]]] = {}
    for e in data["events"]:
        if e["label"] and e["phase"].split()[0] in ("vllm", "hf"):
            kind = e["phase"].split()[1]
            w, c = per.setdefault(f"{e['phase'].split()[0]} {e['label']}", {}).get(kind, (0.0, 0.0))
            per[f"{e['phase'].split()[0]} {e['label']}"][kind] = (w + e["wall"], c + e["cpu"])
    for name, kinds in per.items():
        cells = "  ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in kinds.items())
        print(f"  {name}: {cells}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    ap.add_argument("--events", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help="rerun on the filled cache too")
    ap.add_argument("--json", type=Path, help="write the phase events of each run here")
    ap.add_argument("--keep", action="store_true", help="keep the copy (its reports, cache and logs) afterwards")
    args = ap.parse_args()
    if args.inner:
        return inner(args.inner, args.events)
    work = Path(tempfile.mkdtemp(prefix="tais-phases-"))
    ok = False
    try:
        suite = work / "example_suite"
        shutil.copytree(
            REPO / "example_suite",
            suite,
            ignore=shutil.ignore_patterns(".tais-cache", "tais-report", "__pycache__"),
        )
        (work / "fixtures").symlink_to(REPO / "fixtures")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; copy in {work}")
        results = {}
        runs = ["cold", "warm"] if args.warm else ["cold"]
        for name in runs:
            wall, cpu, data = _run(work, suite, work / f"{name}.json", work / f"{name}.log")
            _print(f"{name} run", wall, cpu, data)
            results[name] = {"wall": wall, "cpu": cpu, **data}
        if args.json:
            args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
        ok = not args.keep
    finally:
        if ok:  # a failed run keeps its copy and logs for reading
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
