"""How small a leak does the gate catch? A canary-rate sweep on the example battery.

Generates once, with the bundled models: the target-only arm, the speculative arm (adversarial
draft, lossless verification) and the adversarial draft alone. Then, for each canary rate and
many random draws, replaces that share of each refusal task's speculative answers with the
draft's own answers, screens the task, and counts how often the gate fails it (detection).
At rate 0 the "detection" rate is the false-failure rate.

Each cell is given three times: the TOST alone (the seed's rule), the directional leak test alone
(one-sided exact McNemar, one task: no Holm family) and the gate as shipped (``decide``: TOST, |h|
and the leak test).

Run: ``python benchmarks/canary_sensitivity.py [--draws 200] [--backend vllm|hf]``
(the README's table comes from the default run), or
``python benchmarks/canary_sensitivity.py --lane-labels tests/data/lane_labels.jsonl`` for the Qwen pair's
stored, hand-labelled answers (target, speculative and the draft alone; no engine, no judge).
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RATES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.10)
CHECKS = ("tost", "leak", "gate")


def _failed(verdict) -> dict[str, bool]:
    """Which checks fail the task: the TOST alone, the leak test alone, the gate as shipped."""
    return {"tost": not verdict.tost.equivalent, "leak": bool(verdict.leak.leak), "gate": not verdict.passed}


def generate(backend: str, cache: Path):
    from pytest_tais.battery.example import example_tasks
    from pytest_tais.engines import EngineSettings, run_arms

    tasks = [t for t in example_tasks() if t.metric == "refusal"]
    prompts = [p for t in tasks for p in t.prompts]
    models = ROOT / "fixtures" / "models"
    base = dict(
        target=models / "target",
        draft=models / "draft-adversarial",
        backend=backend,
        max_tokens=48,
        cache_dir=cache,
        dtype="float32",
    )
    metrics = {t.name: t.metric for t in tasks}
    clean = run_arms(EngineSettings(**base), prompts, shared_dir=cache, task_metrics=metrics)
    leaked = run_arms(EngineSettings(**base, canary=1.0), prompts, shared_dir=cache, task_metrics=metrics)
    return tasks, clean.outputs, leaked.outputs["speculative"]


def sweep(tasks, arms, draft, *, rates=RATES, draws: int = 200, seed: int = 0, judge=None) -> list[dict]:
    """Per task: how often the gate fails it when each share of its speculative answers is replaced
    by the draft's own (``draft``: key -> the draft alone's output), over ``draws`` random draws.

    Returns one row per task: ``task``, ``n``, ``draft_refusal`` (the draft alone's refusal rate),
    ``target_refusal`` and ``detection`` (rate -> share of draws failed).
    """
    from pytest_tais.pairs import pairing
    from pytest_tais.pairs.judges import default_judge
    from pytest_tais.verdict import decide

    judge = functools.lru_cache(maxsize=None)(judge or default_judge)  # score each (prompt, answer) once
    score_all = pairing.scorer(judge)
    rng = random.Random(seed)
    rows = []
    for task in tasks:
        keys = [(task.name, p.prompt_id) for p in task.prompts]
        n = len(keys)
        texts = {(task.name, p.prompt_id): p.text for p in task.prompts}
        detection = {c: {} for c in CHECKS}
        for rate in rates:
            caught = dict.fromkeys(CHECKS, 0)
            for _ in range(draws):
                chosen = set(rng.sample(keys, round(rate * n)))
                spec = {k: draft[k] if k in chosen else arms["speculative"][k] for k in keys}
                pairs = pairing.judge_pairs(task, pairing.match(task, arms["target"], spec), score_all)
                for c, failed in _failed(decide(task.name, pairs)).items():
                    caught[c] += failed
            for c in CHECKS:
                detection[c][rate] = caught[c] / draws
        rows.append(
            {
                "task": task.name,
                "n": n,
                "detection": detection,
                "draft_refusal": sum(judge(texts[k], draft[k].text) for k in keys) / n,
                "target_refusal": sum(judge(texts[k], arms["target"][k].text) for k in keys) / n,
            }
        )
    return rows


def sweep_labels(path: Path, *, rates=RATES, draws: int = 200, seed: int = 0) -> list[dict]:
    """The sweep on stored, hand-labelled answers (``tests/data/lane_labels.jsonl``: per task and prompt
    the target's, the speculative arm's and the draft alone's answer with a refusal label)."""
    import json

    from pytest_tais.verdict import PairRecord, decide

    rec: dict[str, dict[str, dict[str, tuple[str, bool]]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        rec.setdefault(d["task"], {}).setdefault(d["prompt_id"], {})[d["arm"]] = (d["response"], bool(d["refusal"]))
    rng = random.Random(seed)
    rows = []
    for task, prompts in rec.items():
        ids = sorted(i for i, arms in prompts.items() if {"target", "speculative", "draft"} <= set(arms))
        n = len(ids)
        detection = {c: {} for c in CHECKS}
        for rate in rates:
            caught = dict.fromkeys(CHECKS, 0)
            for _ in range(draws):
                chosen = set(rng.sample(ids, round(rate * n)))
                pairs = []
                for i in ids:
                    (ta, fa), (tb, fb) = prompts[i]["target"], prompts[i]["draft" if i in chosen else "speculative"]
                    pairs.append(PairRecord(i, ta, tb, fa, fb))
                for c, failed in _failed(decide(task, pairs)).items():
                    caught[c] += failed
            for c in CHECKS:
                detection[c][rate] = caught[c] / draws
        rows.append(
            {
                "task": task,
                "n": n,
                "detection": detection,
                "draft_refusal": sum(prompts[i]["draft"][1] for i in ids) / n,
                "target_refusal": sum(prompts[i]["target"][1] for i in ids) / n,
            }
        )
    return rows


def sweep_table(rows: list[dict], rates=RATES) -> str:
    lines = [
        "| task | n | target refuses | draft alone refuses | check | "
        + " | ".join(f"{100 * r:g}%" for r in rates)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(rates),
    ]
    names = {"tost": "TOST alone", "leak": "leak test alone", "gate": "gate as shipped"}
    for row in rows:
        for c in CHECKS:
            lines.append(
                f"| {row['task']} | {row['n']} | {100 * row['target_refusal']:.0f}% | {100 * row['draft_refusal']:.0f}% | "
                f"{names[c]} | " + " | ".join(f"{row['detection'][c][r]:.2f}" for r in rates) + " |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--cache-dir", type=Path, default=None, help="generation store (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lane-labels", type=Path, default=None, help="sweep stored hand-labelled answers instead (no engine)"
    )
    args = ap.parse_args()
    if args.lane_labels is not None:
        t0 = time.perf_counter()
        print(f"{args.lane_labels}: stored answers with hand labels; {args.draws} draws per cell\n")
        print(sweep_table(sweep_labels(args.lane_labels, draws=args.draws, seed=args.seed)))
        print(f"\n({time.perf_counter() - t0:.0f} s in all)")
        return 0

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp)
        tasks, arms, draft = generate(args.backend, cache)
    gen_s = time.perf_counter() - t0
    print(f"example battery, {args.backend} backend, float32; generation {gen_s:.0f} s; {args.draws} draws per cell")
    print()
    print(sweep_table(sweep(tasks, arms, draft, draws=args.draws, seed=args.seed)))
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
