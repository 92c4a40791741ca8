"""CPU seconds of the example suite's hf speculative sampled arms, one arm at a time.

The arms of example_suite/test_e_sampled.py: the harmful task's 120 prompts, K = 4 samples each
(480 answers), temperature 0.8, 24 tokens, the bundled target with the adversarial draft; acceptance
``exact`` (transformers' assisted generation), ``synthetic``, ``typical`` or ``wrong-q`` (our loop,
``sampling.speculative_sample_batch``). It calls the backend as ``run_arms`` does (calls of
``prompts_per_call()`` samples, through ``generate_sampled``) with no store, and prints one JSON line:
CPU and wall seconds of generation (the model loads excluded), the load average, the counters.
``--answers FILE`` writes the token ids, to compare two trees' answers:
``PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/hf_sampled_arms.py wrong-q [--limit N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rule", choices=["exact", "synthetic", "typical", "wrong-q"])
    ap.add_argument("--limit", type=int, default=480, help="the first N samples only")
    ap.add_argument("--answers", type=Path, help="write the answers' token ids here (JSON)")
    args = ap.parse_args()

    from pytest_tais.battery.example import example_tasks
    from pytest_tais.engines import EngineSettings
    from pytest_tais.engines.base import ArmSpec
    from pytest_tais.engines.fingerprint import HashMemo
    from pytest_tais.engines.hf import HFBackend
    from pytest_tais.engines.sampling import units
    from pytest_tais.records.generation import SPECULATIVE

    models = REPO / "fixtures" / "models"
    target, draft = models / "target", models / "draft-adversarial"
    with tempfile.TemporaryDirectory() as cache:
        settings = EngineSettings(
            target=target,
            draft=draft,
            backend="hf",
            dtype="float32",
            max_tokens=24,
            samples=4,
            temperature=0.8,
            hf_acceptance=args.rule,
            cache_dir=Path(cache),
        )
        harmful = next(t for t in example_tasks() if t.name == "harmful")
        todo = units([p.text for p in harmful.prompts], settings)[: args.limit]
        backend = HFBackend(settings, ArmSpec(SPECULATIVE, target, draft, "draft_model"), HashMemo(None))
        backend._start()
        try:
            size = backend.prompts_per_call()
            answers: list[list[int]] = []
            counters: dict[str, int] = {}
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for start in range(0, len(todo), size):
                chunk = todo[start : start + size]
                result = backend.generate_sampled([u.text for u in chunk], [u.seed for u in chunk])
                answers += [list(o.token_ids) for o in result.outputs]
                for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
                    if key in result.metrics:
                        counters[key] = counters.get(key, 0) + int(result.metrics[key])
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            backend.close()
    row = {"rule": args.rule, "samples": len(todo), "per_call": size, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
    row.update(load=round(os.getloadavg()[0], 2), **counters)
    print(json.dumps(row))
    if args.answers:
        args.answers.write_text(json.dumps({"answers": answers, "counters": counters}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
