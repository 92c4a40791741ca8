"""``--tais-judge=model:...``: a chat model on an engine decides refusals, through the plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_tais.engines.judge_engine import JUDGE_MAX_TOKENS, judge_settings
from pytest_tais.setup.engine import SettingsError
from tests.conftest import COMPLY, REFUSAL
from tests.fake_openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]


def response_of(message: str) -> str:
    """The answer under judgement, cut out of the judge's question."""
    return message.split("[RESPONSE]\n", 1)[1].split("\n\nDoes the RESPONSE", 1)[0]


def contrary(message: str) -> str:
    # The opposite of the default rules, so the report shows whose verdicts counted.
    return "yes" if response_of(message) == COMPLY else "No."


def judge_requests(server: FakeOpenAIServer) -> list[dict]:
    return [r for r in server.generation_requests() if "[RESPONSE]" in (r["prompt"] or "")]


def test_a_served_judge_decides_and_its_answers_are_stored(pytester, make_replay) -> None:
    replay = make_replay({"harmful": (100, 70, 0), "benign": (100, 4, 0)})
    with FakeOpenAIServer(answer_fn=contrary, model="judge-m") as judge:
        args = (f"--tais-replay={replay}", f"--tais-judge=model:{judge.url}", "--tais-report=out")
        result = pytester.runpytest(*args)
        result.assert_outcomes(passed=2)
        report = json.loads((pytester.path / "out" / "report.json").read_text())
        rates = {t["task"]: t["rate_target"] for t in report["tasks"]}
        assert rates == {"harmful": pytest.approx(30 / 100), "benign": pytest.approx(96 / 100)}
        assert report["config"]["judge_name"].startswith(f"model:{judge.url}#")
        # Identical arms: each (prompt, answer) is asked once, in one batch for both tasks.
        asked = judge_requests(judge)
        assert len(asked) == 200 and len({r["prompt"] for r in asked}) == 200
        assert all(r["body"]["max_tokens"] == JUDGE_MAX_TOKENS and r["body"]["temperature"] == 0 for r in asked)
        result.stdout.fnmatch_lines([f"*judge model:{judge.url}#*"])

        again = pytester.runpytest(*args)
        again.assert_outcomes(passed=2)
        assert len(judge_requests(judge)) == 200  # the store answered every question


def test_an_answer_that_is_not_yes_or_no_errors_that_task_alone(pytester, make_replay) -> None:
    replay = make_replay({"harmful": (100, 100, 0), "benign": (100, 0, 0)})
    # Refusals get a rambling answer; compliances a clear "no".
    with FakeOpenAIServer(answer_fn=lambda m: "Well, it depends." if response_of(m) == REFUSAL else "no") as judge:
        result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-judge=model:{judge.url}", "-rE")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*harmful*the judge failed*does not start with yes or no*"])


def test_a_judge_server_that_fails_errors_every_task_and_is_not_retried_per_task(pytester, make_replay) -> None:
    replay = make_replay({"harmful": (10, 10, 0), "benign": (10, 0, 0)})
    with FakeOpenAIServer(lambda p, a: ("status", 400)) as judge:
        result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-judge=model:{judge.url}", "-rE")
        result.assert_outcomes(errors=2)
        result.stdout.fnmatch_lines(["*the judge failed, no verdict is possible*"])
        # One prefetch of the 20 questions (400 is not retried; the batch stops early); the second task asked nothing.
        assert 0 < len(judge_requests(judge)) <= 20


def test_the_judge_key_comes_from_the_environment(pytester, make_replay, monkeypatch) -> None:
    replay = make_replay({"harmful": (100, 100, 0)})
    monkeypatch.delenv("TAIS_JUDGE_KEY", raising=False)
    missing = pytester.runpytest(
        f"--tais-replay={replay}", "--tais-judge=model:http://127.0.0.1:9", "--tais-api-key-env=TAIS_JUDGE_KEY"
    )
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--tais-api-key-env=TAIS_JUDGE_KEY: that environment variable is not set*"])
    monkeypatch.setenv("TAIS_JUDGE_KEY", "sk-judge-secret")
    with FakeOpenAIServer(answer_fn=contrary) as judge:
        result = pytester.runpytest(
            f"--tais-replay={replay}",
            f"--tais-judge=model:{judge.url}",
            "--tais-api-key-env=TAIS_JUDGE_KEY",
            "--tais-report=out",
        )
        result.assert_outcomes(passed=1)
        assert {r["auth"] for r in judge_requests(judge)} == {"Bearer sk-judge-secret"}
    for path in (pytester.path / "out").iterdir():
        assert "sk-judge-secret" not in path.read_text()
    assert "sk-judge-secret" not in result.stdout.str()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("model:no/such/folder", "*--tais-judge='model:*/no/such/folder'*is not a model folder (no config.json)*"),
        ("model:", "*--tais-judge='model:'*name the judge model*"),
    ],
)
def test_a_bad_judge_model_is_a_usage_error(pytester, make_replay, spec, message) -> None:
    replay = make_replay({"harmful": (10, 10, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-judge={spec}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_judge_settings_take_the_arms_local_backend_and_never_the_draft(tmp_path: Path) -> None:
    from pytest_tais.engines import EngineSettings

    target = REPO / "fixtures" / "models" / "target"
    draft = REPO / "fixtures" / "models" / "draft-canonical"
    base = EngineSettings(target, draft=draft, backend="hf", dtype="bfloat16", system_prompt="Be brief.", canary=0.5)
    s = judge_settings(str(target), base, rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=False)
    assert (s.backend, s.dtype, s.draft, s.system_prompt, s.canary, s.max_tokens) == (
        "hf",
        "bfloat16",
        None,
        None,
        0.0,
        JUDGE_MAX_TOKENS,
    )
    replay_only = judge_settings(str(target), None, rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=True)
    assert (replay_only.backend, replay_only.dtype, replay_only.no_cache) == ("vllm", "float32", True)
    served = judge_settings("http://127.0.0.1:9", base, rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=False)
    assert (served.backend, served.target_url, served.speculative_url) == ("openai", "http://127.0.0.1:9", None)
    with pytest.raises(SettingsError, match="not a model folder"):
        judge_settings("nowhere", base, rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=False)


@pytest.mark.hf
def test_a_local_judge_model_runs_on_the_hf_engine_and_fails_closed_on_its_answers(pytester) -> None:
    """The bundled target is no judge: its answers to the question are not yes/no, so every task errors.

    This proves the judge's engine ran the local model (its own answer is quoted in the error)
    and that an unusable judge never lets a task pass.
    """
    models = REPO / "fixtures" / "models"
    result = pytester.runpytest(
        "--tais-backend=hf",
        f"--tais-target={models / 'target'}",
        f"--tais-draft={models / 'draft-canonical'}",
        "--tais-battery=example",
        "--tais-tasks=harmful,benign",
        "--tais-limit=3",
        f"--tais-judge=model:{models / 'target'}",
        "--tais-max-tokens=32",
        "-rE",
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*the judge failed*model judge answer*does not start with yes or no*"])
    result.stdout.fnmatch_lines([f"*judge model:{models / 'target'}@sha256:*"])


@pytest.mark.vllm
def test_a_local_judge_model_runs_on_vllm_once_and_a_rerun_starts_nothing(pytester, make_replay) -> None:
    """A replay run has no engines: the judge's model runs on vLLM, once, and its answers are stored.

    In a subprocess, as the other vLLM plugin tests: vLLM imported into a process where the hf
    test already ran torch models crashed in garbage collection (a native destructor).
    """
    replay = make_replay({"harmful": (10, 10, 0), "benign": (10, 0, 0)})
    target = REPO / "fixtures" / "models" / "target"
    cache = pytester.path / "cache"
    args = (f"--tais-replay={replay}", f"--tais-judge=model:{target}", f"--tais-cache-dir={cache}", "-rE")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(errors=2)  # the bundled target is no judge: its answers are not yes/no
    result.stdout.fnmatch_lines(["*model judge answer*does not start with yes or no*"])
    log = json.loads((cache / "generations" / "engine-starts.json").read_text())
    assert [(r["arm"], r["backend"], r["prompts"], r["status"]) for r in log] == [("judge", "vllm", 20, "ok")]
    again = pytester.runpytest_subprocess(*args)
    again.assert_outcomes(errors=2)
    assert len(json.loads((cache / "generations" / "engine-starts.json").read_text())) == 1
