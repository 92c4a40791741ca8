"""Fail closed, round 2 (issue 29): empty values, relative paths, symlinks, repeated flags, tests
that never ask for a verdict, and the inputs that used to explain themselves badly.

docs/reliability.md lists each case with what the user now sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import replay_lines, write_jsonl

N = 120  # one task of 120 prompts: enough pairs for the +/-3pp TOST to pass


def _good(path: Path, task: str = "t") -> Path:
    return write_jsonl(path, replay_lines(task, N, N))


def _leak(path: Path, task: str = "t") -> Path:
    return write_jsonl(path, replay_lines(task, N, N, flips=12))


def _comply(path: Path, task: str = "t") -> Path:
    return write_jsonl(path, replay_lines(task, N, 0))


def _usage_error(result: pytest.RunResult, *patterns: str) -> None:
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    result.stderr.fnmatch_lines([f"ERROR: {p}" for p in patterns])
    assert "INTERNALERROR" not in out


# -- 1. empty values ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_an_empty_baseline_name_is_a_usage_error_not_a_dropped_comparison(pytester, value):
    _good(pytester.path / "good.jsonl")
    _comply(pytester.path / "comply.jsonl")
    assert pytester.runpytest("--tais-replay=good.jsonl", "--tais-save-baseline=main").ret == 0
    assert pytester.runpytest("--tais-replay=comply.jsonl", "--tais-baseline=main").ret == pytest.ExitCode.TESTS_FAILED
    result = pytester.runpytest("--tais-replay=comply.jsonl", f"--tais-baseline={value}")
    _usage_error(result, "--tais-baseline is given an empty value* (an unset environment variable?); give it a value, "
                         "or leave --tais-baseline out to use the ini file's tais_baseline or the default")


def test_an_empty_save_baseline_name_is_a_usage_error(pytester):
    _good(pytester.path / "good.jsonl")
    result = pytester.runpytest("--tais-replay=good.jsonl", "--tais-save-baseline=")
    _usage_error(result, "--tais-save-baseline is given an empty value*")
    assert not (pytester.path / ".tais").exists()


def test_an_empty_margin_does_not_replace_the_ini_margin_by_the_default(pytester):
    _good(pytester.path / "good.jsonl")
    pytester.makeini("[pytest]\ntais_margin = 0.01\n")
    assert pytester.runpytest("--tais-replay=good.jsonl").ret == pytest.ExitCode.TESTS_FAILED  # 120 pairs: +/-1pp fails
    _usage_error(pytester.runpytest("--tais-replay=good.jsonl", "--tais-margin="), "--tais-margin is given an empty value*")


# -- 2. relative paths ----------------------------------------------------------------------------
def test_a_relative_replay_path_resolves_from_the_working_folder(pytester, monkeypatch):
    repo = pytester.path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\n")
    _good(repo / "runs.jsonl")
    leak = _leak(repo / "sub" / "runs.jsonl")
    monkeypatch.chdir(repo / "sub")
    result = pytester.runpytest("--tais-replay=./runs.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"tais: paths --tais-replay={leak}"])


def test_a_relative_battery_path_resolves_from_the_working_folder(pytester, monkeypatch):
    repo = pytester.path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\n")
    lines = replay_lines("t", N, N) + replay_lines("u", N, N, flips=12)
    replay = write_jsonl(repo / "both.jsonl", lines)
    write_jsonl(repo / "tasks.jsonl", [{"task": "t", "prompt_id": r["prompt_id"], "prompt": r["prompt"]}
                                       for r in lines if r["task"] == "t" and r["arm"] == "target"])
    write_jsonl(repo / "sub" / "tasks.jsonl", [{"task": r["task"], "prompt_id": r["prompt_id"], "prompt": r["prompt"]}
                                               for r in lines if r["arm"] == "target"])
    monkeypatch.chdir(repo / "sub")
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=tasks.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"tais: 2 task(s) from {repo / 'sub' / 'tasks.jsonl'}; *"])


def test_a_relative_ini_path_resolves_from_the_ini_files_folder(pytester, monkeypatch):
    repo = pytester.path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\ntais_replay = runs/leak.jsonl\n")
    (repo / "runs").mkdir()
    leak = _leak(repo / "runs" / "leak.jsonl")
    monkeypatch.chdir(repo / "sub")
    result = pytester.runpytest("--rootdir", str(repo), "-c", str(repo / "pytest.ini"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"tais: paths --tais-replay={leak}"])


# -- 3. symlinks in replay folders ----------------------------------------------------------------
def test_a_replay_folder_follows_symlinked_folders(pytester, tmp_path):
    # Outside pytester.path: pytest's own collection would walk the loop below.
    (tmp_path / "runs").mkdir()
    (tmp_path / "other").mkdir()
    _good(tmp_path / "runs" / "t.jsonl")
    _leak(tmp_path / "other" / "u.jsonl", task="u")
    os.symlink("../other", tmp_path / "runs" / "gpu2")
    os.symlink("..", tmp_path / "other" / "up")  # a loop: runs/gpu2/up/runs/gpu2/...
    result = pytester.runpytest(f"--tais-replay={tmp_path / 'runs'}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["u *FAIL*", "tais: 1/2 task(s) equivalent"])


def test_a_dangling_symlink_in_a_replay_folder_is_a_usage_error(pytester, tmp_path):
    (tmp_path / "runs").mkdir()
    _good(tmp_path / "runs" / "t.jsonl")
    os.symlink("../gone.jsonl", tmp_path / "runs" / "u.jsonl")
    _usage_error(pytester.runpytest(f"--tais-replay={tmp_path / 'runs'}"),
                 f"--tais-replay: {tmp_path / 'runs' / 'u.jsonl'} is a dangling symlink (to ../gone.jsonl); fix or remove the link")


# -- 4. repeated flags ----------------------------------------------------------------------------
def test_a_repeated_replay_flag_is_a_usage_error(pytester):
    _leak(pytester.path / "leak.jsonl")
    _good(pytester.path / "good.jsonl")
    _usage_error(pytester.runpytest("--tais-replay=leak.jsonl", "--tais-replay=good.jsonl"),
                 "--tais-replay is given 2 times ('leak.jsonl' and 'good.jsonl'); give it once")
    _usage_error(pytester.runpytest("--tais-replay", "leak.jsonl", "--tais-replay=good.jsonl"), "--tais-replay is given 2 times*")


def test_a_repeated_list_option_names_the_comma_list(pytester):
    _good(pytester.path / "good.jsonl")
    _usage_error(pytester.runpytest("--tais-replay=good.jsonl", "--tais-tasks=t", "--tais-tasks=u"),
                 "--tais-tasks is given 2 times ('t' and 'u'); give it once; for several, give one comma-separated value (--tais-tasks=t,u)")


def test_the_command_line_still_overrides_addopts(pytester):
    _leak(pytester.path / "leak.jsonl")
    _good(pytester.path / "good.jsonl")
    pytester.makeini("[pytest]\naddopts = --tais-replay=good.jsonl\n")
    assert pytester.runpytest("--tais-replay=leak.jsonl").ret == pytest.ExitCode.TESTS_FAILED


# -- 5. a test that never asks for the verdict ----------------------------------------------------
def test_a_tais_task_test_that_never_asks_for_a_verdict_fails(pytester):
    _leak(pytester.path / "leak.jsonl")
    pytester.makepyfile(test_gate="def test_safety(tais_task):\n    pass\n")
    result = pytester.runpytest("--tais-replay=leak.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*tais task 't' was screened but test_gate.py::test_safety[[]t[]] never asked for its verdict: "
                                 "call tais_equivalent(tais_task) (or tais_task.verdict()) in the test*",
                                 "*1 failed*"])
    assert "no task was screened" not in result.stdout.str()


def test_a_tais_task_test_that_asks_for_the_verdict_still_passes(pytester):
    _good(pytester.path / "good.jsonl")
    pytester.makepyfile(test_gate="def test_safety(tais_task):\n    assert tais_task.verdict().status == 'pass'\n")
    assert pytester.runpytest("--tais-replay=good.jsonl").ret == 0


# -- unclear inputs: each names the input and the fix ---------------------------------------------
def _as_user_without_read_permission(cwd: Path, *args: str):
    """pytest in a child that obeys permission bits (root: without CAP_DAC_OVERRIDE/READ_SEARCH)."""
    import subprocess
    import sys

    from .test_reliability import _drop_file_permission_override

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    preexec = _drop_file_permission_override if os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env, preexec_fn=preexec)


def test_an_unreadable_replay_file_is_a_usage_error_naming_it(tmp_path):
    path = _good(tmp_path / "good.jsonl")
    path.chmod(0)
    try:
        proc = _as_user_without_read_permission(tmp_path, f"--tais-replay={path}")
    finally:
        path.chmod(0o644)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ERROR: {path}: cannot be read (Permission denied); make it readable (chmod)" in proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_an_unreadable_folder_in_a_replay_folder_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "runs" / "gpu2").mkdir(parents=True)
    _good(tmp_path / "runs" / "t.jsonl")
    _leak(tmp_path / "runs" / "gpu2" / "u.jsonl", task="u")
    (tmp_path / "runs" / "gpu2").chmod(0)
    try:
        proc = _as_user_without_read_permission(tmp_path, f"--tais-replay={tmp_path / 'runs'}")
    finally:
        (tmp_path / "runs" / "gpu2").chmod(0o755)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ERROR: --tais-replay: {tmp_path / 'runs' / 'gpu2'} cannot be read (Permission denied)" in proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_an_existing_file_as_report_folder_is_refused_before_the_run(pytester):
    _good(pytester.path / "good.jsonl")
    (pytester.path / "report.txt").write_text("keep me")
    _usage_error(pytester.runpytest("--tais-replay=good.jsonl", "--tais-report=report.txt"),
                 f"--tais-report={pytester.path / 'report.txt'} is a file; it names the folder that report.json, *: give a folder*")
    assert (pytester.path / "report.txt").read_text() == "keep me"


MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_a_folder_as_record_file_is_refused_before_generating(pytester):
    (pytester.path / "out").mkdir()
    result = pytester.runpytest(f"--tais-target={MODELS / 'target'}", f"--tais-draft={MODELS / 'draft-canonical'}",
                                "--tais-backend=hf", "--tais-battery=example", "--tais-limit=1", "--tais-record=out")
    _usage_error(result, f"--tais-record={pytester.path / 'out'}: is a folder; give the replay file to write, e.g. "
                         f"--tais-record={pytester.path / 'out' / 'outputs.jsonl'}")
    assert "engine" not in result.stdout.str().lower() or "passed" not in result.stdout.str()


def test_an_ordinary_draft_with_eagle3_blames_the_draft_before_any_engine_starts(pytester):
    result = pytester.runpytest(f"--tais-target={MODELS / 'target'}", f"--tais-draft={MODELS / 'draft-canonical'}",
                                "--tais-spec-method=eagle3", "--tais-battery=example", "--tais-limit=1")
    _usage_error(result, f"--tais-draft: {MODELS / 'draft-canonical'} is an ordinary model (LlamaForCausalLM), not an EAGLE-3 "
                         "head; --tais-spec-method=eagle3 needs a head trained for it *; screen an ordinary draft with "
                         "--tais-spec-method=draft_model")


def test_an_eagle3_head_is_still_accepted(pytester):
    from tests.engine_models import engine_settings_from_config

    config = pytester.parseconfig(f"--tais-target={MODELS / 'target'}", f"--tais-draft={MODELS / 'eagle3'}", "--tais-spec-method=eagle3")
    assert engine_settings_from_config(config).spec_method == "eagle3"


def test_ids_that_differ_in_unicode_normalisation_are_shown_escaped(pytester):
    lines = replay_lines("t", 3, 3)
    for r in lines:
        r["prompt_id"] = r["prompt_id"] + ("caf\u00e9" if r["arm"] == "target" else "cafe\u0301")
    write_jsonl(pytester.path / "r.jsonl", lines)
    result = pytester.runpytest("--tais-replay=r.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*some ids differ only in Unicode normalisation ('t-000cafe\\u0301' vs 't-000caf\\xe9'; *): "
                                 "write every id in one form (NFC) in both arms*"])


def test_a_sample_index_out_of_range_is_named(pytester):
    lines = []
    for r in replay_lines("t", 3, 3):
        for i in range(2):
            lines.append(dict(r, sample=i, seed=i))
    for r in lines:
        if r["arm"] == "speculative" and r["prompt_id"] == "t-001" and r["sample"] == 1:
            r["sample"] = 2
    write_jsonl(pytester.path / "r.jsonl", lines)
    result = pytester.runpytest("--tais-replay=r.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*speculative t-001: 2 of 2 (missing samples [[]1[]], sample indexes [[]2[]] outside 0..1)*"
                                 "(K = 2, the most any prompt has; indexes count from 0)*"])


# -- the hf backend stores its answers call by call -----------------------------------------------
@pytest.mark.hf
def test_an_interrupted_hf_run_keeps_all_but_the_last_few_answers(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from pytest_tais.engines import EngineSettings, run_arms
    from pytest_tais.engines import hf
    from pytest_tais.records.generation import SPECULATIVE

    from .test_engines import battery
    from tests.engine_models import build_tiny_models

    target, draft = build_tiny_models(tmp_path / "models")
    settings = EngineSettings(target=target, draft=draft, backend="hf", cache_dir=tmp_path / "c", max_tokens=8)
    prompts = battery()[:20]
    calls: list[tuple[str, int]] = []
    generate = hf.HFBackend.generate

    def interrupted(self, texts, **kw):
        if self.spec.arm == SPECULATIVE and sum(a == SPECULATIVE for a, _ in calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the fourth speculative call
        calls.append((self.spec.arm, len(texts)))
        return generate(self, texts, **kw)

    monkeypatch.setattr(hf.HFBackend, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    assert [n for a, n in calls if a == SPECULATIVE] == [hf.SPECULATIVE_PER_CALL] * 3
    assert [n for a, n in calls if a != SPECULATIVE] == [hf.GREEDY_BATCH, 20 - hf.GREEDY_BATCH]
    monkeypatch.setattr(hf.HFBackend, "generate", generate)
    again = run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    # Only what the interrupted call had in hand is generated again.
    assert again.metrics[SPECULATIVE]["generated"] == 20 - 3 * hf.SPECULATIVE_PER_CALL
    assert again.metrics["target"]["generated"] == 0
