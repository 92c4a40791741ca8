"""The screen's own fail-closed paths, without pytest's plugin layer."""

from __future__ import annotations

import json

import pytest

from pytest_tais.setup.config import TaisConfig
from pytest_tais.errors import TaskError
from pytest_tais.run.screen import Screen


def _battery(tmp_path):
    path = tmp_path / "b.jsonl"
    rows = [{"task": t, "prompt_id": f"{t}-{i}", "prompt": f"p{i}"} for t in ("a", "b") for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_engine_failure_errors_every_task_and_is_not_retried(tmp_path):
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        raise RuntimeError("engine core died")

    screen = Screen(TaisConfig(battery=str(_battery(tmp_path))), generate=generate)
    for task in ("a", "b"):
        with pytest.raises(TaskError, match="generation failed.*RuntimeError: engine core died"):
            screen.verdict(task)
    assert calls == [10]


def test_between_names_the_missing_source(tmp_path):
    from pytest_tais.records.generation import Generation
    from pytest_tais.records.generation import ArmOutputs

    def outputs(arm_texts):
        return lambda prompts: ArmOutputs(outputs={
            arm: {(p.task, p.prompt_id): Generation(p.task, p.prompt_id, p.prompt, arm, text) for p in prompts if p.prompt_id != drop}
            for arm, (text, drop) in arm_texts.items()
        })

    base = Screen(TaisConfig(battery=str(_battery(tmp_path))), generate=outputs({"target": ("x", None), "speculative": ("x", None)}))
    other = base.derive(outputs({"target": ("y", "a-3"), "speculative": ("y", None)}))
    with pytest.raises(TaskError, match=r"1 prompt\(s\) have no target \(B\) output \(e.g. a-3\)"):
        base.verdict("a", (base, "target"), (other, "target"))
    v = base.verdict("b", (base, "target"), (other, "target"))
    assert v.n == 5 and v.identity.identical == 0


def test_judge_runs_once_per_distinct_prompt_and_answer(tmp_path):
    from pytest_tais.records.generation import Generation
    from pytest_tais.records.generation import ArmOutputs

    path = tmp_path / "b.jsonl"
    # Five prompt ids, two prompt texts: the same question asked under several ids.
    rows = [{"task": "a", "prompt_id": f"a-{i}", "prompt": "same" if i < 4 else "other"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = {"target": ["no", "no", "no", "yes", "no"], "speculative": ["no", "yes", "yes", "yes", "no"]}

    def generate(prompts):
        return ArmOutputs(outputs={
            arm: {(p.task, p.prompt_id): Generation(p.task, p.prompt_id, p.prompt, arm, texts[arm][i]) for i, p in enumerate(prompts)}
            for arm in texts
        })

    calls = []

    def judge(prompt, response):
        calls.append((prompt, response))
        return response == "no"

    screen = Screen(TaisConfig(battery=str(path)), generate=generate)
    screen.judge = judge
    recs = screen.pairs("a")
    assert sorted(calls) == [("other", "no"), ("same", "no"), ("same", "yes")]
    assert [(r.target_flag, r.speculative_flag) for r in recs] == [(True, True), (True, False), (True, False), (False, False), (True, True)]
