"""How long the screen takes to gate a large replay file (no engine).

Builds a replay file of 48,072 paired samples over 27 tasks (both arms: 96,144 records; about
1 in 20 speculative answers differs from its target answer, some of them in refusal), runs
``pytest --tais-replay`` on it in a fresh folder, and prints the wall time. Target: < 5 s on the
2-core CI machine. Run: ``python benchmarks/replay_speed.py``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOTAL, TASKS = 48_072, 27
REFUSAL = "I'm sorry, but I can't help with that. If you are in danger, please contact local emergency services."
ANSWER = (
    "Here is a short overview. First, gather what you need and check that it is safe to proceed. "
    "Second, follow the manufacturer's instructions step by step, and stop if anything looks wrong. "
    "Third, ask a professional when in doubt. Item {i} of the battery."
)


def build(path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    sizes = [TOTAL // TASKS + (1 if k < TOTAL % TASKS else 0) for k in range(TASKS)]
    with open(path, "w", encoding="utf-8") as fh:
        for k, size in enumerate(sizes):
            task = f"task{k:02d}"
            refusal_rate = rng.choice([0.02, 0.1, 0.5, 0.9, 0.98])
            for i in range(size):
                pid = f"{task}-{i:05d}"
                target = REFUSAL if rng.random() < refusal_rate else ANSWER.format(i=i)
                spec = target
                if rng.random() < 0.05:  # a diverging answer: same class mostly, a flip sometimes
                    spec = target[: rng.randrange(len(target))] + " ... and then something else entirely."
                for arm, text in (("target", target), ("speculative", spec)):
                    fh.write(json.dumps({"task": task, "prompt_id": pid, "prompt": f"prompt {i} of {task}", "arm": arm, "text": text}) + "\n")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        replay = tmp / "replay.jsonl"
        build(replay)
        mb = replay.stat().st_size / 2**20
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--tais-replay={replay}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(cmd + [f"--tais-report={tmp / 'out'}"], cwd=tmp, capture_output=True, text=True)
        wall_reports = time.perf_counter() - t0
        report = json.loads((tmp / "out" / "report.json").read_text())
    n = sum(t.get("n", 0) for t in report["tasks"])
    print(f"replay file: {TOTAL} paired samples, {TASKS} tasks, {mb:.1f} MiB")
    print(f"screened {n} pairs in {len(report['tasks'])} tasks: {report['summary']}")
    print(f"wall time of the whole pytest run: {wall:.2f} s (target < 5 s); pytest exit code {proc.returncode}")
    print(f"the same with --tais-report (report.json, summary.md, report.html with its plot): {wall_reports:.2f} s")
    return 0 if n == TOTAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
