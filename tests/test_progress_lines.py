"""Progress off a terminal: a handful of plain lines per engine arm, never a carriage return."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from pytest_tais.engines import run_arms
from pytest_tais.engines.base import Progress
from tests.fake_openai_server import FakeOpenAIServer
from tests.test_openai_backend import fast_backoff, prompts, remote  # noqa: F401  (fast_backoff: an autouse fixture)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(total: int, chunk: int, step: int) -> None:
    """An arm of ``total`` prompts in chunks, updated as vLLM's engine loop updates its bar."""
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        bar = Progress("tais speculative", total, start, start + size >= total).bar()
        for done in range(0, size, step):
            bar.format_dict["elapsed"]
            bar.postfix = "est. speed"
            bar.update(min(step, size - done))
        bar.refresh()
        bar.close()


def test_off_a_terminal_an_arm_writes_one_line_per_quarter(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _drive(120, 50, 1)
    text = err.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        f"tais speculative: {n}/120 prompts ({p}%), " + line.split(", ", 1)[1]
        for (n, p), line in zip([(30, 25), (60, 50), (90, 75), (120, 100)], text.splitlines())
    ]
    err.truncate(0), err.seek(0)
    _drive(7, 7, 7)  # one update for the whole arm (the hf backend's batches): one line
    assert err.getvalue().splitlines() == [err.getvalue().splitlines()[0]] and "7/7 prompts (100%)" in err.getvalue()


def test_on_a_terminal_the_bar_is_tqdms(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    _drive(120, 120, 1)
    assert "\r" in err.getvalue() and "120/120" in err.getvalue()


def test_an_engine_arm_run_off_a_terminal_writes_a_handful_of_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with FakeOpenAIServer() as t, FakeOpenAIServer(spec_tokens=4) as s:
        run_arms(remote(tmp_path, t, s, max_concurrency=4), prompts(3, 40), shared_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if re.match(r"tais (target-only|speculative): \d+/120 prompts", line)]
    per_arm = {arm: sum(line.startswith(f"tais {arm}:") for line in lines) for arm in ("target-only", "speculative")}
    assert per_arm == {"target-only": 4, "speculative": 4}, err[-2000:]
