"""The generation store: addressing, atomic appends, recovery after an interrupted write, locking."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from pytest_tais.records.store import GenerationStore, StoredOutput, StoreError, fingerprint_key, prompt_key

FP = {"schema": 1, "model": {"sha256": "ab" * 32}, "dtype": "float32", "seed": 0}


def _out(i: int) -> StoredOutput:
    return StoredOutput(
        prompt=f"prompt {i} \u00e9", text=f"answer {i}\n\u2014 done", token_ids=(i, i + 1, 2), finish_reason="stop"
    )


def test_roundtrip_and_addresses(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    with store.lock():
        assert shard.append(_out(i) for i in range(5)) == 5
    got = shard.read()
    assert set(got) == {prompt_key(f"prompt {i} \u00e9") for i in range(5)}
    assert got[prompt_key("prompt 3 \u00e9")] == _out(3)
    # The fingerprint is kept next to the shard, and the address ignores key order.
    assert json.loads(shard.meta_path.read_text()) == FP
    assert fingerprint_key(dict(reversed(list(FP.items())))) == shard.key


def test_an_append_fsyncs_once_for_its_lines(tmp_path: Path, monkeypatch) -> None:
    from pytest_tais.records import store as store_mod

    synced = []
    real = os.fsync
    monkeypatch.setattr(store_mod.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real(fd))[1])
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    with store.lock():
        shard.append([_out(0)])  # the first append also writes the fingerprint file, fsynced on its own
        synced.clear()
        assert shard.append(_out(i) for i in range(1, 300)) == 299
        assert synced == [shard.path.stat().st_size]  # one fsync, after the last line
        assert shard.append([]) == 0 and len(synced) == 1
    assert len(shard.read()) == 300


def test_changed_fingerprint_is_another_shard(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    with store.lock():
        store.shard(FP).append([_out(1)])
    other = store.shard({**FP, "dtype": "bfloat16"})
    assert other.path != store.shard(FP).path
    assert other.read() == {}


def test_half_written_last_line_is_ignored_then_cut_never_duplicated(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    with store.lock():
        shard.append(_out(i) for i in range(3))
    whole = shard.path.read_bytes()
    # An interrupted writer left the first half of a fourth line.
    partial = _out(3).to_line()
    shard.path.write_bytes(whole + partial[: len(partial) // 2])
    got = shard.read()
    assert set(got) == {prompt_key(_out(i).prompt) for i in range(3)}
    with store.lock():
        shard.append([_out(3), _out(4)])
    data = shard.path.read_bytes()
    assert data == whole + _out(3).to_line() + _out(4).to_line()
    lines = data.decode().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)
    assert shard.read()[prompt_key(_out(3).prompt)] == _out(3)


def test_partial_file_without_any_newline_is_cut_whole(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    shard.path.write_bytes(_out(0).to_line()[:10])
    assert shard.read() == {}
    with store.lock():
        shard.append([_out(1)])
    assert shard.path.read_bytes() == _out(1).to_line()


def test_damaged_whole_line_is_an_error_naming_the_file(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    with store.lock():
        shard.append([_out(0)])
    shard.path.write_bytes(shard.path.read_bytes() + b'{"k": "x", "prompt": "p"\n')
    with pytest.raises(StoreError, match=r"\.jsonl:2: damaged store line.*delete"):
        shard.read()


def test_line_whose_key_does_not_match_its_prompt_is_damage(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    line = json.loads(_out(0).to_line())
    line["prompt"] = "edited by hand"
    shard.path.write_text(json.dumps(line) + "\n")
    with pytest.raises(StoreError, match="key does not match"):
        shard.read()


def test_first_line_wins_for_a_repeated_prompt(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    shard = store.shard(FP)
    first = _out(0)
    second = StoredOutput(first.prompt, "another answer", (9,), "length")
    with store.lock():
        shard.append([first, second])
    assert shard.read()[prompt_key(first.prompt)] == first


def test_engine_start_log(tmp_path: Path) -> None:
    store = GenerationStore(tmp_path)
    assert store.engine_starts() == []
    with store.lock():
        store.log_engine_start({"arm": "target", "prompts": 3})
        store.log_engine_start({"arm": "speculative", "prompts": 3})
    log = store.engine_starts()
    assert [e["arm"] for e in log] == ["target", "speculative"]
    assert all(e["pid"] == os.getpid() and e["time"] > 0 for e in log)
    store.starts_path.write_text("[not json")
    with pytest.raises(StoreError, match="engine-starts.json: damaged"):
        store.engine_starts()


def _writer(root: str, worker: int, n: int) -> None:
    store = GenerationStore(root)
    shard = store.shard(FP)
    for i in range(n):
        with store.lock():
            shard.append([_out(worker * 1000 + i)])


def test_concurrent_writers_and_a_reader_see_whole_lines_only(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    shard = GenerationStore(tmp_path).shard(FP)
    seen = 0
    while any(p.is_alive() for p in procs):
        got = shard.read()  # no lock: must never raise on a line being written
        assert len(got) >= seen
        seen = len(got)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    got = shard.read()
    assert len(got) == 120
    assert len(shard.path.read_bytes().splitlines()) == 120
    assert got[prompt_key(_out(2039).prompt)] == _out(2039)
