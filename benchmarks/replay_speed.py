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
  changed bytes with rapidfuzz,

checks that both found the same tables and changed bytes, and prints both wall times, their
ratio and each process's peak memory (``ru_maxrss`` from ``os.wait4``) against the file's size.
Targets (issue 14): 48,072 pairs in < 10 s and <= 3x the bare script; 480,720 pairs in <= 10x the
48,072-pair time; peak memory <= 3x the replay file.

Run: ``python benchmarks/replay_speed.py [--pairs 480720] [--token-ids] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
            sentence = " ".join(words[pos:pos + length])
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
        return corpus[start:start + length]

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
                    opener = REFUSALS[int(rng.integers(len(REFUSALS)))] if refuses else OPENERS[int(rng.integers(len(OPENERS)))]
                    target = opener + body(int(rng.integers(300, 2001)) - len(opener))
                    if hash(target) not in seen:
                        seen.add(hash(target))
                        break
                spec = target
                if rng.random() < flip_rate:  # the other class from the first byte on
                    flips += 1
                    other = OPENERS[int(rng.integers(len(OPENERS)))] if refuses else REFUSALS[int(rng.integers(len(REFUSALS)))]
                    spec = other + body(int(rng.integers(300, 2001)) - len(other))
                elif rng.random() < 0.5:  # drift after the opener: same class, other text
                    cut = int(rng.integers(len(opener), len(target)))
                    spec = target[:cut] + body(max(int(rng.integers(300, 2001)) - cut, 1))
                if spec != target:
                    diverging += 1
                prompt = f"Prompt {i} of {task}: " + body(int(rng.integers(60, 240)))
                for arm, text in (("target", target), ("speculative", spec)):
                    rec = {"task": task, "prompt_id": f"{task}-{i:06d}", "prompt": prompt, "arm": arm, "text": text,
                           "metric": "refusal"}  # as --tais-record writes it: a replay must say how it is scored
                    if token_ids:  # about 4 bytes a token, as a BPE tokenizer gives on English
                        rec["token_ids"] = [hash(text[j:j + 4]) % 50_000 for j in range(0, len(text), 4)]
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"pairs": pairs, "tasks": tasks, "diverging": diverging, "flips": flips}


# --- the bare script -----------------------------------------------------------------------

def bare(path: str) -> dict:
    """The same work without the plugin: what a person would write to gate this file by hand."""
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    from pytest_tais.stats import cohens_h, paired_tost, wilson_interval

    t0 = time.perf_counter()
    arms: dict[str, dict[tuple[str, str], str]] = {"target": {}, "speculative": {}}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
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
        tost = paired_tost(b, c, n)
        wilson_interval(a + b, n), wilson_interval(a + c, n)
        h = cohens_h((a + b) / n, (a + c) / n)
        xa = [x.encode("utf-8") for x, _ in pairs]
        xb = [y.encode("utf-8") for _, y in pairs]
        lcs = process.cpdist(xa, xb, scorer=LCSseq.similarity, workers=-1)
        longer = np.maximum([len(x) for x in xa], [len(y) for y in xb])
        share = np.where(longer > 0, 1.0 - lcs / np.maximum(longer, 1), 0.0)
        out[task] = {"table": [a, b, c, n - a - b - c], "tost_p": tost.p_value, "cohens_h": h,
                     "changed_bytes_share": float(share.mean())}
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
    ap.add_argument("--bare", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare:
        print(json.dumps(bare(args.bare)))
        return 0

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
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--tais-replay={replay}", f"--tais-report={tmp / 'out'}"]
        # The plugin's cost is pytest with pytest-tais alone; the other plugins installed here (the
        # test tools' hypothesis plugin imports hypothesis at every run's end) are timed beside it.
        alone = [*cmd[:3], "-p", "pytest_tais.plugin", *cmd[3:]]
        wall, cpu, rc, rss, log = timed(alone, tmp, {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
        all_wall, all_cpu, _, _, _ = timed(cmd, tmp, env)
        bare_wall, bare_cpu, bare_rc, bare_rss, bare_log = timed([sys.executable, str(Path(__file__).resolve()), "--bare", str(replay)], tmp, env)
        if bare_rc != 0:
            print(bare_log, file=sys.stderr)
            return 1
        report = json.loads((tmp / "out" / "report.json").read_text())
        mine = json.loads(bare_log.strip().splitlines()[-1])
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    rows = {t["task"]: t for t in report["tasks"]}
    mismatches = [
        name for name, b in mine["tasks"].items()
        if name not in rows
        or [rows[name]["table"][k] for k in "abcd"] != b["table"]
        or abs(rows[name]["changed_bytes_share"] - b["changed_bytes_share"]) > 1e-9
        or abs(rows[name]["tost_p"] - b["tost_p"]) > 1e-12
    ]
    n = sum(t.get("n", 0) for t in report["tasks"])
    mib = size / 2**20
    print(f"replay file: {args.pairs} paired samples over {args.tasks} tasks, {mib:.1f} MiB"
          f"{' with token ids' if args.token_ids else ''}; {built['diverging']} pairs diverge "
          f"({100 * built['diverging'] / args.pairs:.1f}%), {built['flips']} refusal flips "
          f"({100 * built['flips'] / args.pairs:.2f}%); built in {build_s:.1f} s")
    print(f"plugin: screened {n} pairs in {len(report['tasks'])} tasks: {report['summary']}; pytest exit code {rc}")
    target = "< 10 s" if args.pairs <= PAIRS else f"<= {args.pairs / PAIRS:.3g}x the {PAIRS:,}-pair time"
    print(f"plugin wall time (pytest --tais-replay --tais-report, pytest-tais the only plugin): {wall:.2f} s (target {target}); CPU {cpu:.2f} s")
    print(f"the same with every installed pytest plugin loaded ({', '.join(_plugins())}): {all_wall:.2f} s; CPU {all_cpu:.2f} s")
    print(f"bare script wall time (json, substring judge, TOST, Wilson, h, rapidfuzz LCS): {bare_wall:.2f} s "
          f"({mine['seconds_inside']:.2f} s after its imports); CPU {bare_cpu:.2f} s")
    print(f"ratio plugin / bare: {wall / bare_wall:.2f}x wall, {cpu / bare_cpu:.2f}x CPU (target <= 3x)")
    print(f"load average while it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"peak RSS: plugin {rss / 2**20:.0f} MiB = {rss / size:.2f}x the file (target <= 3x); "
          f"bare script {bare_rss / 2**20:.0f} MiB = {bare_rss / size:.2f}x")
    print(f"plugin and bare script agree on every task's table, TOST p and changed bytes: "
          f"{'yes' if not mismatches else 'NO: ' + ', '.join(mismatches[:5])}")
    return 0 if n == args.pairs and not mismatches and rc in (0, 1) else 1


if __name__ == "__main__":
    raise SystemExit(main())
