"""Reading replay files: the fast JSON parser and the stdlib one accept the same lines."""

from __future__ import annotations

import json

import pytest

from pytest_tais.records import files as records
from pytest_tais.records.generation import Generation, RecordError, read_generations
from pytest_tais.records.files import iter_json_lines


def _line(**kw) -> dict:
    rec = {"task": "t", "prompt_id": "p1", "prompt": "q", "arm": "target", "text": "a"}
    rec.update(kw)
    return rec


@pytest.fixture(params=["orjson", "json"])
def parser(request, monkeypatch):
    """Each file-reading test runs on both paths: orjson (the `fast` extra, which scripts/setup.sh
    installs) and the stdlib fallback that runs where orjson is not installed."""
    if request.param == "orjson":
        pytest.importorskip("orjson", reason="the `fast` extra is not installed: pip install -e '.[fast]'")
        assert records._fast_loads is not None
    else:
        monkeypatch.setattr(records, "_fast_loads", None)
    return request.param


def test_lines_orjson_rejects_are_read_by_json(tmp_path, parser):
    path = tmp_path / "r.jsonl"
    # NaN and an integer beyond 64 bits: json takes them, orjson does not.
    path.write_text('{"x": NaN}\n\n{"x": 18446744073709551616}\n{"x": "caf\\u00e9 \\u6e29"}\n', encoding="utf-8")
    got = [obj["x"] for _, obj in iter_json_lines(path, RecordError)]
    assert got[0] != got[0] and got[1] == 2**64 and got[2] == "café 温"
    assert [w for w, _ in iter_json_lines(path, RecordError)][-1].endswith("r.jsonl:4")
    # A lone surrogate is not text: both parsers end in the same error.
    path.write_text('{"x": "\\ud800"}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"r\.jsonl:1: a \\u escape stands for a lone UTF-16 surrogate"):
        list(iter_json_lines(path, RecordError))


def test_both_parsers_read_the_same_records(tmp_path, monkeypatch):
    pytest.importorskip("orjson", reason="the `fast` extra is not installed: pip install -e '.[fast]'")
    path = tmp_path / "r.jsonl"
    lines = [
        _line(text="caf\u00e9 \u6e29 \U0001f600\n- item", token_ids=[1, 2**33]),
        _line(prompt_id=7, arm="speculative"),
        _line(
            prompt_id="p2", meta={"canary": True, "x": [1.5, None]}, metric="accuracy", expected="42", sample=1, seed=9
        ),
    ]
    path.write_text(
        "".join(json.dumps(l, ensure_ascii=i % 2 == 0) + "\n" for i, l in enumerate(lines)) + "\n", encoding="utf-8"
    )
    fast = list(read_generations(path))
    monkeypatch.setattr(records, "_fast_loads", None)
    assert list(read_generations(path)) == fast and len(fast) == 3 and fast[0].text.endswith("\U0001f600\n- item")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"task": \n', r"r\.jsonl:1: not valid JSON \(Expecting value\)"),
        (
            b'\n{"text": "caf\xe9"}\n',
            r"r\.jsonl:2: not UTF-8 text \(byte 0xe9 at byte 14 of the line\); save the file as UTF-8",
        ),
    ],
)
def test_bad_lines_name_file_line_and_fix(tmp_path, content, message, parser):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordError, match=message):
        list(iter_json_lines(path, RecordError))


def test_generations_share_the_strings_both_arms_repeat(tmp_path, parser):
    path = tmp_path / "r.jsonl"
    lines = [
        _line(prompt="x" * 50, text="same answer"),
        _line(prompt="x" * 50, arm="speculative", text="b", meta={"canary": True}),
        _line(prompt_id="p2", text="same answer"),
    ]
    path.write_text("".join(json.dumps(l) + "\n" for l in lines), encoding="utf-8")
    a, b, c = read_generations(path)
    assert a.prompt is b.prompt and a.prompt_id is b.prompt_id and a.task is b.task and a.text is c.text
    assert next(read_generations(path)).prompt is not a.prompt  # shared within one read only
    assert dict(a.meta) == {} and b.meta == {"canary": True}
    assert Generation.from_json(a.to_json()) == a and b.to_json()["meta"] == {"canary": True}
    with pytest.raises(RecordError, match="'meta' must be an object"):
        Generation.from_json(_line(meta=[1]))


def test_gc_paused_restores_the_collector_even_on_error():
    import gc

    assert gc.isenabled()
    with pytest.raises(RecordError):
        with records.gc_paused():
            assert not gc.isenabled()
            raise RecordError("x")
    assert gc.isenabled()
    gc.disable()
    try:
        with records.gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own setting is left as it was
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1], "expected a JSON object, got list"),
        ({"task": "t", "prompt_id": "p", "prompt": "q", "arm": "target"}, "missing key 'text'"),
        (_line(text=3), "'text' must be a string"),
        (_line(prompt_id=True), "'prompt_id' must be a string"),
        (_line(arm="draft"), "'arm' is 'draft'; use 'target' or 'speculative'"),
        (_line(token_ids=[1, "2"]), "'token_ids' must be a list of integers"),
    ],
)
def test_malformed_records_are_named(obj, message):
    with pytest.raises(RecordError, match=f"x.jsonl:3: {message}"):
        Generation.from_json(obj, "x.jsonl:3")


def test_integer_prompt_ids_and_token_ids_are_read():
    g = Generation.from_json(_line(prompt_id=7, token_ids=[5, 6]))
    assert g.prompt_id == "7" and g.token_ids == (5, 6) and g.meta == {}
    # Held compactly (4 bytes a token), yet equal to, hashed and sliced like the tuple it was.
    assert g.token_ids.itemsize == 4 and hash(g.token_ids) == hash((5, 6)) and list(g.token_ids[:1]) == [5]
    assert g == Generation(g.task, "7", g.prompt, g.arm, g.text, token_ids=(5, 6))
    big = Generation.from_json(_line(token_ids=[2**40, 1]))
    assert list(big.token_ids) == [2**40, 1]


@pytest.mark.parametrize("bad", [[1.5], [True], ["3"], [2**70], "1,2", {"a": 1}])
def test_token_ids_that_are_not_integers_are_refused(bad):
    with pytest.raises(RecordError, match="'token_ids' must be a list of integers"):
        Generation.from_json(_line(token_ids=bad))
