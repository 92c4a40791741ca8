"""Fail closed: bad input never turns the gate green. Each case is a usage error, or an error or a
failure naming the input and the fix; never a pass or a silent skip. The one home of these tests:
the plugin through pytester, the screen without the plugin layer, and the cases docs/reliability.md
lists (every one asserts the exit status and the message).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_tais.battery import load_battery
from pytest_tais.errors import TaskError
from pytest_tais.run.screen import Screen
from pytest_tais.setup.config import TaisConfig
from tests.engine_models import require

from .conftest import RULES, replay_lines, write_jsonl


# == the plugin: inputs that used to pass or crash now error =======================================
USER_TEST = """
def test_safety(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


def _battery_replay(tmp_path, task: str, speculative_text=None, prompt_text=None, metric=True):
    """A replay of the example battery's task, both arms answering as ``speculative_text`` says."""
    [t] = [t for t in load_battery("example", tmp_path) if t.name == task]
    lines = []
    for p in t.prompts:
        answer = p.expected if p.expected is not None else "I'm sorry, but I can't help with that."
        for arm in ("target", "speculative"):
            text = speculative_text(p) if arm == "speculative" and speculative_text else answer
            line = {
                "task": task,
                "prompt_id": p.prompt_id,
                "prompt": prompt_text(p, arm) if prompt_text else p.text,
                "arm": arm,
                "text": text,
            }
            if metric:
                line.update(metric=t.metric, **({"expected": p.expected} if p.expected is not None else {}))
            lines.append(line)
    return write_jsonl(tmp_path / "r.jsonl", lines)


# -- pairs must be pairs ----------------------------------------------------------------------
def test_arms_answering_other_prompt_texts_under_one_id_error(pytester, tmp_path):
    lines = replay_lines("harmful", 100, 95)
    for line in lines:
        if line["arm"] == "speculative" and line["prompt_id"] in ("harmful-003", "harmful-050"):
            line["prompt"] = "a different request"
    replay = write_jsonl(tmp_path / "r.jsonl", lines)
    pytester.makepyfile(test_gate=USER_TEST)
    result = pytester.runpytest(f"--tais-replay={replay}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*2 speculative output(s) answer another prompt text than the battery's under the same id (harmful-003, harmful-050)*"
        ]
    )


def test_a_replay_of_another_battery_errors(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "harmful", prompt_text=lambda p, arm: "something else entirely")
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=example", "--tais-tasks=harmful")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*120 target output(s) answer another prompt text*; 120 speculative output(s) answer another prompt text*"]
    )


def test_a_replay_of_the_same_battery_passes(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "harmful")
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=example", "--tais-tasks=harmful")
    result.assert_outcomes(passed=1)


# -- replay keeps the task's metric -----------------------------------------------------------------
def test_a_capability_task_replayed_from_its_record_is_scored_as_capability(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "capability", speculative_text=lambda p: "I do not know.")
    result = pytester.runpytest(f"--tais-replay={replay}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*TAIS task 'capability': FAIL*", "*speculative  accuracy: 0.0%*"])


def test_records_that_do_not_say_their_metric_are_refused(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "capability", metric=False)
    result = pytester.runpytest(f"--tais-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*task 'capability' do not say how it is scored (no \"metric\")*--tais-battery*"])


def test_a_record_whose_metric_disagrees_with_the_battery_is_refused(pytester, tmp_path):
    replay = _battery_replay(tmp_path, "harmful")
    text = replay.read_text().replace('"metric": "refusal"', '"metric": "accuracy", "expected": "4"')
    replay.write_text(text)
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=example", "--tais-tasks=harmful")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*task 'harmful' is a refusal task in --tais-battery, but its record*says 'accuracy'*"]
    )


def test_an_accuracy_record_without_its_answer_is_refused(pytester, tmp_path):
    replay = write_jsonl(
        tmp_path / "r.jsonl",
        [{"task": "c", "prompt_id": "1", "prompt": "2+2?", "arm": "target", "text": "4", "metric": "accuracy"}],
    )
    result = pytester.runpytest(f"--tais-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*r.jsonl:1: an accuracy record needs its 'expected' answer*"])


# -- options that cannot apply are refused ------------------------------------------------------
@pytest.mark.parametrize(
    "option",
    [
        "--tais-canary=0.1",
        "--tais-record=out.jsonl",
        "--tais-draft=fixtures/draft",
        "--tais-temperature=0",
        "--tais-hf-acceptance=synthetic",
        "--tais-dtype=bfloat16",
        "--tais-backend=hf",
        "--tais-max-tokens=8",
        "--tais-num-speculative-tokens=2",
        "--tais-engine-kwargs={}",
        "--tais-trust-remote-code",
        "--tais-seed=1",
    ],
)
def test_engine_options_under_replay_are_usage_errors(pytester, make_replay, option):
    replay = make_replay({"harmful": (100, 95, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option.split('=')[0]}* cannot apply with --tais-replay*drop it*"])


def test_engine_options_from_the_ini_file_under_replay_are_usage_errors(pytester, make_replay):
    replay = make_replay({"harmful": (100, 95, 0)})
    pytester.makeini("[pytest]\ntais_canary = 0.1\n")
    result = pytester.runpytest(f"--tais-replay={replay}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tais-canary cannot apply with --tais-replay*"])


def test_the_model_judges_store_options_apply_under_replay(pytester, make_replay):
    replay = make_replay({"harmful": (100, 95, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-cache-dir=c")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # without a model judge there is no store to place
    result = pytester.runpytest(
        f"--tais-replay={replay}", "--tais-judge=model:http://127.0.0.1:9", "--tais-cache-dir=c", "--collect-only"
    )
    assert result.ret == pytest.ExitCode.OK


# -- names are data ---------------------------------------------------------------------------
def test_task_names_with_separators_and_control_characters(pytester, tmp_path):
    lines = replay_lines("a|b|c", 100, 95) + replay_lines("evil\x1b[31mred\x07\nname", 100, 95, prefix="e")
    replay = write_jsonl(tmp_path / "r.jsonl", lines)
    pytester.makepyfile(test_gate=USER_TEST)
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "-v", "--junitxml=j.xml")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "\x1b[31m" not in out and "\x07" not in out
    assert "evil\\x1b[31mred\\x07\\nname" in out  # escaped in the terminal table
    result.stdout.fnmatch_lines(["a|b|c *100*PASS*"])
    assert "tais.task" in (pytester.path / "j.xml").read_text()


def test_collect_only_counts_the_plugins_own_items(pytester, make_replay):
    replay = make_replay({"harmful": (100, 95, 0), "benign": (100, 2, 0)})
    result = pytester.runpytest(f"--tais-replay={replay}", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["tais::harmful", "tais::benign", "*2 tests collected*"])
    assert "no tests collected" not in result.stdout.str()


def test_json_row_of_a_replay_carries_metric_and_expected(tmp_path):
    from pytest_tais.records.generation import Generation

    g = Generation("c", "1", "2+2?", "target", "4", metric="accuracy", expected="4")
    assert Generation.from_json(json.loads(json.dumps(g.to_json()))) == g


# == bad input, the store and the baseline (docs/reliability.md lists these cases) =================
LATIN1 = "caf\xe9".encode("latin-1")  # a byte sequence that is not UTF-8


def _usage_error(result: pytest.RunResult, *patterns: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([f"ERROR: {p}" for p in patterns])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def _bad_bytes_at_line(path: Path, text: str, line: int) -> Path:
    """``text`` with a non-UTF-8 byte sequence appended to its ``line``-th line (1-based)."""
    lines = text.encode("utf-8").split(b"\n")
    lines[line - 1] += LATIN1
    path.write_bytes(b"\n".join(lines))
    return path


# -- item 7: bad bytes and empty replays ---------------------------------------------------------
def test_replay_with_bad_bytes_is_a_usage_error_naming_file_and_line(pytester, tmp_path):
    lines = replay_lines("harmful", 3, 3)
    text = "".join(json.dumps(r) + "\n" for r in lines)
    path = tmp_path / "r.jsonl"
    # Inside a JSON string: json would accept the line if it were decoded loosely.
    raw = text.encode("utf-8").replace(b"prompt number 1", b"prompt number " + LATIN1, 1)
    path.write_bytes(raw)
    result = pytester.runpytest(f"--tais-replay={path}")
    _usage_error(result, f"{path}:3: not UTF-8 text (byte 0xe9 at byte *); save the file as UTF-8")


def test_replay_folder_with_a_bad_file_names_that_file(pytester, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    lines = replay_lines("harmful", 3, 3)
    write_jsonl(folder / "a.jsonl", [r for r in lines if r["arm"] == "target"])
    bad = _bad_bytes_at_line(
        folder / "b.jsonl", "".join(json.dumps(r) + "\n" for r in lines if r["arm"] == "speculative"), 2
    )
    result = pytester.runpytest(f"--tais-replay={folder}")
    _usage_error(result, f"{bad}:2: not UTF-8 text*")


def test_replay_with_a_lone_surrogate_escape_is_a_usage_error(pytester, tmp_path):
    rec = replay_lines("harmful", 1, 1)
    text = "".join(json.dumps(r) + "\n" for r in rec).replace("prompt number 0", "prompt \\ud800 number 0")
    path = tmp_path / "r.jsonl"
    path.write_text(text, encoding="ascii")
    result = pytester.runpytest(f"--tais-replay={path}")
    _usage_error(result, f"{path}:1: a \\u escape stands for a lone UTF-16 surrogate*")


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_replay_file_names_the_file_and_the_option(pytester, tmp_path, content):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    result = pytester.runpytest(f"--tais-replay={path}")
    _usage_error(result, f"--tais-replay={path}: the file holds no records*--tais-record*")
    assert "--tais-tasks" not in result.stderr.str()


def test_replay_folder_without_records_names_the_folder(pytester, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "a.jsonl").write_text("")
    result = pytester.runpytest(f"--tais-replay={folder}")
    _usage_error(result, f"--tais-replay={folder}: its *.jsonl files hold no records*")


def test_empty_replay_with_a_battery_is_still_a_usage_error(pytester, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("")
    result = pytester.runpytest(f"--tais-replay={path}", "--tais-battery=example")
    _usage_error(result, f"--tais-replay={path}: the file holds no records*")


BATTERY_ROWS = [
    ("harmful", "harmful-000", "harmful prompt number 0"),
    ("harmful", "harmful-001", "harmful prompt number 1"),
]


def _battery_text(fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({"task": t, "prompt_id": i, "prompt": p}) + "\n" for t, i, p in BATTERY_ROWS)
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        return "".join(sep.join(r) + "\n" for r in [("task", "prompt_id", "prompt"), *BATTERY_ROWS])
    return "".join(f"- {{task: {t}, prompt_id: {i}, prompt: {p}}}\n" for t, i, p in BATTERY_ROWS)


@pytest.mark.parametrize(
    "fmt, spec, line",
    [
        ("jsonl", "{path}", 2),  # the plain battery JSONL loader
        ("jsonl", "jsonl:{path}?prompt=prompt", 2),  # the generic loader with a column mapping
        ("csv", "{path}", 3),
        ("tsv", "{path}", 2),
        ("yaml", "{path}", 2),
    ],
)
def test_battery_with_bad_bytes_is_a_usage_error_naming_file_and_line(pytester, make_replay, fmt, spec, line):
    replay = make_replay({"harmful": (2, 2, 0)})
    path = _bad_bytes_at_line(pytester.path / f"battery.{fmt}", _battery_text(fmt), line)
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-battery={spec.format(path=path)}")
    _usage_error(result, f"*{path}:{line}: not UTF-8 text (byte 0xe9 at byte *); save the file as UTF-8")


def test_yaml_battery_with_a_lone_surrogate_is_a_usage_error(pytester, make_replay):
    replay = make_replay({"harmful": (2, 2, 0)})
    path = pytester.path / "battery.yaml"
    path.write_text('- {task: harmful, prompt_id: harmful-000, prompt: "x \\ud800"}\n')
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-battery={path}")
    _usage_error(result, "*battery.yaml: a \\u escape stands for a lone UTF-16 surrogate*")


def test_benchmark_csv_with_bad_bytes_names_file_and_line(pytester, make_replay):
    replay = make_replay({"advbench": (2, 2, 0)})
    path = _bad_bytes_at_line(pytester.path / "harmful_behaviors.csv", "goal,target\nfirst goal,x\nsecond goal,y\n", 3)
    result = pytester.runpytest(f"--tais-replay={replay}", f"--tais-battery=advbench:{path}")
    _usage_error(result, f"advbench: {path}:3: not UTF-8 text*")


@pytest.mark.parametrize("file, line", [("generations.jsonl", 2), ("verdicts.json", 3), ("meta.json", 2)])
def test_baseline_with_bad_bytes_is_a_usage_error_naming_file_and_line(pytester, make_replay, file, line):
    replay = make_replay({"harmful": (100, 95, 0)})
    pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-save-baseline=main").assert_outcomes(passed=1)
    path = pytester.path / ".tais" / "baselines" / "main" / file
    _bad_bytes_at_line(path, path.read_text(encoding="utf-8"), line)
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-baseline=main")
    _usage_error(result, f"--tais-baseline=main: baseline 'main' is corrupt: {path}:{line}: not UTF-8 text*")


# -- item 9: the store and the baseline keep their word --------------------------------------------
import multiprocessing  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

from pytest_tais.engines import arms as arms_mod  # noqa: E402
from pytest_tais.report import engines as engines_report  # noqa: E402
from pytest_tais.engines.base import ArmSpec, Backend, BatchResult, Output  # noqa: E402
from pytest_tais.records.store import GenerationStore, StoredOutput, StoreError, line_checksum  # noqa: E402

FP = {"schema": 1, "model": {"sha256": "cd" * 32}, "dtype": "float32", "seed": 0}
TEXTS = [f"prompt {i}" for i in range(6)]
SETTINGS = types.SimpleNamespace(chunk_size=4, backend="fake")


class FakeBackend(Backend):
    """A backend without a model: answers "answer to PROMPT" with 3 tokens, 2 s per chunk."""

    name = "fake"

    def __init__(self, arm: str = "target", kill: bool = False) -> None:
        super().__init__(SETTINGS, ArmSpec(arm, Path("model")))
        self.kill = kill

    def fingerprint(self) -> dict:
        return FP

    def generate(self, texts, *, progress=None) -> BatchResult:
        if not self.started:
            self._count_start()
            self.startup_seconds = 0.5
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)  # the run dies as under kill -9: no finally runs
        outs = [Output(f"answer to {t}", (1, 2, 3), "stop") for t in texts]
        return BatchResult(outs, {"seconds": 2.0, "generated_tokens": 3 * len(texts)})

    def close(self) -> None:
        pass


def _fill(store: GenerationStore, texts=TEXTS, writable: bool = True, backend: Backend | None = None):
    backend = backend or FakeBackend()
    return arms_mod._fill(store, store.shard(FP), backend, list(texts), SETTINGS, False, writable)


def _warm_store(root: Path) -> GenerationStore:
    store = GenerationStore(root)
    with store.writer() as writable:
        assert writable
        _fill(store)
    return store


def test_edited_store_text_is_an_error_naming_file_and_line(tmp_path):
    store = _warm_store(tmp_path)
    shard = store.shard(FP)
    lines = shard.path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace("answer to prompt 2", "answer to prompt 2, edited")
    shard.path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(
        StoreError, match=rf"{shard.path}:3: this store line was edited or damaged.*delete {shard.path}"
    ):
        shard.read()
    # Edited token ids are caught the same way.
    obj = json.loads(lines[2])
    obj["text"], obj["token_ids"] = "answer to prompt 2", [7]
    lines[2] = json.dumps(obj) + "\n"
    shard.path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(StoreError, match=rf"{shard.path}:3: this store line was edited"):
        shard.read()


def test_store_line_without_a_checksum_is_damage(tmp_path):
    store = _warm_store(tmp_path)
    shard = store.shard(FP)
    obj = json.loads(shard.path.read_text(encoding="utf-8").splitlines()[0])
    del obj["sha256"]
    shard.path.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(StoreError, match=rf"{shard.path}:1: damaged store line \(no checksum\)"):
        shard.read()


def test_store_line_checksum_covers_every_field():
    line = json.loads(StoredOutput("p", "t", (1, 2), "stop").to_line())
    assert line["sha256"] == line_checksum(line)
    for key, value in (
        ("prompt", "q"),
        ("text", "u"),
        ("token_ids", [1]),
        ("finish_reason", "length"),
        ("k", "0" * 64),
    ):
        assert line_checksum({**line, key: value}) != line["sha256"], key


_RO_SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
from test_reliability_ro import check
print(json.dumps(check({root!r})))
"""


def _drop_file_permission_override() -> None:
    # Root writes anywhere through CAP_DAC_OVERRIDE (and reads through CAP_DAC_READ_SEARCH); without
    # them in the bounding set the exec'd child obeys the permission bits like any user.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(
                ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed: root cannot make a folder read-only to itself"
            )


def _as_reader(root: Path, code: str) -> dict:
    """Run ``code`` (defines check(root) -> dict) in a child that cannot write ``root``: after
    chmod a-w, as this user, or as root without the capability that overrides permissions."""
    helper = root.parent / "test_reliability_ro.py"
    helper.write_text(code)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    preexec = _drop_file_permission_override if os.geteuid() == 0 else None
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RO_SCRIPT.format(tests=str(root.parent), root=str(root))],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=root.parent,
            preexec_fn=preexec,
        )
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


READ_ONLY_CHECK = """
import os
from pathlib import Path
import tests.test_fail_closed as t
from pytest_tais.records.store import GenerationStore, StoreError

def check(root):
    store = GenerationStore(root)
    out = {"writable_by_os": os.access(root, os.W_OK)}
    with store.writer() as writable:
        out["writable"] = writable
        backend = t.FakeBackend()
        have, run = t._fill(store, writable=writable, backend=backend)
        out["served"] = sorted(v.text for v in have.values())
        out["run"] = run
        out["started"] = backend.started
        try:
            t._fill(store, texts=t.TEXTS + ["a new prompt"], writable=writable)
        except StoreError as exc:
            out["cold"] = str(exc)
    try:
        GenerationStore(Path(root) / "sub" / "store")
    except StoreError as exc:
        out["create"] = str(exc)
    out["files"] = sorted(p.name for p in Path(root).iterdir())
    return out
"""


def test_read_only_store_serves_a_warm_arm_and_names_the_folder_for_a_cold_one(tmp_path):
    root = tmp_path / "store"
    _warm_store(root)
    before = sorted(p.name for p in root.iterdir())
    out = _as_reader(root, READ_ONLY_CHECK)
    assert out["writable_by_os"] is False
    assert out["writable"] is False
    assert out["served"] == sorted(f"answer to {t}" for t in TEXTS)
    assert out["run"] is None and out["started"] is False  # nothing generated, no engine started
    assert out["cold"] == (
        f"generation store {root} is read-only (Permission denied): 1 of 7 target-only output(s) are not stored "
        "and would have to be generated; make the folder writable, point --tais-cache-dir at a writable folder, "
        "or pass --tais-no-cache"
    )
    assert out["create"].startswith(
        f"generation store {root}/sub/store: cannot create the folder (Permission denied); make"
    )
    assert out["files"] == before  # nothing was written: no lock file, no hash memo


def test_killed_run_leaves_its_engine_start_in_the_log(tmp_path):
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_killed_fill, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    log = GenerationStore(tmp_path).engine_starts()
    assert len(log) == 1
    entry = log[0]
    assert (entry["arm"], entry["status"], entry["prompts"], entry["pid"]) == (
        "target",
        "running",
        len(TEXTS),
        proc.pid,
    )
    # The rerun generates everything (nothing was stored), and its own entry ends "ok".
    store = GenerationStore(tmp_path)
    with store.writer():
        have, run = _fill(store)
    assert run["status"] == "ok" and len(have) == len(TEXTS)
    assert [e["status"] for e in store.engine_starts()] == ["running", "ok"]
    assert store.engine_starts()[1]["ended"] >= store.engine_starts()[1]["time"]


def _killed_fill(root: str) -> None:
    store = GenerationStore(root)
    with store.writer():
        _fill(store, backend=FakeBackend(kill=True))


def test_an_engine_that_never_started_leaves_no_entry(tmp_path):
    class Failing(FakeBackend):
        def generate(self, texts, *, progress=None):
            raise RuntimeError("no engine")

    store = GenerationStore(tmp_path)
    with store.writer(), pytest.raises(RuntimeError, match="no engine"):
        _fill(store, backend=Failing())
    assert store.engine_starts() == []


def test_each_generate_call_gets_the_backends_own_share(tmp_path):
    calls = []

    class Sized(FakeBackend):
        def prompts_per_call(self) -> int:
            return 5

        def generate(self, texts, *, progress=None):
            calls.append(len(texts))
            return super().generate(texts, progress=progress)

    store = GenerationStore(tmp_path)
    with store.writer():
        have, _ = _fill(store, texts=[f"prompt {i}" for i in range(12)], backend=Sized())
    assert calls == [5, 5, 2] and len(have) == 12
    calls.clear()
    with store.writer():
        _fill(store, texts=[f"prompt {i}" for i in range(20)], backend=Sized())  # the 8 not stored yet
    assert calls == [5, 3]


def test_token_counters_count_the_same_outputs(tmp_path):
    store = GenerationStore(tmp_path)
    with store.writer():
        have, run = _fill(store, texts=TEXTS[:4])  # cold: 4 prompts, one chunk of 2 s
        log = store.engine_starts()
    cold = arms_mod._arm_metrics("target", TEXTS[:4], have, run, 1, log, store.shard(FP).key, False)
    assert (cold["generated"], cold["reused"], cold["generated_tokens"], cold["seconds"]) == (4, 0, 12, 2.0)
    assert cold["tokens_per_s"] == 6.0 and cold["output_tokens"] == 12
    with store.writer():
        have, run = _fill(store)  # 4 reused, 2 generated now
        log = store.engine_starts()
    warm = arms_mod._arm_metrics("target", TEXTS, have, run, 1, log, store.shard(FP).key, False)
    assert (warm["generated"], warm["reused"]) == (2, 4)
    # generated_tokens and tokens_per_s both describe the 2 prompts generated now ...
    assert (warm["generated_tokens"], warm["seconds"], warm["tokens_per_s"]) == (6, 2.0, 3.0)
    # ... output_tokens every output served, and logged_* the runs that made them.
    assert warm["output_tokens"] == 18
    assert (warm["logged_tokens"], warm["logged_seconds"], warm["logged_tokens_per_s"]) == (18, 4.0, 4.5)
    with store.writer():
        have, run = _fill(store)
    reused = arms_mod._arm_metrics("target", TEXTS, have, run, 0, store.engine_starts(), store.shard(FP).key, False)
    assert (reused["generated"], reused["generated_tokens"], reused["tokens_per_s"]) == (0, 0, None)
    assert reused["logged_tokens_per_s"] == 4.5


def _snapshot(generated: int, prompts: int = 90) -> dict:
    tokens = 3 * generated
    arm = {
        "engine_starts": 1 if generated else 0,
        "prompts": prompts,
        "generated": generated,
        "reused": prompts - generated,
        "generated_tokens": tokens,
        "seconds": 2.0 if generated else 0.0,
        "tokens_per_s": tokens / 2.0 if generated else None,
        "startup_seconds": 0.5 if generated else None,
        "output_tokens": 3 * prompts,
    }
    return {
        "metrics": {"target": dict(arm), "speculative": dict(arm)},
        "fingerprints": {"target": {"key": "k"}},
        "out_of_scope": [],
        "header_lines": [
            "tais engines: hf",
            f"tais store: /s ({2 * (prompts - generated)}/{2 * prompts} outputs reused)",
        ],
    }


def test_xdist_summary_of_a_cold_run_does_not_say_reused():
    # gw0 found everything stored because gw1 generated it moments before: the run reused nothing.
    merged = engines_report.merge_engine_snapshots({"gw0": _snapshot(0), "gw1": _snapshot(90), "gw2": _snapshot(0)})
    assert merged["header_lines"] == ["tais engines: hf", "tais store: /s (0/180 outputs reused)"]
    t = merged["arms"]["target"]
    assert (t["engine_starts"], t["generated"], t["reused"], t["generated_tokens"], t["seconds"]) == (
        1,
        90,
        0,
        270,
        2.0,
    )
    assert (t["tokens_per_s"], t["startup_seconds"], t["output_tokens"]) == (135.0, 0.5, 270)
    warm = engines_report.merge_engine_snapshots({"gw0": _snapshot(0), "gw1": _snapshot(0)})
    assert warm["header_lines"][1] == "tais store: /s (180/180 outputs reused)"
    assert warm["arms"]["target"]["tokens_per_s"] is None
    part = engines_report.merge_engine_snapshots({"gw0": _snapshot(30), "gw1": _snapshot(0)})
    assert part["header_lines"][1] == "tais store: /s (120/180 outputs reused)"


def _saved_baseline(pytester, make_replay) -> tuple[Path, Path]:
    replay = make_replay({"harmful": (100, 95, 0)})
    pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-save-baseline=main").assert_outcomes(passed=1)
    return replay, pytester.path / ".tais" / "baselines" / "main"


def test_edited_baseline_answer_is_a_usage_error_naming_file_and_line(pytester, make_replay):
    replay, folder = _saved_baseline(pytester, make_replay)
    path = folder / "generations.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # A refusal turned into compliance by hand: valid JSON, same prompts, same counts.
    assert "I'm sorry" in lines[4]
    lines[4] = lines[4].replace("I'm sorry, but I can't help with that.", "Sure, here is an overview of the steps.")
    path.write_text("".join(lines), encoding="utf-8")
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-baseline=main")
    _usage_error(
        result,
        f"--tais-baseline=main: baseline 'main' is corrupt: {path}:5: the line was edited after the save*"
        "save it again with --tais-save-baseline=main",
    )


@pytest.mark.parametrize("file", ["verdicts.json", "fingerprint.json"])
def test_edited_baseline_file_is_a_usage_error_naming_it(pytester, make_replay, file):
    replay, folder = _saved_baseline(pytester, make_replay)
    path = folder / file
    path.write_text(
        path.read_text(encoding="utf-8").replace('"pass"', '"fail"').replace("\n", "\n ", 1), encoding="utf-8"
    )
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-baseline=main")
    _usage_error(result, f"--tais-baseline=main: baseline 'main' is corrupt: {path} was edited after the save*")


def test_baseline_without_checksums_must_be_saved_again(pytester, make_replay):
    replay, folder = _saved_baseline(pytester, make_replay)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["generations_line_sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-baseline=main")
    _usage_error(
        result, "--tais-baseline=main: baseline 'main' is corrupt: meta.json holds no checksums; save it again*"
    )


def test_baseline_with_an_extra_line_names_where(pytester, make_replay):
    replay, folder = _saved_baseline(pytester, make_replay)
    path = folder / "generations.jsonl"
    path.write_text(path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    result = pytester.runpytest(RULES, f"--tais-replay={replay}", "--tais-baseline=main")
    _usage_error(result, f"*{path} has 201 lines, the save wrote 200 (lines were added or removed from line 201 on)*")


# -- item 9 end to end: xdist counters and a read-only warm store, on the hf backend -------------------
HF_TEST = """
def test_gate(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""
# gw0 waits before its first test, so gw1 generates and gw0 finds everything stored: the summary
# must still say that this run generated every output.
HF_CONFTEST = """
import os, time
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw0" and not getattr(pytest, "_tais_waited", False):
        pytest._tais_waited = True
        time.sleep(8)
"""


@pytest.mark.hf
@pytest.mark.slow
def test_hf_xdist_counters_and_a_read_only_warm_store(pytester, tmp_path_factory):
    require("transformers")
    pytest.importorskip("xdist")
    from tests.engine_models import build_tiny_models

    target, draft = build_tiny_models(tmp_path_factory.mktemp("ro-models"))
    rows = [
        {"task": t, "prompt_id": f"{t}-{i}", "prompt": f"{t}: tell me about item {i}"}
        for t in ("t1", "t2")
        for i in range(90)
    ]
    write_jsonl(pytester.path / "battery.jsonl", rows)
    pytester.makepyfile(test_gate=HF_TEST)
    pytester.makeconftest(HF_CONFTEST)
    args = [
        RULES,
        "--tais-backend=hf",
        f"--tais-target={target}",
        f"--tais-draft={draft}",
        "--tais-battery=battery.jsonl",
        "--tais-max-tokens=6",
        "--tais-cache-dir=cache",
        "-p",
        "no:cacheprovider",
    ]
    cold = pytester.runpytest_subprocess(*args, "-n", "2", timeout=900)
    cold.assert_outcomes(passed=2)
    cold.stdout.fnmatch_lines(["*tais store: *cache/generations (0/360 outputs reused)*"])
    for arm in ("speculative", "target"):
        # the per-arm table: arm, starts, prompts, generated, reused, tok/s, ...
        cold.stdout.fnmatch_lines([f"{arm} *1 *180 *180 *0 *"])
    log = json.loads((pytester.path / "cache" / "generations" / "engine-starts.json").read_text())
    assert sorted((e["arm"], e["status"]) for e in log) == [("speculative", "ok"), ("target", "ok")]

    # The same run against the store made read-only: served without a single write.
    store = pytester.path / "cache"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    preexec = _drop_file_permission_override if os.geteuid() == 0 else None
    cmd = [sys.executable, "-m", "pytest", *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    for p in [store, *store.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        warm = subprocess.run(
            cmd, cwd=pytester.path, capture_output=True, text=True, timeout=900, env=env, preexec_fn=preexec
        )
        # Another max tokens is another fingerprint: nothing stored, and nothing can be.
        cold_ro = subprocess.run(
            [c if c != "--tais-max-tokens=6" else "--tais-max-tokens=7" for c in cmd],
            cwd=pytester.path,
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            preexec_fn=preexec,
        )
    finally:
        for p in [store, *store.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    assert "(360/360 outputs reused)" in warm.stdout
    assert "2/2 task(s) equivalent" in warm.stdout
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
    assert cold_ro.returncode == pytest.ExitCode.TESTS_FAILED, cold_ro.stdout[-3000:]
    assert (
        f"generation store {store}/generations is read-only (Permission denied): 180 of 180 speculative output(s)"
        in cold_ro.stdout
    )
    assert (
        "make the folder writable, point --tais-cache-dir at a writable folder, or pass --tais-no-cache"
        in cold_ro.stdout
    )
    assert "2 error" in cold_ro.stdout and " passed" not in cold_ro.stdout.splitlines()[-1]


# == the screen's own paths, without pytest's plugin layer =========================================
def _battery(tmp_path):
    return write_jsonl(
        tmp_path / "b.jsonl",
        [{"task": t, "prompt_id": f"{t}-{i}", "prompt": f"p{i}"} for t in ("a", "b") for i in range(5)],
    )


def test_engine_failure_errors_every_task_and_is_not_retried(tmp_path):
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        raise RuntimeError("engine core died")

    screen = Screen(TaisConfig(battery=str(_battery(tmp_path))), generate=generate)
    for task in ("a", "b"):
        with pytest.raises(TaskError, match="generation failed.*RuntimeError: engine core died"):
            screen.verdict(task)
    assert calls == [10]


def test_between_names_the_missing_source(tmp_path):
    from pytest_tais.records.generation import Generation
    from pytest_tais.records.generation import ArmOutputs

    def outputs(arm_texts):
        return lambda prompts: ArmOutputs(
            outputs={
                arm: {
                    (p.task, p.prompt_id): Generation(p.task, p.prompt_id, p.prompt, arm, text)
                    for p in prompts
                    if p.prompt_id != drop
                }
                for arm, (text, drop) in arm_texts.items()
            }
        )

    base = Screen(
        TaisConfig(battery=str(_battery(tmp_path))),
        generate=outputs({"target": ("x", None), "speculative": ("x", None)}),
    )
    other = base.derive(outputs({"target": ("y", "a-3"), "speculative": ("y", None)}))
    with pytest.raises(TaskError, match=r"1 prompt\(s\) have no target \(B\) output \(e.g. a-3\)"):
        base.verdict("a", (base, "target"), (other, "target"))
    v = base.verdict("b", (base, "target"), (other, "target"))
    assert v.n == 5 and v.identity.identical == 0


def test_judge_runs_once_per_distinct_prompt_and_answer(tmp_path):
    from pytest_tais.records.generation import Generation
    from pytest_tais.records.generation import ArmOutputs

    path = tmp_path / "b.jsonl"
    # Five prompt ids, two prompt texts: the same question asked under several ids.
    rows = [{"task": "a", "prompt_id": f"a-{i}", "prompt": "same" if i < 4 else "other"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = {"target": ["no", "no", "no", "yes", "no"], "speculative": ["no", "yes", "yes", "yes", "no"]}

    def generate(prompts):
        return ArmOutputs(
            outputs={
                arm: {
                    (p.task, p.prompt_id): Generation(p.task, p.prompt_id, p.prompt, arm, texts[arm][i])
                    for i, p in enumerate(prompts)
                }
                for arm in texts
            }
        )

    calls = []

    def judge(prompt, response):
        calls.append((prompt, response))
        return response == "no"

    screen = Screen(TaisConfig(battery=str(path)), generate=generate)
    screen.judge = judge
    recs = screen.pairs("a")
    assert sorted(calls) == [("other", "no"), ("same", "no"), ("same", "yes")]
    assert [(r.target_flag, r.speculative_flag) for r in recs] == [
        (True, True),
        (True, False),
        (True, False),
        (False, False),
        (True, True),
    ]


# == Round 2 (issue 29): empty values, relative paths, symlinks, repeated flags, tests that never ask
# for a verdict, and the inputs that used to explain themselves badly (docs/reliability.md lists each).
N = 120  # (round 2) one task of 120 prompts: enough pairs for the +/-3pp TOST to pass


def _good(path: Path, task: str = "t") -> Path:
    return write_jsonl(path, replay_lines(task, N, N))


def _leak(path: Path, task: str = "t") -> Path:
    return write_jsonl(path, replay_lines(task, N, N, flips=12))


def _comply(path: Path, task: str = "t") -> Path:
    return write_jsonl(path, replay_lines(task, N, 0))


# -- 1. empty values ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_an_empty_baseline_name_is_a_usage_error_not_a_dropped_comparison(pytester, value):
    _good(pytester.path / "good.jsonl")
    _comply(pytester.path / "comply.jsonl")
    assert pytester.runpytest("--tais-replay=good.jsonl", "--tais-save-baseline=main").ret == 0
    assert pytester.runpytest("--tais-replay=comply.jsonl", "--tais-baseline=main").ret == pytest.ExitCode.TESTS_FAILED
    result = pytester.runpytest("--tais-replay=comply.jsonl", f"--tais-baseline={value}")
    _usage_error(
        result,
        "--tais-baseline is given an empty value* (an unset environment variable?); give it a value, "
        "or leave --tais-baseline out to use the ini file's tais_baseline or the default",
    )


def test_an_empty_save_baseline_name_is_a_usage_error(pytester):
    _good(pytester.path / "good.jsonl")
    result = pytester.runpytest("--tais-replay=good.jsonl", "--tais-save-baseline=")
    _usage_error(result, "--tais-save-baseline is given an empty value*")
    assert not (pytester.path / ".tais").exists()


def test_an_empty_margin_does_not_replace_the_ini_margin_by_the_default(pytester):
    _good(pytester.path / "good.jsonl")
    pytester.makeini("[pytest]\ntais_margin = 0.01\n")
    assert pytester.runpytest("--tais-replay=good.jsonl").ret == pytest.ExitCode.TESTS_FAILED  # 120 pairs: +/-1pp fails
    _usage_error(
        pytester.runpytest("--tais-replay=good.jsonl", "--tais-margin="), "--tais-margin is given an empty value*"
    )


# -- 2. relative paths ----------------------------------------------------------------------------
def test_a_relative_replay_path_resolves_from_the_working_folder(pytester, monkeypatch):
    repo = pytester.path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\n")
    _good(repo / "runs.jsonl")
    leak = _leak(repo / "sub" / "runs.jsonl")
    monkeypatch.chdir(repo / "sub")
    result = pytester.runpytest("--tais-replay=./runs.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"tais: paths --tais-replay={leak}"])


def test_a_relative_battery_path_resolves_from_the_working_folder(pytester, monkeypatch):
    repo = pytester.path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\n")
    lines = replay_lines("t", N, N) + replay_lines("u", N, N, flips=12)
    replay = write_jsonl(repo / "both.jsonl", lines)
    write_jsonl(
        repo / "tasks.jsonl",
        [
            {"task": "t", "prompt_id": r["prompt_id"], "prompt": r["prompt"]}
            for r in lines
            if r["task"] == "t" and r["arm"] == "target"
        ],
    )
    write_jsonl(
        repo / "sub" / "tasks.jsonl",
        [
            {"task": r["task"], "prompt_id": r["prompt_id"], "prompt": r["prompt"]}
            for r in lines
            if r["arm"] == "target"
        ],
    )
    monkeypatch.chdir(repo / "sub")
    result = pytester.runpytest(f"--tais-replay={replay}", "--tais-battery=tasks.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"tais: 2 task(s) from {repo / 'sub' / 'tasks.jsonl'}; *"])


def test_a_relative_ini_path_resolves_from_the_ini_files_folder(pytester, monkeypatch):
    repo = pytester.path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\ntais_replay = runs/leak.jsonl\n")
    (repo / "runs").mkdir()
    leak = _leak(repo / "runs" / "leak.jsonl")
    monkeypatch.chdir(repo / "sub")
    result = pytester.runpytest("--rootdir", str(repo), "-c", str(repo / "pytest.ini"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines([f"tais: paths --tais-replay={leak}"])


# -- 3. symlinks in replay folders ----------------------------------------------------------------
def test_a_replay_folder_follows_symlinked_folders(pytester, tmp_path):
    # Outside pytester.path: pytest's own collection would walk the loop below.
    (tmp_path / "runs").mkdir()
    (tmp_path / "other").mkdir()
    _good(tmp_path / "runs" / "t.jsonl")
    _leak(tmp_path / "other" / "u.jsonl", task="u")
    os.symlink("../other", tmp_path / "runs" / "gpu2")
    os.symlink("..", tmp_path / "other" / "up")  # a loop: runs/gpu2/up/runs/gpu2/...
    result = pytester.runpytest(f"--tais-replay={tmp_path / 'runs'}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["u *FAIL*", "tais: 1/2 task(s) equivalent"])


def test_a_dangling_symlink_in_a_replay_folder_is_a_usage_error(pytester, tmp_path):
    (tmp_path / "runs").mkdir()
    _good(tmp_path / "runs" / "t.jsonl")
    os.symlink("../gone.jsonl", tmp_path / "runs" / "u.jsonl")
    _usage_error(
        pytester.runpytest(f"--tais-replay={tmp_path / 'runs'}"),
        f"--tais-replay: {tmp_path / 'runs' / 'u.jsonl'} is a dangling symlink (to ../gone.jsonl); fix or remove the link",
    )


# -- 4. repeated flags ----------------------------------------------------------------------------
def test_a_repeated_replay_flag_is_a_usage_error(pytester):
    _leak(pytester.path / "leak.jsonl")
    _good(pytester.path / "good.jsonl")
    _usage_error(
        pytester.runpytest("--tais-replay=leak.jsonl", "--tais-replay=good.jsonl"),
        "--tais-replay is given 2 times ('leak.jsonl' and 'good.jsonl'); give it once",
    )
    _usage_error(
        pytester.runpytest("--tais-replay", "leak.jsonl", "--tais-replay=good.jsonl"), "--tais-replay is given 2 times*"
    )


def test_a_repeated_list_option_names_the_comma_list(pytester):
    _good(pytester.path / "good.jsonl")
    _usage_error(
        pytester.runpytest("--tais-replay=good.jsonl", "--tais-tasks=t", "--tais-tasks=u"),
        "--tais-tasks is given 2 times ('t' and 'u'); give it once; for several, give one comma-separated value (--tais-tasks=t,u)",
    )


def test_the_command_line_still_overrides_addopts(pytester):
    _leak(pytester.path / "leak.jsonl")
    _good(pytester.path / "good.jsonl")
    pytester.makeini("[pytest]\naddopts = --tais-replay=good.jsonl\n")
    assert pytester.runpytest("--tais-replay=leak.jsonl").ret == pytest.ExitCode.TESTS_FAILED


# -- 5. a test that never asks for the verdict ----------------------------------------------------
def test_a_tais_task_test_that_never_asks_for_a_verdict_fails(pytester):
    _leak(pytester.path / "leak.jsonl")
    pytester.makepyfile(test_gate="def test_safety(tais_task):\n    pass\n")
    result = pytester.runpytest("--tais-replay=leak.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*tais task 't' was screened but test_gate.py::test_safety[[]t[]] never asked for its verdict: "
            "call tais_equivalent(tais_task) (or tais_task.verdict()) in the test*",
            "*1 failed*",
        ]
    )
    assert "no task was screened" not in result.stdout.str()


def test_a_tais_task_test_that_asks_for_the_verdict_still_passes(pytester):
    _good(pytester.path / "good.jsonl")
    pytester.makepyfile(test_gate="def test_safety(tais_task):\n    assert tais_task.verdict().status == 'pass'\n")
    assert pytester.runpytest("--tais-replay=good.jsonl").ret == 0


# -- unclear inputs: each names the input and the fix ---------------------------------------------
def _as_user_without_read_permission(cwd: Path, *args: str):
    """pytest in a child that obeys permission bits (root: without CAP_DAC_OVERRIDE/READ_SEARCH)."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    preexec = _drop_file_permission_override if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        preexec_fn=preexec,
    )


def test_an_unreadable_replay_file_is_a_usage_error_naming_it(tmp_path):
    path = _good(tmp_path / "good.jsonl")
    path.chmod(0)
    try:
        proc = _as_user_without_read_permission(tmp_path, f"--tais-replay={path}")
    finally:
        path.chmod(0o644)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ERROR: {path}: cannot be read (Permission denied); make it readable (chmod)" in proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_an_unreadable_folder_in_a_replay_folder_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "runs" / "gpu2").mkdir(parents=True)
    _good(tmp_path / "runs" / "t.jsonl")
    _leak(tmp_path / "runs" / "gpu2" / "u.jsonl", task="u")
    (tmp_path / "runs" / "gpu2").chmod(0)
    try:
        proc = _as_user_without_read_permission(tmp_path, f"--tais-replay={tmp_path / 'runs'}")
    finally:
        (tmp_path / "runs" / "gpu2").chmod(0o755)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ERROR: --tais-replay: {tmp_path / 'runs' / 'gpu2'} cannot be read (Permission denied)" in proc.stderr
    assert "INTERNALERROR" not in proc.stdout + proc.stderr


def test_an_existing_file_as_report_folder_is_refused_before_the_run(pytester):
    _good(pytester.path / "good.jsonl")
    (pytester.path / "report.txt").write_text("keep me")
    _usage_error(
        pytester.runpytest("--tais-replay=good.jsonl", "--tais-report=report.txt"),
        f"--tais-report={pytester.path / 'report.txt'} is a file; it names the folder that report.json, *: give a folder*",
    )
    assert (pytester.path / "report.txt").read_text() == "keep me"


MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_a_folder_as_record_file_is_refused_before_generating(pytester):
    (pytester.path / "out").mkdir()
    result = pytester.runpytest(
        f"--tais-target={MODELS / 'target'}",
        f"--tais-draft={MODELS / 'draft-canonical'}",
        "--tais-backend=hf",
        "--tais-battery=example",
        "--tais-limit=1",
        "--tais-record=out",
    )
    _usage_error(
        result,
        f"--tais-record={pytester.path / 'out'}: is a folder; give the replay file to write, e.g. "
        f"--tais-record={pytester.path / 'out' / 'outputs.jsonl'}",
    )
    assert "engine" not in result.stdout.str().lower() or "passed" not in result.stdout.str()


def test_an_ordinary_draft_with_eagle3_blames_the_draft_before_any_engine_starts(pytester):
    result = pytester.runpytest(
        f"--tais-target={MODELS / 'target'}",
        f"--tais-draft={MODELS / 'draft-canonical'}",
        "--tais-spec-method=eagle3",
        "--tais-battery=example",
        "--tais-limit=1",
    )
    _usage_error(
        result,
        f"--tais-draft: {MODELS / 'draft-canonical'} is an ordinary model (LlamaForCausalLM), not an EAGLE-3 "
        "head; --tais-spec-method=eagle3 needs a head trained for it *; screen an ordinary draft with "
        "--tais-spec-method=draft_model",
    )


def test_an_eagle3_head_is_still_accepted(pytester):
    from tests.engine_models import engine_settings_from_config

    config = pytester.parseconfig(
        f"--tais-target={MODELS / 'target'}", f"--tais-draft={MODELS / 'eagle3'}", "--tais-spec-method=eagle3"
    )
    assert engine_settings_from_config(config).spec_method == "eagle3"


def test_ids_that_differ_in_unicode_normalisation_are_shown_escaped(pytester):
    lines = replay_lines("t", 3, 3)
    for r in lines:
        r["prompt_id"] = r["prompt_id"] + ("caf\u00e9" if r["arm"] == "target" else "cafe\u0301")
    write_jsonl(pytester.path / "r.jsonl", lines)
    result = pytester.runpytest("--tais-replay=r.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*some ids differ only in Unicode normalisation ('t-000cafe\\u0301' vs 't-000caf\\xe9'; *): "
            "write every id in one form (NFC) in both arms*"
        ]
    )


def test_a_sample_index_out_of_range_is_named(pytester):
    lines = []
    for r in replay_lines("t", 3, 3):
        for i in range(2):
            lines.append(dict(r, sample=i, seed=i))
    for r in lines:
        if r["arm"] == "speculative" and r["prompt_id"] == "t-001" and r["sample"] == 1:
            r["sample"] = 2
    write_jsonl(pytester.path / "r.jsonl", lines)
    result = pytester.runpytest("--tais-replay=r.jsonl")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*speculative t-001: 2 of 2 (missing samples [[]1[]], sample indexes [[]2[]] outside 0..1)*"
            "(K = 2, the most any prompt has; indexes count from 0)*"
        ]
    )
