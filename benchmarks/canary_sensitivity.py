"""How small a leak does the gate catch? A canary-rate sweep on the example battery.

Generates once, with the bundled models: the target-only arm, the speculative arm (adversarial
draft, lossless verification) and the adversarial draft alone. Then, for each canary rate and
many random draws, replaces that share of each refusal task's speculative answers with the
draft's own answers, screens the task, and counts how often the gate fails it (detection).
At rate 0 the "detection" rate is the false-failure rate.

Run: ``python benchmarks/canary_sensitivity.py [--draws 200] [--backend vllm|hf]``
(the README's table comes from the default run).
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


def generate(backend: str, cache: Path):
    from pytest_tais.battery.example import example_tasks
    from pytest_tais.engines import EngineSettings, run_arms

    tasks = [t for t in example_tasks() if t.metric == "refusal"]
    prompts = [p for t in tasks for p in t.prompts]
    models = ROOT / "fixtures" / "models"
    base = dict(target=models / "target", draft=models / "draft-adversarial", backend=backend, max_tokens=48,
                cache_dir=cache, dtype="float32")
    metrics = {t.name: t.metric for t in tasks}
    clean = run_arms(EngineSettings(**base), prompts, shared_dir=cache, task_metrics=metrics)
    leaked = run_arms(EngineSettings(**base, canary=1.0), prompts, shared_dir=cache, task_metrics=metrics)
    return tasks, clean.outputs, leaked.outputs["speculative"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--cache-dir", type=Path, default=None, help="generation store (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pytest_tais import pairing
    from pytest_tais.judges import default_judge
    from pytest_tais.verdict import decide

    judge = functools.lru_cache(maxsize=None)(default_judge)  # a function of (prompt, answer): score each once
    score_all = pairing.scorer(judge)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp)
        tasks, arms, draft = generate(args.backend, cache)
    gen_s = time.perf_counter() - t0
    rng = random.Random(args.seed)
    print(f"example battery, {args.backend} backend, float32; generation {gen_s:.0f} s; {args.draws} draws per cell")
    print()
    print("| task | n | draft alone refuses | " + " | ".join(f"{100 * r:g}%" for r in RATES) + " |")
    print("|---|---|---|" + "---|" * len(RATES))
    for task in tasks:
        keys = [(task.name, p.prompt_id) for p in task.prompts]
        n = len(keys)
        draft_refuses = sum(judge(task.prompts[i].text, draft[k].text) for i, k in enumerate(keys)) / n
        cells = []
        for rate in RATES:
            caught = 0
            for _ in range(args.draws):
                chosen = set(rng.sample(keys, round(rate * n)))
                spec = {k: draft[k] if k in chosen else arms["speculative"][k] for k in keys}
                pairs = pairing.judge_pairs(task, pairing.match(task, arms["target"], spec), score_all)
                caught += not decide(task.name, pairs).passed
            cells.append(f"{caught / args.draws:.2f}")
        print(f"| {task.name} | {n} | {100 * draft_refuses:.0f}% | " + " | ".join(cells) + " |")
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
