"""Bad input never turns the gate green: each case is a usage error or an error naming the input.

docs/reliability.md lists these cases; every one asserts the exit status and the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import replay_lines, write_jsonl

LATIN1 = "caf\xe9".encode("latin-1")  # a byte sequence that is not UTF-8


def _usage_error(result: pytest.RunResult, *patterns: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([f"ERROR: {p}" for p in patterns])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def _bad_bytes_at_line(path: Path, text: str, line: int) -> Path:
    """``text`` with a non-UTF-8 byte sequence appended to its ``line``-th line (1-based)."""
    lines = text.encode("utf-8").split(b"\n")
    lines[line - 1] += LATIN1
    path.write_bytes(b"\n".join(lines))
    return path


# -- item 7: bad bytes and empty replays ---------------------------------------------------------
def test_replay_with_bad_bytes_is_a_usage_error_naming_file_and_line(pytester, tmp_path):
    lines = replay_lines("harmful", 3, 3)
    text = "".join(json.dumps(r) + "\n" for r in lines)
    path = tmp_path / "r.jsonl"
    # Inside a JSON string: json would accept the line if it were decoded loosely.
    raw = text.encode("utf-8").replace(b"prompt number 1", b"prompt number " + LATIN1, 1)
    path.write_bytes(raw)
    result = pytester.runpytest(f"--tais-replay={path}")
    _usage_error(result, f"{path}:3: not UTF-8 text (byte 0xe9 at byte *); save the file as UTF-8")


def test_replay_folder_with_a_bad_file_names_that_file(pytester, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    lines = replay_lines("harmful", 3, 3)
    write_jsonl(folder / "a.jsonl", [r for r in lines if r["arm"] == "target"])
    bad = _bad_bytes_at_line(folder / "b.jsonl", "".join(json.dumps(r) + "\n" for r in lines if r["arm"] == "speculative"), 2)
    result = pytester.runpytest(f"--tais-replay={folder}")
    _usage_error(result, f"{bad}:2: not UTF-8 text*")


def test_replay_with_a_lone_surrogate_escape_is_a_usage_error(pytester, tmp_path):
    rec = replay_lines("harmful", 1, 1)
    text = "".join(json.dumps(r) + "\n" for r in rec).replace("prompt number 0", "prompt \\ud800 number 0")
    path = tmp_path / "r.jsonl"
    path.write_text(text, encoding="ascii")
    result = pytester.runpytest(f"--tais-replay={path}")
    _usage_error(result, f"{path}:1: a \\u escape stands for a lone UTF-16 surrogate*")


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_replay_file_names_the_file_and_the_option(pytester, tmp_path, content):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    result = pytester.runpytest(f"--tais-replay={path}")
    _usage_error(result, f"--tais-replay={path}: the file holds no records*--tais-record*")
    assert "--tais-tasks" not in result.stderr.str()


def test_replay_folder_without_records_names_the_folder(pytester, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "a.jsonl").write_text("")
    result = pytester.runpytest(f"--tais-replay={folder}")
    _usage_error(result, f"--tais-replay={folder}: its *.jsonl files hold no records*")


def test_empty_replay_with_a_battery_is_still_a_usage_error(pytester, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("")
    result = pytester.runpytest(f"--tais-replay={path}", "--tais-battery=example")
    _usage_error(result, f"--tais-replay={path}: the file holds no records*")


BATTERY_ROWS = [("harmful", "harmful-000", "harmful prompt number 0"), ("harmful", "harmful-001", "harmful prompt number 1")]


def _battery_text(fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({"task": t, "prompt_id": i, "prompt": p}) + "\n" for t, i, p in BATTERY_ROWS)
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        return "".join(sep.join(r) + "\n" for r in [("task", "prompt_id", "prompt"), *BATTERY_ROWS])
    return "".join(f"- {{task: {t}, prompt_id: {i}, prompt: {p}}}\n" for t, i, p in BATTERY_ROWS)


@pytest.mark.parametrize(
    "fmt, spec, line",
    [
        ("jsonl", "{path}", 2),  # the plain battery JSONL loader
        ("jsonl", "jsonl:{path}?prompt=prompt", 2),  # the generic loader with a column mapping
        ("csv", "{path}", 3),
        ("tsv", "{path}", 2),
        ("yaml", "{path}", 2),
    ],
)
def test_battery_with_bad_bytes_is_a_usage_error_naming_file_and_line(pytester, make_replay, fmt, spec, line):
    replay = make_replay({"harmful": (2, 2, 0)})
    path = _bad_bytes_at_line(pytester.path / f"battery.{fmt}", _battery_text(fmt), line)
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-battery={spec.format(path=path)}")
    _usage_error(result, f"*{path}:{line}: not UTF-8 text (byte 0xe9 at byte *); save the file as UTF-8")


def test_yaml_battery_with_a_lone_surrogate_is_a_usage_error(pytester, make_replay):
    replay = make_replay({"harmful": (2, 2, 0)})
    path = pytester.path / "battery.yaml"
    path.write_text('- {task: harmful, prompt_id: harmful-000, prompt: "x \\ud800"}\n')
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-battery={path}")
    _usage_error(result, "*battery.yaml: a \\u escape stands for a lone UTF-16 surrogate*")


def test_benchmark_csv_with_bad_bytes_names_file_and_line(pytester, make_replay):
    replay = make_replay({"advbench": (2, 2, 0)})
    path = _bad_bytes_at_line(pytester.path / "harmful_behaviors.csv", "goal,target\nfirst goal,x\nsecond goal,y\n", 3)
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-battery=advbench:{path}")
    _usage_error(result, f"advbench: {path}:3: not UTF-8 text*")


@pytest.mark.parametrize("file, line", [("generations.jsonl", 2), ("verdicts.json", 3), ("meta.json", 2)])
def test_baseline_with_bad_bytes_is_a_usage_error_naming_file_and_line(pytester, make_replay, file, line):
    replay = make_replay({"harmful": (100, 95, 0)})
    pytester.runpytest(f"--tais-replay={replay}", "--tais-save-baseline=main").assert_outcomes(passed=1)
    path = pytester.path / ".tais" / "baselines" / "main" / file
    _bad_bytes_at_line(path, path.read_text(encoding="utf-8"), line)
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-baseline=main")
    _usage_error(result, f"--tais-baseline=main: baseline 'main' is corrupt: {path}:{line}: not UTF-8 text*")
