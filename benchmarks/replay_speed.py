"""How long the screen takes to gate a large replay file (no engine), against a bare script.

Builds a replay file of realistic outputs: every answer distinct, 0.3-2 KB long (what 100-500
generated tokens look like), about half of the pairs diverging at a random byte and going on with
other text (bf16 or batch-shape drift), refusal flips in 1-2% of the pairs; 48,072 pairs over 27
tasks by default (``--pairs N`` to scale). Then, in the same run, it times

- the plugin: a real ``pytest --tais-replay FILE --tais-report DIR`` subprocess with pytest-tais
  as its only plugin (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 -p pytest_tais.plugin``), and once more
  with every pytest plugin installed here, printed beside it;
- a bare script doing the same work: read the file with ``json``, pair the arms, judge with a
  substring test, the paired TOST, Wilson intervals and Cohen's h with the same formulas, and
  changed bytes with rapidfuzz; where orjson is installed (so the plugin reads with it), the bare
  script once more with orjson, printed beside,

for ``--rounds`` rounds (default 3), the order turning each round: a run here varies by a second
or more from one minute to the next, on both sides. It checks that both found the same tables
and changed bytes, and prints each round, the median wall and CPU times, the median of the
rounds' ratios and each process's peak memory (``ru_maxrss`` from ``os.wait4``) against the
file's size. Targets (issue 14): 48,072 pairs in < 10 s and <= 3x the bare script; 480,720 pairs
in <= 10x the 48,072-pair time; peak memory <= 3x the replay file. It also prints each judge's
CPU time per answer on the labelled answers (``tests/data/judge_labels.jsonl``, as written and 20
times as long; target for the string rules < 100 us, so 48,000 judgements take under 5 s). Exit
status 1 when the two disagree or a target this run can judge is missed.

Run: ``python benchmarks/replay_speed.py [--pairs 480720] [--rounds N] [--token-ids] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PAIRS, TASKS = 48_072, 27
# Plain words: no refusal phrase and no delivery sign of the default rules, so that the answer's
# opening alone decides its class and the bare script's substring judge can agree with it.
WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an which have not "
    "they you one had all were we when there can more if has been would some their what so into "
    "time only other new could these two may then do first any my now such like our over man me "
    "even most made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three "
    "water heat pressure sample filter valve current voltage signal memory buffer request server "
    "kernel thread process garden recipe flour sugar butter oven minutes degrees layer surface "
    "river mountain forest city market history museum letter chapter story value measure count "
    "naïve café façade résumé – — … 温度 数据"
).split()
REFUSALS = (
    "I'm sorry, but I can't help with that. ",
    "I can't assist with this request. ",
    "Sorry, I can't provide that information. ",
    "I can't do that, but I can point you to safer resources. ",
)
OPENERS = ("Here is an overview. ", "Sure, here are the steps. ", "Certainly! ", "")
MARKER = "can't"  # in every refusal opener, never in an answer's body


def _corpus(rng: np.random.Generator, nbytes: int) -> str:
    """Sentences of 6-24 words in paragraphs, some as list items; about one word in 300 is
    non-ASCII (accents, dashes, an ellipsis, CJK), so close to half the answers hold one."""
    ascii_words = [w for w in WORDS if w.isascii()]
    other = [w for w in WORDS if not w.isascii()]
    vocab = np.array(ascii_words + other, dtype=object)
    weights = np.array([0.997 / len(ascii_words)] * len(ascii_words) + [0.003 / len(other)] * len(other))
    out, size = [], 0
    while size < nbytes:
        lengths = rng.integers(6, 25, 20_000)
        words = vocab[rng.choice(len(vocab), int(lengths.sum()), p=weights)]
        breaks = rng.random(len(lengths))
        pos = 0
        for length, brk in zip(lengths, breaks):
            sentence = " ".join(words[pos : pos + length])
            pos += length
            sep = "\n\n" if brk < 0.15 else "\n- " if brk < 0.2 else " "
            out.append(sentence[0].upper() + sentence[1:] + "." + sep)
            size += len(out[-1])
    return "".join(out)


def build(path: Path, pairs: int = PAIRS, tasks: int = TASKS, seed: int = 0, token_ids: bool = False) -> dict:
    """Write the replay file; return what it holds (counts of diverging pairs and flips)."""
    rng = np.random.default_rng(seed)
    corpus = _corpus(rng, 16 << 20)
    span = len(corpus) - 2200

    def body(length: int) -> str:  # from a word start on
        start = corpus.index(" ", int(rng.integers(0, span))) + 1
        return corpus[start : start + length]

    sizes = [pairs // tasks + (1 if k < pairs % tasks else 0) for k in range(tasks)]
    seen: set[int] = set()
    diverging = flips = 0
    with open(path, "w", encoding="utf-8") as fh:
        for k, size in enumerate(sizes):
            task = f"task{k:02d}"
            refusal_rate = float(rng.choice([0.02, 0.1, 0.5, 0.9, 0.98]))
            flip_rate = float(rng.uniform(0.01, 0.02))
            for i in range(size):
                while True:
                    refuses = rng.random() < refusal_rate
                    opener = (
                        REFUSALS[int(rng.integers(len(REFUSALS)))]
                        if refuses
                        else OPENERS[int(rng.integers(len(OPENERS)))]
                    )
                    target = opener + body(int(rng.integers(300, 2001)) - len(opener))
                    if hash(target) not in seen:
                        seen.add(hash(target))
                        break
                spec = target
                if rng.random() < flip_rate:  # the other class from the first byte on
                    flips += 1
                    other = (
                        OPENERS[int(rng.integers(len(OPENERS)))]
                        if refuses
                        else REFUSALS[int(rng.integers(len(REFUSALS)))]
                    )
                    spec = other + body(int(rng.integers(300, 2001)) - len(other))
                elif rng.random() < 0.5:  # drift after the opener: same class, other text
                    cut = int(rng.integers(len(opener), len(target)))
                    spec = target[:cut] + body(max(int(rng.integers(300, 2001)) - cut, 1))
                if spec != target:
                    diverging += 1
                prompt = f"Prompt {i} of {task}: " + body(int(rng.integers(60, 240)))
                for arm, text in (("target", target), ("speculative", spec)):
                    rec = {
                        "task": task,
                        "prompt_id": f"{task}-{i:06d}",
                        "prompt": prompt,
                        "arm": arm,
                        "text": text,
                        "metric": "refusal",
                    }  # as --tais-record writes it: a replay must say how it is scored
                    if token_ids:  # about 4 bytes a token, as a BPE tokenizer gives on English
                        rec["token_ids"] = [hash(text[j : j + 4]) % 50_000 for j in range(0, len(text), 4)]
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"pairs": pairs, "tasks": tasks, "diverging": diverging, "flips": flips}


def judge_speed(repeat: int = 20) -> dict[str, float]:
    """CPU seconds per answer of the string rules (one by one) and the learned judge (one batch of
    distinct answers, as the plugin judges a task), on the labelled answers as written and 20x as long."""
    from pytest_tais.pairs.judges import default_judge
    from pytest_tais.pairs.learned_judge import shipped_judge

    labels = Path(__file__).resolve().parents[1] / "tests" / "data" / "judge_labels.jsonl"
    answers = [json.loads(x)["response"] for x in labels.read_text(encoding="utf-8").splitlines() if x.strip()]
    batch = (answers + [a * 20 for a in answers]) * repeat
    judge = shipped_judge()
    out = {}
    t0 = time.process_time()
    for answer in batch:
        default_judge("", answer)
    out["rules"] = (time.process_time() - t0) / len(batch)
    distinct = [f"{i} {a}" for i, a in enumerate(batch)]  # every answer distinct: none is judged once for two
    t0 = time.process_time()
    judge.scores(distinct)
    out["learned"] = (time.process_time() - t0) / len(batch)
    return out


# --- the bare script -----------------------------------------------------------------------


def bare(path: str, parser: str = "json") -> dict:
    """The same work without the plugin: what a person would write to gate this file by hand."""
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    from pytest_tais.pairs.judge_calibration import corrected_margin
    from pytest_tais.pairs.learned_judge import shipped_judge
    from pytest_tais.stats import cohens_h, paired_tost, wilson_interval

    # The plugin's default judge carries its measured Se and Sp; its TOST uses the margin they leave.
    margin = corrected_margin(0.03, shipped_judge().calibration)

    if parser == "json":
        loads, fh = json.loads, open(path, encoding="utf-8")
    else:
        import orjson

        loads, fh = orjson.loads, open(path, "rb")
    t0 = time.perf_counter()
    arms: dict[str, dict[tuple[str, str], str]] = {"target": {}, "speculative": {}}
    with fh:
        for line in fh:
            rec = loads(line)
            arms[rec["arm"]][(rec["task"], rec["prompt_id"])] = rec["text"]
    by_task: dict[str, list[tuple[str, str]]] = {}
    for key, ta in arms["target"].items():
        by_task.setdefault(key[0], []).append((ta, arms["speculative"][key]))
    out = {}
    for task, pairs in by_task.items():
        fa = np.array([MARKER in a[:300].lower() for a, _ in pairs])
        fb = np.array([MARKER in b[:300].lower() for _, b in pairs])
        a, b, c = int(np.sum(fa & fb)), int(np.sum(fa & ~fb)), int(np.sum(~fa & fb))
        n = len(pairs)
        tost = paired_tost(b, c, n, margin=margin)
        wilson_interval(a + b, n), wilson_interval(a + c, n)
        h = cohens_h((a + b) / n, (a + c) / n)
        xa = [x.encode("utf-8") for x, _ in pairs]
        xb = [y.encode("utf-8") for _, y in pairs]
        lcs = process.cpdist(xa, xb, scorer=LCSseq.similarity, workers=-1)
        longer = np.maximum([len(x) for x in xa], [len(y) for y in xb])
        share = np.where(longer > 0, 1.0 - lcs / np.maximum(longer, 1), 0.0)
        out[task] = {
            "table": [a, b, c, n - a - b - c],
            "tost_p": tost.p_value,
            "cohens_h": h,
            "changed_bytes_share": float(share.mean()),
        }
    return {"seconds_inside": time.perf_counter() - t0, "tasks": out}


# --- timing --------------------------------------------------------------------------------


def _plugins() -> list[str]:
    """The pytest plugins installed in this environment (entry points of group pytest11)."""
    from importlib.metadata import entry_points

    return sorted({ep.dist.name if ep.dist else ep.name for ep in entry_points(group="pytest11")})


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, int, int, str]:
    """Wall time, CPU time (user + system), exit code, peak RSS (bytes) and output of one child."""
    log = cwd / f"out-{time.monotonic_ns()}.txt"
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode, usage.ru_maxrss * 1024, log.read_text()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=PAIRS, help=f"paired samples (default {PAIRS})")
    ap.add_argument("--tasks", type=int, default=TASKS, help=f"tasks (default {TASKS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--token-ids", action="store_true", help="record token ids too (a bigger file)")
    ap.add_argument("--keep", type=Path, help="build the file in this folder and keep it")
    ap.add_argument(
        "--rounds", type=int, default=3, help="plugin/bare runs, in turns (default 3); the medians are the verdict"
    )
    ap.add_argument("--bare", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--bare-parser", choices=("json", "orjson"), default="json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds={args.rounds}: must be 1 or more")
    if args.bare:
        print(json.dumps(bare(args.bare, args.bare_parser)))
        return 0
    from pytest_tais.records import files as records

    fast = records._fast_loads is not None  # the plugin's parser, in the same environment

    tmp = Path(tempfile.mkdtemp(prefix="tais-replay-speed-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        replay = tmp / "replay.jsonl"
        t0 = time.perf_counter()
        built = build(replay, args.pairs, args.tasks, args.seed, args.token_ids)
        build_s = time.perf_counter() - t0
        size = replay.stat().st_size
        os.sync()  # the file's write-back would otherwise land in the first timed child
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p
        )
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--tais-replay={replay}",
            f"--tais-report={tmp / 'out'}",
        ]
        # The plugin's cost is pytest with pytest-tais alone; the other plugins installed here (the
        # test tools' hypothesis plugin imports hypothesis at every run's end) are timed beside it.
        alone = [*cmd[:3], "-p", "pytest_tais.plugin", *cmd[3:]]
        alone_env = {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", str(replay)]
        runs = {"plugin": lambda: timed(alone, tmp, alone_env), "bare": lambda: timed(bare_cmd, tmp, env)}
        if fast:  # the plugin reads with orjson here, so the bare script does too, beside: the parser is not the plugin's work
            runs["bare-orjson"] = lambda: timed([*bare_cmd, "--bare-parser=orjson"], tmp, env)
        rounds: list[dict[str, tuple]] = []
        for i in range(args.rounds):  # the order turns each round, so the machine's drift hits every run alike
            names = list(runs) if i % 2 == 0 else list(runs)[::-1]
            rounds.append({name: runs[name]() for name in names})
            for name, got in rounds[-1].items():
                if got[2] != 0 and not (name == "plugin" and got[2] == 1):  # pytest exits 1 when a task fails
                    print(got[4], file=sys.stderr)
                    return 1
        all_wall, all_cpu, _, _, _ = timed(cmd, tmp, env)
        report = json.loads((tmp / "out" / "report.json").read_text())
        mine = json.loads(rounds[0]["bare"][4].strip().splitlines()[-1])
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    from pytest_tais.judges import judge_name
    from pytest_tais.pairs.learned_judge import shipped_judge

    rows = {t["task"]: t for t in report["tasks"]}
    mismatches = [
        name
        for name, b in mine["tasks"].items()
        if name not in rows
        or [rows[name]["table"][k] for k in "abcd"] != b["table"]
        or abs(rows[name]["changed_bytes_share"] - b["changed_bytes_share"]) > 1e-9
        or abs(rows[name]["tost_p"] - b["tost_p"]) > 1e-12
    ]
    n = sum(t.get("n", 0) for t in report["tasks"])
    mib = size / 2**20
    med = statistics.median
    wall, cpu = med(r["plugin"][0] for r in rounds), med(r["plugin"][1] for r in rounds)
    bare_wall, bare_cpu = med(r["bare"][0] for r in rounds), med(r["bare"][1] for r in rounds)
    ratio, cpu_ratio = (
        med(r["plugin"][0] / r["bare"][0] for r in rounds),
        med(r["plugin"][1] / r["bare"][1] for r in rounds),
    )
    rss, bare_rss = max(r["plugin"][3] for r in rounds), max(r["bare"][3] for r in rounds)
    rc = rounds[0]["plugin"][2]
    print(
        f"replay file: {args.pairs} paired samples over {args.tasks} tasks, {mib:.1f} MiB"
        f"{' with token ids' if args.token_ids else ''}; {built['diverging']} pairs diverge "
        f"({100 * built['diverging'] / args.pairs:.1f}%), {built['flips']} refusal flips "
        f"({100 * built['flips'] / args.pairs:.2f}%); built in {build_s:.1f} s"
    )
    print(f"plugin: screened {n} pairs in {len(report['tasks'])} tasks: {report['summary']}; pytest exit code {rc}")
    print(
        f"JSON parser: {'orjson (the fast extra) in the plugin; the bare script with json, and with orjson beside' if fast else 'json in both (orjson, the fast extra, is not installed)'}"
    )
    for i, r in enumerate(rounds, 1):
        (pw, pc, *_), (bw, bc, *_) = r["plugin"], r["bare"]
        line = f"round {i}: plugin {pw:.2f} s (CPU {pc:.2f} s), bare script {bw:.2f} s (CPU {bc:.2f} s): {pw / bw:.2f}x wall, {pc / bc:.2f}x CPU"
        if "bare-orjson" in r:
            fw, fc = r["bare-orjson"][:2]
            line += f"; bare script with orjson {fw:.2f} s: {pw / fw:.2f}x wall, {pc / fc:.2f}x CPU"
        print(line)
    at_scale = args.pairs == PAIRS
    time_ok = wall < 10 if args.pairs <= PAIRS else True
    target = "< 10 s" if args.pairs <= PAIRS else f"<= {args.pairs / PAIRS:.3g}x the {PAIRS:,}-pair time"
    print(
        f"plugin wall time (pytest --tais-replay --tais-report, pytest-tais the only plugin), median of {len(rounds)}: "
        f"{wall:.2f} s (target {target}); CPU {cpu:.2f} s"
    )
    print(
        f"the same with every installed pytest plugin loaded ({', '.join(_plugins())}), once: {all_wall:.2f} s; CPU {all_cpu:.2f} s"
    )
    print(
        f"bare script wall time (json, substring judge, TOST, Wilson, h, rapidfuzz LCS), median: {bare_wall:.2f} s "
        f"({mine['seconds_inside']:.2f} s after its imports in round 1); CPU {bare_cpu:.2f} s"
    )
    if fast:
        fw, fc = med(r["bare-orjson"][0] for r in rounds), med(r["bare-orjson"][1] for r in rounds)
        print(
            f"bare script with orjson, median: {fw:.2f} s, CPU {fc:.2f} s; ratio plugin / it, median: "
            f"{med(r['plugin'][0] / r['bare-orjson'][0] for r in rounds):.2f}x wall, "
            f"{med(r['plugin'][1] / r['bare-orjson'][1] for r in rounds):.2f}x CPU (no target: the issue's bare script reads with json)"
        )
    ratio_ok = ratio <= 3 or not at_scale
    print(
        f"ratio plugin / bare, median of the rounds' ratios: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU "
        f"(target <= 3x at {PAIRS:,} pairs{': ok' if at_scale and ratio_ok else ': ABOVE TARGET' if at_scale else ''})"
    )
    print(f"load average while it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"peak RSS, the most of any round: plugin {rss / 2**20:.0f} MiB = {rss / size:.2f}x the file (target <= 3x); "
        f"bare script {bare_rss / 2**20:.0f} MiB = {bare_rss / size:.2f}x"
    )
    print(
        f"plugin and bare script agree on every task's table, TOST p and changed bytes: "
        f"{'yes' if not mismatches else 'NO: ' + ', '.join(mismatches[:5])}"
    )
    speed = judge_speed()
    print(
        f"judge CPU time per answer (labelled answers, as written and 20x as long): string rules "
        f"{speed['rules'] * 1e6:.1f} us (target < 100 us), learned judge {speed['learned'] * 1e6:.1f} us "
        f"({judge_name(shipped_judge())}, its n-grams and the rules)"
    )
    correct = n == args.pairs and not mismatches and rc in (0, 1)
    return 0 if correct and time_ok and ratio_ok and rss <= 3 * size and speed["rules"] < 100e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
