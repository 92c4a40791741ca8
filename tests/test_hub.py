"""Models by hub id: ``org/name[@REVISION]`` resolved from a hub cache built on disk, offline.

No machine here reaches the hub: each test builds the cache huggingface_hub would have written
(``models--ORG--NAME/refs/main`` and ``snapshots/SHA/`` holding symlinks to the bundled models)
and runs with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_tais.engines.fingerprint import HashMemo, model_identity
from pytest_tais.records.hub import HubError, resolve_model, snapshot_identity
from tests.conftest import RULES

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "fixtures" / "models"
TARGET_SHA = "1" * 8 + "a" * 32
DRAFT_SHA = "2" * 8 + "b" * 32
OLD_SHA = "3" * 8 + "c" * 32


def _snapshot(cache: Path, repo_id: str, sha: str, source: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in source.iterdir():  # huggingface_hub links snapshot files to blobs; links to the fixtures do the same
        (snap / f.name).symlink_to(f)
    for ref in refs:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(sha)
    return snap


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    _snapshot(cache, "tiny-org/target", TARGET_SHA, MODELS / "target", refs=("main", "v1"))
    _snapshot(cache, "tiny-org/target", OLD_SHA, MODELS / "target", refs=())
    _snapshot(cache, "tiny-org/draft", DRAFT_SHA, MODELS / "draft-canonical")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


def test_ids_resolve_to_their_snapshot_and_commit(hub: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    main = resolve_model("--tais-target", "tiny-org/target", root)
    assert (main.folder, main.repo_id, main.revision, main.commit) == (
        hub / "models--tiny-org--target" / "snapshots" / TARGET_SHA,
        "tiny-org/target",
        None,
        TARGET_SHA,
    )
    assert resolve_model("--tais-target", "tiny-org/target@v1", root).commit == TARGET_SHA  # a tag
    assert resolve_model("--tais-target", f"tiny-org/target@{OLD_SHA}", root).commit == OLD_SHA  # a commit
    assert resolve_model("--tais-draft", "tiny-org/draft@main", root).commit == DRAFT_SHA


def test_an_unknown_revision_or_repo_names_the_id_and_the_fetch_command(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(
        HubError,
        match=r"tiny-org/target@nope.*revision 'nope'.*cached revisions: main, v1.*hf download tiny-org/target --revision nope",
    ):
        resolve_model("--tais-target", "tiny-org/target@nope", tmp_path)
    with pytest.raises(
        HubError,
        match=r"--tais-draft=nobody/missing: nobody/missing is not in the hub cache .*HF_HUB_OFFLINE.*hf download nobody/missing",
    ):
        resolve_model("--tais-draft", "nobody/missing", tmp_path)


def test_a_local_folder_wins_over_an_id_of_the_same_name(hub: Path, tmp_path: Path) -> None:
    local = tmp_path / "tiny-org" / "target"
    local.mkdir(parents=True)
    assert resolve_model("--tais-target", "tiny-org/target", tmp_path).folder == local
    # An absolute path or ./relative one is never read as an id.
    assert resolve_model("--tais-target", str(MODELS / "target"), tmp_path).folder == MODELS / "target"
    assert resolve_model("--tais-target", "./not/here", tmp_path).folder == tmp_path / "not" / "here"


def test_the_fingerprint_records_repo_id_and_commit_beside_the_file_hashes(hub: Path, tmp_path: Path) -> None:
    snap = resolve_model("--tais-target", "tiny-org/target", tmp_path).folder
    ident = model_identity(snap, HashMemo(None))
    local = model_identity(MODELS / "target", HashMemo(None))
    assert (ident["repo_id"], ident["commit"]) == ("tiny-org/target", TARGET_SHA)
    assert ident["sha256"] == local["sha256"]  # the same files, the same content hash
    assert "repo_id" not in local and snapshot_identity(MODELS / "target") is None


TEST_FILE = """
def test_gate(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ("--tais-target=tiny-org/target@nope", "--tais-draft=tiny-org/draft"),
            "*--tais-target=tiny-org/target@nope*revision 'nope'*",
        ),
        (
            ("--tais-target=tiny-org/target", "--tais-draft=nobody/missing"),
            "*--tais-draft=nobody/missing*not in the hub cache*hf download nobody/missing*",
        ),
        (
            ("--tais-target=tiny-org/target", "--tais-draft=tiny-org/draft", "--tais-judge=model:nobody/judge"),
            "*nobody/judge is not in the hub cache*",
        ),
    ],
)
def test_unresolvable_ids_are_usage_errors(pytester: pytest.Pytester, hub: Path, args, expected) -> None:
    pytester.makepyfile(test_gate=TEST_FILE)
    result = pytester.runpytest("--tais-backend=hf", "--tais-battery=example", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


@pytest.mark.hf
@pytest.mark.slow
def test_a_run_on_hub_ids_passes_and_its_report_carries_the_commits(pytester: pytest.Pytester, hub: Path) -> None:
    pytester.makepyfile(test_gate=TEST_FILE)
    # In a subprocess: torch cannot be imported twice in one process, and an in-process run drops its modules.
    result = pytester.runpytest_subprocess(
        RULES,
        "--tais-backend=hf",
        "--tais-target=tiny-org/target",
        f"--tais-draft=tiny-org/draft@{DRAFT_SHA}",
        "--tais-battery=example",
        "--tais-tasks=harmful",
        "--tais-limit=90",
        "--tais-max-tokens=8",
        "--tais-report=out",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"*tais target: tiny-org/target@{TARGET_SHA[:12]} (*", f"*draft tiny-org/draft@{DRAFT_SHA[:12]} (*"]
    )
    fps = json.loads((pytester.path / "out" / "report.json").read_text())["engines"]["fingerprints"]
    assert (fps["target"]["model"]["repo_id"], fps["target"]["model"]["commit"]) == ("tiny-org/target", TARGET_SHA)
    assert fps["speculative"]["speculation"]["draft"]["commit"] == DRAFT_SHA


def test_a_judge_model_is_resolved_by_id_too(hub: Path, tmp_path: Path) -> None:
    from pytest_tais.engines.judge_engine import judge_settings
    from pytest_tais.setup.engine import SettingsError

    s = judge_settings("tiny-org/target@v1", None, rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=True)
    assert s.target == hub / "models--tiny-org--target" / "snapshots" / TARGET_SHA
    with pytest.raises(SettingsError, match="revision 'nope'"):
        judge_settings("tiny-org/target@nope", None, rootdir=tmp_path, cache_dir=tmp_path / "c", no_cache=True)


# -- issue 29: what the terminal prints is taken back; incomplete snapshots say so ------------------
def test_a_printed_short_commit_is_taken_back(hub: Path, tmp_path: Path) -> None:
    printed = f"tiny-org/target@{TARGET_SHA[:12]}"  # as describe() prints it
    resolved = resolve_model("--tais-target", printed, tmp_path)
    assert resolved.commit == TARGET_SHA
    from pytest_tais.records.hub import describe

    assert describe(resolved.folder) == printed


def test_an_incomplete_snapshot_is_named_as_such(hub: Path, tmp_path: Path) -> None:
    repo_dir = hub / "models--tiny-org--half"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("4" * 40)  # the ref arrived, the snapshot folder did not
    with pytest.raises(
        HubError,
        match=r"tiny-org/half: incomplete snapshot in the hub cache .*: revision 'main' is commit "
        r"444444444444, whose snapshot folder is missing \(an interrupted download\?\); fetch it again "
        r"with `hf download tiny-org/half",
    ):
        resolve_model("--tais-target", "tiny-org/half", tmp_path)
    snap = _snapshot(hub, "tiny-org/broken", "5" * 40, MODELS / "target")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(hub / "blobs-never-arrived")
    with pytest.raises(
        HubError,
        match=r"tiny-org/broken: incomplete snapshot .*1 file\(s\) point at missing blobs \(model.safetensors\)",
    ):
        resolve_model("--tais-target", "tiny-org/broken", tmp_path)
