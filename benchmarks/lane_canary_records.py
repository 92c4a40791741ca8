"""Records for the canary sweep on the real pair: every answer of one lane task, three ways, plus
the target's teacher-forced scores of every answer that differs from the target's own.

Generates, through the plugin's engines and its record writing (``EngineSettings.record``, as
``--tais-record``), on the lane's settings (``real_model_lane.lane_settings``: vllm, float32,
greedy, chat template with the model's default system prompt, eager, the pair's K):

- ``OUT/clean.jsonl``: the target-only and the speculative arm's answers;
- ``OUT/draft.jsonl``: the same with every speculative answer replaced by the draft alone's
  (``canary=1.0``: the speculative records there are the draft's, marked ``meta.canary``);
- ``OUT/target_scores.jsonl``: for each speculative or draft-alone answer whose text differs from
  the target's, the target model's teacher-forced log-probabilities over the answer's own tokens
  (hf, float32, one forward pass): at every position where the answer's token is not the
  target's top token, ``[position, top token, answer token, gap]`` with
  gap = top log-prob - answer token's log-prob (nats). The audit column of
  ``canary_sensitivity.py --records`` flags an answer when any gap exceeds its tolerance.

The generation store lives in ``OUT/cache`` (a rerun reuses it; ``--limit 16`` first measures).

Run: ``python benchmarks/lane_canary_records.py --pair qwen2.5-coder --models /work/models
--benchmarks ../shared/benchmarks --out /work/lane-qwen-520``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import real_model_lane as lane  # noqa: E402

SCORES = "target_scores.jsonl"


def write_records(out: Path, make_settings, tasks) -> None:
    """Both record files through run_arms (the store generates each arm once)."""
    from pytest_tais.engines import run_arms

    prompts = [p for t in tasks for p in t.prompts]
    metrics = {t.name: t.metric for t in tasks}
    for name, canary in (("clean", 0.0), ("draft", 1.0)):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="tais-lane-") as shared:
            res = run_arms(
                make_settings(canary, out / f"{name}.jsonl"), prompts, shared_dir=Path(shared), task_metrics=metrics
            )
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        for arm, m in res.metrics.items():
            print(f"  {arm}: {json.dumps(m, default=str)}", flush=True)


def lane_setup(args):
    """The real pair on the lane's settings: (tasks, settings maker, target folder)."""
    pair = lane.get_pair(args.pair)
    target, draft = lane.model_folders(args.models, pair)
    tasks = lane.load_tasks(args.benchmarks, args.limit, lane.parse_tasks(args.tasks))

    def make(canary: float, record: Path):
        return lane.lane_settings(
            "float32",
            target,
            draft,
            args.out / "cache",
            num_speculative_tokens=pair.num_speculative_tokens,
            max_tokens=args.max_tokens,
            max_model_len=pair.max_model_len,
            canary=canary,
            record=record,
        )

    return tasks, make, target


def bundled_setup(args):
    """The bundled models (the example suite's refusal tasks, adversarial draft, as canary_sensitivity.generate)."""
    from pytest_tais.battery.example import example_tasks
    from pytest_tais.engines import EngineSettings

    models = HERE.parent / "fixtures" / "models"
    tasks = [t for t in example_tasks() if t.metric == "refusal"]
    if args.limit is not None:
        tasks = [dataclasses.replace(t, prompts=tuple(t.prompts[: args.limit])) for t in tasks]

    def make(canary: float, record: Path):
        return EngineSettings(
            target=models / "target",
            draft=models / "draft-adversarial",
            backend="vllm",
            max_tokens=args.max_tokens,
            cache_dir=args.out / "cache",
            dtype="float32",
            canary=canary,
            record=record,
        )

    return tasks, make, models / "target"


def differing(out: Path) -> list[tuple[str, str, str, str, list[int]]]:
    """(source, task, prompt id, prompt, token ids) of each speculative or draft answer unlike the target's."""
    from pytest_tais.records.generation import read_generations

    target, rows = {}, []
    for source in ("clean", "draft"):
        for g in read_generations(out / f"{source}.jsonl"):
            key = (g.task, g.prompt_id)
            if g.arm == "target":
                target[key] = g.text
            elif target.get(key) != g.text:
                rows.append(("draft" if source == "draft" else "speculative", g.task, g.prompt_id, g.prompt, g))
    return [(s, t, i, p, list(g.token_ids)) for s, t, i, p, g in rows if g.text != target[(t, i)]]


def gaps_of(logprobs, ids: list[int]) -> list[list]:
    """Positions where ``ids`` is not the top token: [position, top id, token id, gap in nats]."""
    top = logprobs.argmax(dim=-1)
    out = []
    for j, tok in enumerate(ids):
        if int(top[j]) != tok:
            out.append([j, int(top[j]), tok, float(logprobs[j, top[j]] - logprobs[j, tok])])
    return out


def render(tok, mode: str, system: list, system_prompt: str | None, prompt: str) -> list[int]:
    """The prompt's token ids as the vllm engine builds them (engines/vllm.py)."""
    if mode == "chat":
        text = tok.apply_chat_template(
            system + [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tok(text, add_special_tokens=False)["input_ids"]
    return tok((f"{system_prompt}\n\n" if system_prompt else "") + prompt)["input_ids"]


def score(out: Path, target: Path, settings) -> int:
    """The target's teacher-forced gaps of every differing answer, written to ``OUT/target_scores.jsonl``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_tais.records.files import atomic_write_text

    from pytest_tais.engines.fingerprint import effective_prompt_mode

    rows = differing(out)
    mode, _ = effective_prompt_mode(settings, target)
    system_prompt = settings.system_prompt
    tok = AutoTokenizer.from_pretrained(str(target))
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    lines, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for source, task, pid, prompt, ids in rows:
            head = render(tok, mode, system, system_prompt, prompt)
            logits = model(torch.tensor([head + ids])).logits[0, len(head) - 1 : len(head) + len(ids) - 1]
            gaps = gaps_of(torch.log_softmax(logits.float(), dim=-1), ids)
            lines.append(
                json.dumps(
                    {
                        "source": source,
                        "task": task,
                        "prompt_id": pid,
                        "n_tokens": len(ids),
                        "max_gap": max((g[3] for g in gaps), default=0.0),
                        "gaps": gaps,
                    }
                )
            )
    atomic_write_text(out / SCORES, "".join(line + "\n" for line in lines))
    n = len(rows)
    print(
        f"scored {n} differing answers in {time.perf_counter() - t0:.0f} s ({n and (time.perf_counter() - t0) / n:.2f} s each)"
    )
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundled", action="store_true", help="the bundled models and the example battery instead")
    ap.add_argument("--pair", default="qwen2.5-coder")
    ap.add_argument("--models", type=Path, help="the lane's --models folder")
    ap.add_argument("--benchmarks", type=Path, help="the lane's --benchmarks folder")
    ap.add_argument("--out", type=Path, required=True, help="records folder (outside the repository)")
    ap.add_argument("--tasks", default="advbench")
    ap.add_argument(
        "--limit", type=int, default=None, help="first N prompts per task (a throughput probe); default all"
    )
    ap.add_argument("--max-tokens", type=int, default=None, help=f"default: the lane's {lane.MAX_TOKENS}, bundled 48")
    ap.add_argument("--skip-scores", action="store_true", help="generate only; no teacher-forced pass")
    args = ap.parse_args(argv)
    os.environ.setdefault(lane.RESERVED_CPUS_ENV, "0")
    if args.max_tokens is None:
        args.max_tokens = 48 if args.bundled else lane.MAX_TOKENS
    if not args.bundled and (args.models is None or args.benchmarks is None):
        ap.error("--models and --benchmarks are needed (or --bundled)")
    args.out.mkdir(parents=True, exist_ok=True)
    tasks, make, target = bundled_setup(args) if args.bundled else lane_setup(args)
    write_records(args.out, make, tasks)
    if not args.skip_scores:
        score(args.out, target, make(0.0, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
