"""The gate never goes green by accident: inputs that used to pass or crash now error, through pytester."""

from __future__ import annotations

import json

import pytest

from pytest_tais.battery import load_battery

from .conftest import RULES, replay_lines, write_jsonl

USER_TEST = """
def test_safety(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


def _battery_replay(tmp_path, task: str, speculative_text=None, prompt_text=None, metric=True):
    """A replay of the example battery's task, both arms answering as ``speculative_text`` says."""
    [t] = [t for t in load_battery("example", tmp_path) if t.name == task]
    lines = []
    for p in t.prompts:
        answer = p.expected if p.expected is not None else "I'm sorry, but I can't help with that."
        for arm in ("target", "speculative"):
            text = speculative_text(p) if arm == "speculative" and speculative_text else answer
            line = {"task": task, "prompt_id": p.prompt_id, "prompt": prompt_text(p, arm) if prompt_text else p.text,
                    "arm": arm, "text": text}
            if metric:
                line.update(metric=t.metric, **({"expected": p.expected} if p.expected is not None else {}))
            lines.append(line)
    return write_jsonl(tmp_path / "r.jsonl", lines)


# -- pairs must be pairs ----------------------------------------------------------------------
def test_arms_answering_other_prompt_texts_under_one_id_error(pytester, tmp_path):
    lines = replay_lines("harmful", 100, 95)
    for line in lines:
        if line["arm"] == "speculative" and line["prompt_id"] in ("harmful-003", "harmful-050"):
            line["prompt"] = "a different request"
    replay = write_jsonl(tmp_path / "r.jsonl", lines)
    pytester.makepyfile(test_gate=USER_TEST)
    result = pytester.runpytest(f"--tais-replay={replay}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*2 speculative output(s) answer another prompt text than the battery's under the same id (harmful-003, harmful-050)*"])


def test_a_replay_of_another_battery_errors(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "harmful", prompt_text=lambda p, arm: "something else entirely")
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=example", "--tais-tasks=harmful")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*120 target output(s) answer another prompt text*; 120 speculative output(s) answer another prompt text*"])


def test_a_replay_of_the_same_battery_passes(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "harmful")
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=example", "--tais-tasks=harmful")
    result.assert_outcomes(passed=1)


# -- replay keeps the task's metric -----------------------------------------------------------------
def test_a_capability_task_replayed_from_its_record_is_scored_as_capability(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "capability", speculative_text=lambda p: "I do not know.")
    result = pytester.runpytest(f"--tais-replay={replay}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*TAIS task 'capability': FAIL*", "*speculative  accuracy: 0.0%*"])


def test_records_that_do_not_say_their_metric_are_refused(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "capability", metric=False)
    result = pytester.runpytest(f"--tais-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*task 'capability' do not say how it is scored (no \"metric\")*--tais-battery*"])


def test_a_record_whose_metric_disagrees_with_the_battery_is_refused(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "harmful")
    text = replay.read_text().replace('"metric": "refusal"', '"metric": "accuracy", "expected": "4"')
    replay.write_text(text)
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=example", "--tais-tasks=harmful")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*task 'harmful' is a refusal task in --tais-battery, but its record*says 'accuracy'*"])


def test_an_accuracy_record_without_its_answer_is_refused(pytester, tmp_path):
    replay = write_jsonl(tmp_path / "r.jsonl", [{"task": "c", "prompt_id": "1", "prompt": "2+2?", "arm": "target",
                                                  "text": "4", "metric": "accuracy"}])
    result = pytester.runpytest(f"--tais-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*r.jsonl:1: an accuracy record needs its 'expected' answer*"])


# -- options that cannot apply are refused ------------------------------------------------------
@pytest.mark.parametrize("option", [
    "--tais-canary=0.1", "--tais-record=out.jsonl", "--tais-draft=fixtures/draft", "--tais-temperature=0",
    "--tais-hf-acceptance=synthetic", "--tais-dtype=bfloat16", "--tais-backend=hf", "--tais-max-tokens=8",
    "--tais-num-speculative-tokens=2", "--tais-engine-kwargs={}", "--tais-trust-remote-code", "--tais-seed=1",
])
def test_engine_options_under_replay_are_usage_errors(pytester, make_replay, option):
    replay = make_replay({"harmful": (100, 95, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option.split('=')[0]}* cannot apply with --tais-replay*drop it*"])


def test_engine_options_from_the_ini_file_under_replay_are_usage_errors(pytester, make_replay):
    replay = make_replay({"harmful": (100, 95, 0)})
    pytester.makeini("[pytest]\ntais_canary = 0.1\n")
    result = pytester.runpytest(f"--tais-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tais-canary cannot apply with --tais-replay*"])


def test_the_model_judges_store_options_apply_under_replay(pytester, make_replay):
    replay = make_replay({"harmful": (100, 95, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-cache-dir=c")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # without a model judge there is no store to place
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-judge=model:http://127.0.0.1:9", "--tais-cache-dir=c",
                                "--collect-only")
    assert result.ret == pytest.ExitCode.OK


# -- names are data ---------------------------------------------------------------------------
def test_task_names_with_separators_and_control_characters(pytester, tmp_path):
    lines = replay_lines("a|b|c", 100, 95) + replay_lines("evil\x1b[31mred\x07\nname", 100, 95, prefix="e")
    replay = write_jsonl(tmp_path / "r.jsonl", lines)
    pytester.makepyfile(test_gate=USER_TEST)
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "-v", "--junitxml=j.xml")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "\x1b[31m" not in out and "\x07" not in out
    assert "evil\\x1b[31mred\\x07\\nname" in out  # escaped in the terminal table
    result.stdout.fnmatch_lines(["a|b|c *100*PASS*"])
    assert "tais.task" in (pytester.path / "j.xml").read_text()


def test_collect_only_counts_the_plugins_own_items(pytester, make_replay):
    replay = make_replay({"harmful": (100, 95, 0), "benign": (100, 2, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["tais::harmful", "tais::benign", "*2 tests collected*"])
    assert "no tests collected" not in result.stdout.str()


def test_json_row_of_a_replay_carries_metric_and_expected(tmp_path):
    from pytest_tais.records import Generation

    g = Generation("c", "1", "2+2?", "target", "4", metric="accuracy", expected="4")
    assert Generation.from_json(json.loads(json.dumps(g.to_json()))) == g
