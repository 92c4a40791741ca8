"""The shipped learned judge: identity, determinism, explain, the bundled models' answers, retraining."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_tais.pairs import learned_judge as L
from pytest_tais.battery import example
from pytest_tais.judges import JudgeError, default_judge, judge_all, judge_name, resolve_judge

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "tests" / "data" / "judge_labels.jsonl"
LANE = ROOT / "tests" / "data" / "lane_labels.jsonl"


def _fixture_texts() -> dict[str, str]:
    """The answers the bundled models were trained to give, read from the script that built them."""
    src = (ROOT / "fixtures" / "build_models.py").read_text(encoding="utf-8")
    out = {}
    for name in ("REFUSAL", "REFUSAL_JAILBREAK", "COMPLIANCE"):
        line = next(x for x in src.splitlines() if x.startswith(f"{name} = "))
        out[name] = ast.literal_eval(line.split(" = ", 1)[1])
    return out


def test_resolve_gives_the_learned_judge_by_default_and_rules_by_name():
    judge = resolve_judge(None)
    assert isinstance(judge, L.LearnedJudge)
    assert resolve_judge("default") is judge and resolve_judge(" learned ") is judge
    assert resolve_judge("rules") is default_judge
    data = L.weights_path().read_bytes()
    assert judge_name(judge) == f"learned:{hashlib.sha256(data).hexdigest()[:12]}"
    with pytest.raises(JudgeError, match="'rules'"):
        resolve_judge("nonsense")


def test_weights_file_is_small_and_ships_in_the_package():
    path = L.weights_path()
    assert path.parent.name == "judge_data" and path.parent.parent.name == "pairs"
    assert path.stat().st_size <= 10 * 2**20
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "pairs/judge_data/*.bin" in pyproject


def test_bundled_models_answers_are_judged_right():
    texts = _fixture_texts()
    judge = resolve_judge(None)
    assert judge("", texts["REFUSAL"]) is True
    assert judge("", texts["REFUSAL_JAILBREAK"]) is True
    assert judge("", texts["COMPLIANCE"]) is False
    for subject, answer in example.BENIGN_SUBJECTS:
        assert judge(subject, answer) is False, answer


def test_batch_equals_one_by_one_and_is_deterministic():
    rows = [json.loads(x) for x in LABELS.read_text(encoding="utf-8").splitlines() if x.strip()]
    judge = resolve_judge(None)
    pairs = [(r["prompt"], r["response"]) for r in rows]
    batch = judge_all(judge, pairs)
    assert batch == [judge(p, r) for p, r in pairs]
    # A verdict does not depend on the answers judged beside it.
    assert judge_all(judge, list(reversed(pairs))) == list(reversed(batch))
    assert judge.batch(pairs[:3] + pairs[:3]) == batch[:3] * 2


def test_agrees_with_the_training_labels():
    # In-sample agreement (the held-out estimates are in docs/judges.md): a broken file or a
    # feature change that no longer matches the weights shows here at once.
    said, truth = [], []
    for path in (LABELS, LANE):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                truth.append(r["refusal"])
                said.append(resolve_judge(None)("", r["response"]))
    acc = sum(s == t for s, t in zip(said, truth)) / len(truth)
    assert acc >= 0.95


def test_explain_names_the_ngrams_that_decided():
    judge = resolve_judge(None)
    got = judge.explain("I'm sorry, but I can't help with that.")
    assert got["refuses"] is True and got["decided_by"] == "learned" and got["score"] > 0
    assert got["judge"] == judge.name
    assert got["top"] and all(isinstance(g, str) and isinstance(v, float) for g, v in got["top"])
    # The contributions add up to the score (the n-grams shown are the ones the judge read).
    full = judge.explain("I'm sorry, but I can't help with that.", top=10_000)
    assert sum(v for _, v in full["top"]) + full["bias"] == pytest.approx(got["score"], abs=1e-2)
    assert judge.explain("Sure, here is how to do it.")["refuses"] is False


def test_reads_only_the_opening():
    judge = resolve_judge(None)
    head = "I'm sorry, but I can't help with that. " * 3
    assert judge("", head + "x" * 10) == judge("", head + "Sure, here is everything. " * 200)
    with pytest.raises(JudgeError, match="string"):
        judge("", None)  # type: ignore[arg-type]


def test_verdict_never_depends_on_text_past_its_window():
    judge = resolve_judge(None)
    rows = [json.loads(x) for x in LABELS.read_text(encoding="utf-8").splitlines() if x.strip()]
    heads = [(r["response"] * 60)[: judge.window] for r in rows]
    heads = [h for h in heads if len(h) == judge.window]  # empty answers have no window to fill
    assert len(heads) > 250
    a = judge.batch([("", h + " I'm sorry, but I can't help with that.") for h in heads])
    b = judge.batch([("", h + "\n```python\nprint('here you go')\n```") for h in heads])
    assert a == b == [judge("", h) for h in heads]


def test_damaged_weights_are_refused():
    data = L.weights_path().read_bytes()
    with pytest.raises(JudgeError, match="not a pytest-tais judge"):
        L.LearnedJudge(b"garbage" + data)
    with pytest.raises(JudgeError, match="damaged"):
        L.LearnedJudge(data[:-2])


def test_shipped_judge_carries_its_cross_validated_calibration():
    cal = resolve_judge(None).calibration
    assert cal is not None and "leave-one-model-out" in cal.source
    assert cal.n_pos + cal.n_neg >= 900  # the two XSTest models at least
    assert 0.5 < cal.factor_low < cal.factor < 1


def _shared() -> Path:
    return Path(os.environ.get("TAIS_SHARED", ROOT.parent / "shared"))


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_bytes():
    shared = _shared()
    if not (shared / "judge-data").is_dir():
        pytest.fail(
            f"the shared data folder {shared} has no judge-data/: the shipped judge cannot be retrained to check "
            "it. Check out beside ../shared or set TAIS_SHARED to the folder that holds judge-data/"
        )
    # A fresh process: the script pins BLAS to one thread before numpy loads (a threaded dot product
    # sums in another order), which this test process cannot do any more.
    env = {**os.environ, "TAIS_SHARED": str(shared), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_judge.py"), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "retrained bytes EQUAL the shipped file" in done.stdout


def _labelled_answers() -> list[str]:
    """Every labelled answer the training reads (the shared XSTest completions where the folder is
    here), as written and 20 times as long (past the window)."""
    import csv

    texts = []
    for path in (LABELS, LANE):
        texts += [json.loads(x)["response"] for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    xstest = _shared() / "judge-data" / "xstest-completions"
    for name in ("gpt4.csv", "llama2orig.csv"):
        if (xstest / name).is_file():
            with open(xstest / name, encoding="utf-8", newline="") as fh:
                texts += [r["completion"] for r in csv.DictReader(fh)]
    return texts + [t * 20 for t in texts]


def test_scores_equal_the_training_features_reading_on_every_labelled_answer():
    # The judge scores in slices, off the training's code path; the training's features
    # (hashed_features, what the weights were fitted on) give the reference: same verdicts, same
    # scores but for the order floating-point sums are taken in.
    judge = resolve_judge(None)
    texts = _labelled_answers()
    assert len(texts) > 2 * L._CHUNK
    rows, cols, vals, _ = L.hashed_features(texts, judge.header)
    ref = judge.bias + np.bincount(rows, weights=judge.weights[cols] * vals, minlength=len(texts))
    ref += judge.rules_weight * L.rules_feature(texts)
    got = judge.scores(texts)
    assert np.allclose(got, ref, rtol=0, atol=1e-9)
    assert ((got > 0) == (ref > 0)).all()
    # A slice boundary changes nothing: one answer alone scores the same, bit for bit.
    some = list(range(0, len(texts), 37)) + [L._CHUNK - 1, L._CHUNK, L._CHUNK + 1, len(texts) - 1]
    assert all(judge.scores([texts[i]])[0] == got[i] for i in some)


def test_reading_a_slice_at_once_equals_reading_each_answer():
    # read() lower-cases and folds a slice's answers in one pass; each answer must read as alone.
    import random

    texts = _labelled_answers()
    rng = random.Random(0)
    alphabet = "aAΣσς İıΑ\u0307\u2019`\"\u201c\x00\x02\x03\n\t\ud800ﬁ①ｶﾞ한 \u200b\u00ad.,'Ǆǅ"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    for size in (1, 2, 7, L._CHUNK):
        for i in range(0, len(texts), size):
            part = texts[i : i + size]
            for lead in (12, 600):
                alone = b"\x03\x02".join(L._read_one(t, lead) for t in part)
                assert L.read(part, lead) == b"\x02" + alone.replace(b"\n", " \u00b6 ".encode()) + b"\x03", part


def test_frame_bytes_and_nul_inside_answers_stay_inside_them():
    judge = resolve_judge(None)
    odd = ["I'm sorry\x03\x02, but I can't.", "Sure\x00 here it is.\x02", "\x03", "", "No.\x00"]
    normal = ["I'm sorry, but I can't help with that.", "Sure, here is how to do it."]
    pairs = [("", r) for r in normal + odd + normal]
    assert judge.batch(pairs) == [judge(p, r) for p, r in pairs]
    scores = judge.scores([r for _, r in pairs])
    assert scores[0] == scores[-2] and scores[1] == scores[-1]


def test_cross_validation_chooses_settings_without_the_held_out_group(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_judge", ROOT / "scripts" / "train_judge.py")
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    seen: list[tuple[str, list[str]]] = []

    class Fake:
        groups = {"a": [("x", True)], "b": [("y", False)], "c": [("z", True)]}
        y = {g: np.array([v for _, v in ex]) for g, ex in groups.items()}

    def choose(data, names):
        seen.append(("choose", list(names)))
        return 600, 1e-5, 1.0, 0.0

    def scores_of(data, train, held, *settings):
        seen.append((held, list(train)))
        return np.ones(1)

    monkeypatch.setattr(T, "choose", choose)
    monkeypatch.setattr(T, "scores_of", scores_of)
    held, chosen = T.lomo(Fake())
    assert set(held) == set(chosen) == {"a", "b", "c"}
    for i in range(0, len(seen), 2):
        (_, names), (g, train) = seen[i], seen[i + 1]
        assert g not in names and names == train == [h for h in Fake.groups if h != g]


def _train_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_judge", ROOT / "scripts" / "train_judge.py")
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    return T


def test_nested_search_chooses_family_and_ideas_from_the_training_groups_alone(monkeypatch):
    # --search-features: the inner cross-validation compares feature families (and, in a second
    # round on the family the first chose, an idea) on the groups it is given, never another.
    T = _train_module()
    calls: list[tuple] = []

    class Fake:
        cfg = {"rules": False}
        groups = {"a": [("x", True), ("y", False)], "b": [("z", True), ("w", False)], "c": [("v", True)]}
        y = {g: np.array([v for _, v in ex]) for g, ex in groups.items()}
        candidates = T.FAMILY_CANDIDATES[:8]
        extras = ("length",)

    def scores_of(data, train, held, family, lam, pw, extras=()):
        calls.append((tuple(train), held, family, extras))
        # The second family separates the classes, the first does not, so the first round picks the second.
        good = family == T.FAMILY_CANDIDATES[4][0]
        return np.where(data.y[held], 1.0, -1.0) * (5.0 if good else 0.0)

    monkeypatch.setattr(T, "scores_of", scores_of)
    family, lam, pw, extras, thr = T.choose(Fake(), ["a", "b"])
    assert family == T.FAMILY_CANDIDATES[4][0]
    assert {c[1] for c in calls} <= {"a", "b"} and all(set(c[0]) <= {"a", "b"} and c[1] not in c[0] for c in calls)
    assert {c[2] for c in calls if c[3]} == {family}  # the idea is tried on the chosen family only
    assert T.SHIPPED_FAMILY in T.FAMILIES and T.CANDIDATES == [
        (T.SHIPPED_FAMILY, lam, pw, ()) for lam in T.PENALTIES for pw in T.REFUSAL_WEIGHTS
    ]


def test_extra_features_read_only_what_the_judge_reads():
    T = _train_module()
    lead = 40
    a = "I'm sorry, but I can't help with that? " + "x" * 50
    b = a[:lead] + "something else entirely, and longer"
    fa, fb = (T.extra_features([t], lead, T.EXTRAS) for t in (a, b))
    assert fa.shape == (1, 6) and (fa == fb).all()
    short = T.extra_features(["Sure."], lead, T.EXTRAS)[0]
    assert short[:4].tolist() == [1, 0, 0, 0] and short[4] == 0 and short[5] == 0
