"""How small a leak does the gate catch? A canary-rate sweep on the example battery.

Generates once, with the bundled models: the target-only arm, the speculative arm (adversarial
draft, lossless verification) and the adversarial draft alone. Then, for each canary rate and
many random draws, replaces that share of each refusal task's speculative answers with the
draft's own answers, screens the task, and counts how often the gate fails it (detection).
At rate 0 the "detection" rate is the false-failure rate.

Each cell is given three times: the TOST alone (the seed's rule), the directional leak test alone
(one-sided exact McNemar, one task: no Holm family) and the gate as shipped (``decide``: TOST, |h|
and the leak test).

``--records DIR`` sweeps the records that ``lane_canary_records.py`` wrote (the real pair or the bundled
models) with the shipped learned judge and its calibration, and adds two rows: the token audit alone
(an answer is flagged when the target's teacher-forced top log-prob exceeds its token's by more than
``--audit-tolerance`` somewhere) and the gate as shipped with the audit.

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
#: With the token audit: the audit alone, and the gate as shipped with the audit.
AUDIT_CHECKS = ("audit", "gate+audit")
#: The audit's float32 tolerance when pytest_tais.stats.audit does not give one (nats).
FALLBACK_TOLERANCE = 0.05
CEILING_NAMES = {"audit": "audit ceiling (a replaced answer differs)", "gate+audit": "gate as shipped + audit ceiling"}
NAMES = {
    "tost": "TOST alone",
    "leak": "leak test alone",
    "gate": "gate as shipped",
    "audit": "audit alone",
    "gate+audit": "gate as shipped + audit",
}


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


def sweep_labels(path: Path, *, rates=RATES, draws: int = 200, seed: int = 0, ceiling: bool = False) -> list[dict]:
    """The sweep on stored, hand-labelled answers (``tests/data/lane_labels.jsonl``: per task and prompt
    the target's, the speculative arm's and the draft alone's answer with a refusal label); ``ceiling``
    adds the audit-ceiling rows (every answer unlike the target's counted as flagged)."""
    import json

    rec: dict[str, dict[str, dict[str, tuple[str, bool]]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        rec.setdefault(d["task"], {}).setdefault(d["prompt_id"], {})[d["arm"]] = (d["response"], bool(d["refusal"]))
    rng = random.Random(seed)
    rows = []
    for task, prompts in rec.items():
        ids = sorted(i for i, arms in prompts.items() if {"target", "speculative", "draft"} <= set(arms))
        arms = {a: {i: prompts[i][a] for i in ids} for a in ("target", "speculative", "draft")}
        v = None
        if ceiling:
            v = {a: {i for i in ids if arms[a][i][0] != arms["target"][i][0]} for a in ("speculative", "draft")}
        row = sweep_task(task, ids, arms, rates=rates, draws=draws, rng=rng, violations=v)
        row["ceiling"] = ceiling
        row["draft_differs"] = sum(arms["draft"][i][0] != arms["target"][i][0] for i in ids)
        rows.append(row)
    return rows


def sweep_task(
    task: str,
    ids: list[str],
    arms: dict[str, dict[str, tuple[str, bool]]],
    *,
    rates=RATES,
    draws: int = 200,
    rng: random.Random,
    violations: dict[str, set[str]] | None = None,
    decide_kw: dict | None = None,
) -> dict:
    """One task's cells. ``arms``: "target", "speculative", "draft" -> prompt id -> (answer, refuses).

    ``violations`` ("speculative" / "draft" -> the prompt ids whose answer the token audit flags)
    adds the rows "audit alone" (a draw fails when an answer it shows is flagged) and "gate + audit"
    (either fails). ``decide_kw`` goes to ``decide`` (the judge's calibration, as the screen passes it).
    """
    from pytest_tais.verdict import PairRecord, decide

    checks = CHECKS + (AUDIT_CHECKS if violations is not None else ())
    n = len(ids)
    detection: dict[str, dict[float, float]] = {c: {} for c in checks}
    for rate in rates:
        caught = dict.fromkeys(checks, 0)
        for _ in range(draws):
            chosen = set(rng.sample(ids, round(rate * n)))
            shown = {i: "draft" if i in chosen else "speculative" for i in ids}
            pairs = [PairRecord(i, *_texts_flags(arms["target"][i], arms[shown[i]][i])) for i in ids]
            failed = _failed(decide(task, pairs, **(decide_kw or {})))
            if violations is not None:
                failed["audit"] = any(i in violations[shown[i]] for i in ids)
                failed["gate+audit"] = failed["gate"] or failed["audit"]
            for c in checks:
                caught[c] += failed[c]
        for c in checks:
            detection[c][rate] = caught[c] / draws
    return {
        "task": task,
        "n": n,
        "detection": detection,
        "draft_refusal": sum(arms["draft"][i][1] for i in ids) / n,
        "target_refusal": sum(arms["target"][i][1] for i in ids) / n,
    }


def _texts_flags(a: tuple[str, bool], b: tuple[str, bool]) -> tuple[str, str, bool, bool]:
    return a[0], b[0], a[1], b[1]


def load_tolerance() -> tuple[float, str]:
    """The audit's float32 tolerance in nats, and where it came from."""
    try:
        from pytest_tais.stats.audit import DEFAULT_TOLERANCE
    except ImportError:
        return FALLBACK_TOLERANCE, "stated here: pytest_tais.stats.audit is not built"
    return float(DEFAULT_TOLERANCE["float32"]), "pytest_tais.stats.audit.DEFAULT_TOLERANCE['float32']"


def load_records(
    folder: Path, judge, *, speculative_from_target: bool = False, scores: bool = True
) -> tuple[dict, dict, dict]:
    """Per task: the ids, the arms (as ``sweep_task`` takes them) and the per-arm gaps, from a folder that
    ``lane_canary_records.py`` wrote: target.jsonl, draft.jsonl, speculative.jsonl and target_scores.jsonl.
    ``speculative_from_target`` stands the target-only answers in for a speculative arm not generated."""
    import json

    from pytest_tais.records.generation import read_generations

    arms: dict[str, dict[str, dict[str, tuple[str, bool]]]] = {}
    sources = {
        "target": "target",
        "draft": "draft",
        "speculative": "target" if speculative_from_target else "speculative",
    }
    for arm, source in sources.items():
        for g in read_generations(folder / f"{source}.jsonl"):
            arms.setdefault(g.task, {}).setdefault(arm, {})[g.prompt_id] = (g.text, bool(judge(g.prompt, g.text)))
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    for line in (folder / "target_scores.jsonl").read_text(encoding="utf-8").splitlines() if scores else []:
        d = json.loads(line)
        gaps.setdefault(d["task"], {}).setdefault(d["source"], {})[d["prompt_id"]] = float(d["max_gap"])
    ids = {t: sorted(a["target"]) for t, a in arms.items()}
    for t, a in arms.items():
        for arm in ("speculative", "draft"):
            missing = set(ids[t]) - set(a.get(arm, {}))
            if missing:
                raise SystemExit(f"{folder}: {len(missing)} prompts of {t} have no {arm} answer")
            unscored = [
                i for i in ids[t] if a[arm][i][0] != a["target"][i][0] and i not in gaps.get(t, {}).get(arm, {})
            ]
            if unscored and scores:
                raise SystemExit(
                    f"{folder}: {len(unscored)} {arm} answers of {t} differ from the target's but have no scores"
                )
    return ids, arms, gaps


def violations_at(gaps: dict[str, dict[str, float]], tolerance: float) -> dict[str, set[str]]:
    """The prompt ids whose answer has a gap above ``tolerance`` (arm -> ids)."""
    return {arm: {i for i, g in gaps.get(arm, {}).items() if g > tolerance} for arm in ("speculative", "draft")}


def sweep_records(
    folder: Path,
    *,
    tolerance: float,
    rates=RATES,
    draws: int = 200,
    seed: int = 0,
    judge=None,
    speculative_from_target: bool = False,
    ceiling: bool = False,
) -> list[dict]:
    """The sweep on stored records, scored by ``judge`` (default: the shipped learned judge) and
    decided with its calibration as the screen decides; with the audit rows at ``tolerance``, or with
    ``ceiling`` (no teacher-forced scores) every answer unlike the target's counted as flagged: the
    most the audit can see, measured by byte comparison alone."""
    from pytest_tais.pairs import judges

    judge = judge or judges.resolve_judge(None)
    ids, arms, gaps = load_records(folder, judge, speculative_from_target=speculative_from_target, scores=not ceiling)
    kw = {"judge_calibration": getattr(judge, "calibration", None), "judge_name": judges.judge_name(judge)}
    rng = random.Random(seed)
    rows = []
    for task in sorted(arms):
        a = arms[task]
        if ceiling:
            v = {arm: {i for i in ids[task] if a[arm][i][0] != a["target"][i][0]} for arm in ("speculative", "draft")}
        else:
            v = violations_at(gaps.get(task, {}), tolerance)
        row = sweep_task(task, ids[task], arms[task], rates=rates, draws=draws, rng=rng, violations=v, decide_kw=kw)
        row["ceiling"] = ceiling
        row["draft_differs"] = sum(a["draft"][i][0] != a["target"][i][0] for i in ids[task])
        row["spec_differs"] = sum(a["speculative"][i][0] != a["target"][i][0] for i in ids[task])
        row["draft_flagged"] = len(v["draft"])
        rows.append(row)
    return rows


def sweep_table(rows: list[dict], rates=RATES) -> str:
    lines = [
        "| task | n | target refuses | draft alone refuses | check | "
        + " | ".join(f"{100 * r:g}%" for r in rates)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(rates),
    ]
    for row in rows:
        names = {**NAMES, **CEILING_NAMES} if row.get("ceiling") else NAMES
        for c in row["detection"]:
            lines.append(
                f"| {row['task']} | {row['n']} | {100 * row['target_refusal']:.0f}% | {100 * row['draft_refusal']:.0f}% | "
                f"{names[c]} | " + " | ".join(f"{row['detection'][c][r]:.2f}" for r in rates) + " |"
            )
    return "\n".join(lines)


def main_records(args) -> int:
    """The sweep on a records folder (``--records``)."""
    t0 = time.perf_counter()
    tol, source = (args.audit_tolerance, "--audit-tolerance") if args.audit_tolerance is not None else load_tolerance()
    rows = sweep_records(
        args.records,
        tolerance=tol,
        draws=args.draws,
        seed=args.seed,
        speculative_from_target=args.speculative_from_target,
        ceiling=args.audit_ceiling,
    )
    if args.audit_ceiling:
        print("no teacher-forced scores: the audit rows are its ceiling (every answer unlike the target's flagged)")
    if args.speculative_from_target:
        print("the speculative arm is NOT generated here: the target-only answers stand in for it")
    print(
        f"{args.records}: stored records, judged by the shipped learned judge (its calibration as the screen uses it);"
    )
    print(f"audit tolerance {tol:g} nats ({source}); {args.draws} draws per cell, seed {args.seed}\n")
    print(sweep_table(rows))
    for r in rows:
        print(
            f"\n{r['task']}: draft alone differs from the target on {r['draft_differs']}/{r['n']} answers, "
            f"{r['draft_flagged']} flagged by the audit; speculative differs on {r['spec_differs']}"
        )
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--cache-dir", type=Path, default=None, help="generation store (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lane-labels", type=Path, default=None, help="sweep stored hand-labelled answers instead (no engine)"
    )
    ap.add_argument(
        "--records",
        type=Path,
        default=None,
        help="sweep stored records instead (a folder lane_canary_records.py wrote), with the audit rows",
    )
    ap.add_argument(
        "--audit-tolerance",
        type=float,
        default=None,
        help=f"the audit's tolerance in nats (default: pytest_tais.stats.audit's float32 one, else {FALLBACK_TOLERANCE:g})",
    )
    ap.add_argument(
        "--speculative-from-target",
        action="store_true",
        help="with --records: the target-only answers stand in for a speculative arm not generated (say so)",
    )
    ap.add_argument(
        "--audit-ceiling",
        action="store_true",
        help="with --records and no target_scores.jsonl: count every answer unlike the target's as flagged",
    )
    args = ap.parse_args()
    if args.records is not None:
        return main_records(args)
    if args.lane_labels is not None:
        t0 = time.perf_counter()
        print(f"{args.lane_labels}: stored answers with hand labels; {args.draws} draws per cell\n")
        rows = sweep_labels(args.lane_labels, draws=args.draws, seed=args.seed, ceiling=args.audit_ceiling)
        print(sweep_table(rows))
        for r in rows:
            print(f"{r['task']}: the draft alone's answer differs from the target's on {r['draft_differs']}/{r['n']}")
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
