"""Published benchmarks by name (``--tais-battery=advbench,xstest@REV``) from a hub cache built on disk.

No test reaches the network: each builds the dataset cache huggingface_hub would have written
(``datasets--ORG--NAME/refs/main``, ``snapshots/SHA/...``) from the benchmark copies in
../shared/benchmarks, in the layout of the repositories the names resolve to, and runs with
HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from pytest_tais.battery import BatteryError, load_battery, select_tasks

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(os.environ.get("TAIS_BENCHMARKS_DIR") or REPO.parent / "shared" / "benchmarks")
ADV_SHA = "a" * 8 + "1" * 32
XS_SHA = "b" * 8 + "2" * 32
XS_OLD = "c" * 8 + "3" * 32


def _snapshot(cache: Path, repo_id: str, sha: str, refs: tuple[str, ...] = ("main",)) -> Path:
    repo_dir = cache / ("datasets--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(sha)
    return snap


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _parquet(path: Path, rows: list[dict[str, str]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "hub-cache"


@pytest.fixture
def walled(hub: Path) -> Path:
    """walledai/AdvBench and walledai/XSTest as published: parquet, columns renamed, XSTest without ids."""
    # pyarrow is in the test extra (and the `hub` extra): without it these tests fail, never skip.
    adv = [
        {"prompt": r["goal"], "target": r["target"]}
        for r in _csv_rows(BENCHMARKS / "advbench" / "harmful_behaviors.csv")
    ]
    _parquet(_snapshot(hub, "walledai/AdvBench", ADV_SHA) / "data" / "train-00000-of-00001.parquet", adv)
    xs = [
        {k: r[k] for k in ("prompt", "focus", "type", "note", "label")}
        for r in _csv_rows(BENCHMARKS / "xstest" / "xstest_prompts.csv")
    ]
    _parquet(
        _snapshot(hub, "walledai/XSTest", XS_SHA, refs=("main", "v2")) / "data" / "test-00000-of-00001.parquet", xs
    )
    return hub


def test_names_load_the_same_tasks_as_the_local_files(walled: Path, tmp_path: Path) -> None:
    by_name = load_battery("advbench,xstest", tmp_path)
    local = load_battery(f"advbench:{BENCHMARKS / 'advbench'},xstest:{BENCHMARKS / 'xstest'}", tmp_path)
    assert [(t.name, len(t)) for t in by_name] == [("advbench", 520), ("xstest_safe", 250), ("xstest_unsafe", 200)]
    for a, b in zip(by_name, local):
        assert [(p.prompt_id, p.prompt, p.meta["should_refuse"]) for p in a.prompts] == [
            (p.prompt_id, p.prompt, p.meta["should_refuse"]) for p in b.prompts
        ]
    adv = by_name[0].provenance
    parquet = walled / "datasets--walledai--AdvBench" / "snapshots" / ADV_SHA / "data" / "train-00000-of-00001.parquet"
    assert adv == {
        "dataset": "walledai/AdvBench",
        "revision": "main",
        "commit": ADV_SHA,
        "licence": "MIT",
        "files": {"data/train-00000-of-00001.parquet": hashlib.sha256(parquet.read_bytes()).hexdigest()},
    }
    assert by_name[1].provenance["licence"] == "CC-BY-4.0"
    assert load_battery("xstest@v2", tmp_path)[0].provenance["revision"] == "v2"


def test_offline_without_the_cache_names_dataset_revision_and_fetch_command(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(
        BatteryError,
        match=r"--tais-battery=xstest@v2: dataset walledai/XSTest, revision v2: .*HF_HUB_OFFLINE"
        r".*hf download walledai/XSTest --repo-type dataset --revision v2.*xstest:PATH",
    ):
        load_battery("xstest@v2", tmp_path)
    _snapshot(hub, "walledai/XSTest", XS_OLD, refs=("main",))
    with pytest.raises(
        BatteryError, match=r"revision 'nope' of walledai/XSTest is not in the hub cache.*cached revisions: main"
    ):
        load_battery("xstest@nope", tmp_path)
    # The commit is cached but not the file the benchmark reads.
    with pytest.raises(BatteryError, match=r"holds none of .*xstest_prompts.csv.*--repo-type dataset"):
        load_battery("xstest", tmp_path)
    with pytest.raises(BatteryError, match=r"no revision after '@'"):
        load_battery("advbench@", tmp_path)


def test_a_gated_dataset_names_the_page_to_accept_its_terms(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """walledai's copies are gated: without access the hub answers 401/403, and the error says where to go."""
    import huggingface_hub
    from huggingface_hub import errors

    def gated(*args, **kwargs):
        raise errors.GatedRepoError.__new__(errors.GatedRepoError, "403 gated")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(
        BatteryError,
        match=r"--tais-battery=advbench: dataset walledai/AdvBench, revision main: walledai/AdvBench is gated; "
        r"accept its terms at "
        r"https://huggingface\.co/datasets/walledai/AdvBench and export HF_TOKEN",
    ):
        load_battery("advbench", tmp_path)


def test_a_csv_mirror_needs_no_parquet_reader_and_jbb_reads_its_csv_files(hub: Path, tmp_path: Path) -> None:
    snap = _snapshot(hub, "someone/xstest-mirror", XS_SHA)
    shutil.copy(BENCHMARKS / "xstest" / "xstest_prompts.csv", snap / "xstest_prompts.csv")
    tasks = load_battery("xstest?repo=someone/xstest-mirror&by=type", tmp_path)
    assert len(tasks) == 18 and tasks[0].provenance["dataset"] == "someone/xstest-mirror"
    jbb = _snapshot(hub, "JailbreakBench/JBB-Behaviors", ADV_SHA) / "data"
    jbb.mkdir()
    for split in ("harmful", "benign"):
        (jbb / f"{split}-behaviors.csv").write_text(
            "Index,Goal,Target,Behavior,Category,Source\n"
            + "".join(f"{i},{split} goal {i},Sure,b{i},Malware/Hacking,Original\n" for i in range(1, 4)),
            encoding="utf-8",
        )
    tasks = load_battery("jbb", tmp_path)
    assert [(t.name, len(t)) for t in tasks] == [("jbb_harmful", 3), ("jbb_benign", 3)]
    assert sorted(tasks[0].provenance["files"]) == ["data/benign-behaviors.csv", "data/harmful-behaviors.csv"]
    with pytest.raises(BatteryError, match=r"unknown option 'bogus'"):
        load_battery("jbb?bogus=1", tmp_path)


def test_the_screen_loads_both_names_offline_and_the_report_names_revisions_and_sha256(walled: Path, pytester) -> None:
    tasks = select_tasks(load_battery("advbench,xstest", pytester.path), None, 30)
    lines = []
    for t in tasks:
        for p in t.prompts:
            for arm in ("target", "speculative"):
                lines.append(
                    {
                        "task": t.name,
                        "prompt_id": p.prompt_id,
                        "prompt": p.text,
                        "arm": arm,
                        "metric": "refusal",
                        "text": "I'm sorry, but I can't help with that." if p.meta["should_refuse"] else "Sure.",
                    }
                )
    replay = pytester.path / "replay.jsonl"
    replay.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    result = pytester.runpytest(
        "--tais-battery=advbench,xstest", "--tais-limit=30", f"--tais-replay={replay}", "--tais-report=out"
    )
    result.stdout.fnmatch_lines(
        [
            f"tais: dataset walledai/AdvBench@{ADV_SHA[:12]} (MIT); data/train-00000-of-00001.parquet sha256 *",
            f"tais: dataset walledai/XSTest@{XS_SHA[:12]} (CC-BY-4.0); *",
        ]
    )
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    datasets = report["config"]["datasets"]
    assert [(d["dataset"], d["revision"], d["commit"]) for d in datasets] == [
        ("walledai/AdvBench", "main", ADV_SHA),
        ("walledai/XSTest", "main", XS_SHA),
    ]
    assert all(len(h) == 64 for d in datasets for h in d["files"].values())
    assert ADV_SHA in (pytester.path / "out" / "summary.md").read_text()


def test_harmbench_and_strongreject_parquet_layouts_map_onto_their_loaders(hub: Path, tmp_path: Path) -> None:
    snap = _snapshot(hub, "walledai/HarmBench", ADV_SHA)
    _parquet(
        snap / "standard" / "train-00000-of-00001.parquet",
        [{"prompt": f"standard {i}", "category": "illegal"} for i in range(3)],
    )
    _parquet(
        snap / "contextual" / "train-00000-of-00001.parquet",
        [
            {"prompt": f"contextual {i}", "context": f"passage {i}", "category": "cybercrime_intrusion"}
            for i in range(2)
        ],
    )
    standard, contextual = load_battery("harmbench", tmp_path)
    assert (standard.name, [p.prompt_id for p in standard.prompts]) == (
        "harmbench_standard",
        ["standard_0", "standard_1", "standard_2"],
    )
    assert contextual.prompts[1].text == "passage 1\n\n---\n\ncontextual 1"
    assert [t.name for t in load_battery("harmbench?by=category", tmp_path)] == [
        "harmbench_cybercrime_intrusion",
        "harmbench_illegal",
    ]
    snap = _snapshot(hub, "walledai/StrongREJECT", XS_SHA)
    _parquet(
        snap / "data" / "train-00000-of-00001.parquet",
        [{"prompt": f"forbidden {i}", "category": "Violence", "source": "custom"} for i in range(4)],
    )
    (task,) = load_battery("strongreject", tmp_path)
    assert (task.name, len(task), task.prompts[3].prompt) == ("strongreject", 4, "forbidden 3")
