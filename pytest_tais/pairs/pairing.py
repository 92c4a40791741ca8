"""Pairs: match two arms' outputs on (task, prompt id), check they answer the same prompt, judge them.

One path for every K: a greedy arm gives one answer per prompt, a sampled arm K (sample 0..K-1).

Used by the screen, by ``screen_task`` and by the benchmark scripts, so that a pair means the same
thing everywhere. Anything that makes a pair meaningless raises :class:`TaskError`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from . import judges
from ..battery import Prompt, Task
from ..errors import TaskError, printable
from ..records.generation import Generation
from ..records.files import gc_paused
from .record import PairRecord

#: One arm's answers: (task, prompt id) -> its answer (greedy) or sample index -> answer (sampled).
Outputs = Mapping[tuple[str, str], Any]
Matched = list[tuple[Prompt, tuple[Generation, ...], tuple[Generation, ...]]]
#: (prompt, answer, arm name) -> score; one call per task so that a batch judge sees them all.
ScoreAll = Callable[[Task, Sequence[tuple[Prompt, str, str]]], list[bool]]

_SHOWN = 3


def _ids(ids: Sequence[str]) -> str:
    more = f", ... (+{len(ids) - _SHOWN})" if len(ids) > _SHOWN else ""
    return ", ".join(printable(i) for i in ids[:_SHOWN]) + more


def _check_task(task: Task, k_hint: str, duplicates: Sequence[str], mixed: Sequence[str]) -> None:
    if not task.prompts:
        raise TaskError(f"task {task.name!r}: no prompts; a task with zero prompts cannot pass")
    if duplicates:
        what, why = (
            ("prompt ids", "each prompt must be answered once per arm")
            if k_hint == "greedy"
            else ("sample indexes", "each sample of a prompt must be answered once per arm")
        )
        raise TaskError(
            f"task {task.name!r}: duplicate {what} in the outputs ({', '.join(sorted(duplicates)[:5])}); {why}"
        )
    if mixed:
        raise TaskError(
            f'task {task.name!r}: greedy records (no "sample") and sampled ones for the same prompts '
            f"({_ids(sorted(mixed))}); a task is screened greedy or sampled, not both"
        )


def _samples(task: Task, a: Outputs, b: Outputs) -> int:
    """K of a sampled task: the most samples any prompt has, in either arm (at least 2)."""
    k = max((len(src.get((task.name, p.prompt_id), {})) for src in (a, b) for p in task.prompts), default=0)
    if k < 2:
        raise TaskError(
            f"task {task.name!r}: a sampled screen needs K >= 2 samples per prompt per arm, found at most {k}; "
            "generate with --tais-samples=K (K >= 2)"
        )
    return k


def _answers(got: Any, k: int) -> tuple[tuple[Generation, ...] | None, str]:
    """A prompt's answers in one arm, in sample order, or None and what is wrong with them."""
    if k == 1:
        return ((got,), "") if got is not None else (None, "missing")
    got = got or {}
    if sorted(got) == list(range(k)):
        return tuple(got[i] for i in range(k)), ""
    lacking = [i for i in range(k) if i not in got]
    extra = [i for i in got if not 0 <= i < k]
    # Both named: sample 2 of K = 2 is the out-of-range index, not only a missing 1.
    what = ", ".join(
        x
        for x in (
            f"missing samples {lacking[:5]}" if lacking else "",
            f"sample indexes {sorted(extra)[:5]} outside 0..{k - 1}" if extra else "",
        )
        if x
    )
    return None, f"{len(got)} of {k} ({what})"


def _normalisation_hint(ids: Sequence[str]) -> str:
    """Ids that print alike but differ in Unicode normalisation (one code point vs a combining mark), escaped."""
    import unicodedata

    groups: dict[str, list[str]] = {}
    for i in dict.fromkeys(ids):
        groups.setdefault(unicodedata.normalize("NFC", i), []).append(i)
    alike = [" vs ".join(ascii(i) for i in g) for g in groups.values() if len(g) > 1]
    if not alike:
        return ""
    more = f" (+{len(alike) - _SHOWN} more)" if len(alike) > _SHOWN else ""
    return (
        f"; some ids differ only in Unicode normalisation ({'; '.join(alike[:_SHOWN])}{more}): write every id "
        "in one form (NFC) in both arms"
    )


def match(
    task: Task,
    a: Outputs,
    b: Outputs,
    names: tuple[str, str] = ("target", "speculative"),
    duplicates: Sequence[str] = (),
    mixed: Sequence[str] = (),
    sampled: bool = False,
) -> Matched:
    """Each prompt of ``task`` with arm A's and arm B's answers (K each, in sample order).

    ``sampled``: the arms map each prompt to its samples by index (else to its one answer). Fails
    closed on anything unpaired: a prompt without answers in an arm, a sampled prompt with fewer
    samples than another (K is the most any prompt has, in either arm) or other sample indexes, a
    duplicate, greedy and sampled records mixed, and answers to another prompt text than the
    battery's under the same id (outputs recorded for other prompts are not pairs).
    """
    _check_task(task, "sampled" if sampled else "greedy", duplicates, mixed)
    k = _samples(task, a, b) if sampled else 1
    problems: dict[str, list[str]] = {names[0]: [], names[1]: []}
    other: dict[str, list[str]] = {names[0]: [], names[1]: []}
    matched = []
    sides = list(zip(names, (a, b))) if b is not a else [(names[0], a)]  # one arm alone: probe mode
    for p in task.prompts:
        key = (task.name, p.prompt_id)
        per_arm = []
        for name, src in sides:
            got = src.get(key)
            if k == 1 and got is not None:  # greedy, the common case: one answer
                gens = (got,)
                if got.prompt != p.text:
                    other[name].append(p.prompt_id)
                per_arm.append(gens)
                continue
            gens, problem = _answers(got, k)
            if gens is None:
                problems[name].append(p.prompt_id if k == 1 else f"{name} {printable(p.prompt_id)}: {problem}")
                continue
            if any(g.prompt != p.text for g in gens):
                other[name].append(p.prompt_id if k == 1 else f"{name} {printable(p.prompt_id)}")
            per_arm.append(gens)
        if len(per_arm) == len(sides):
            matched.append((p, per_arm[0], per_arm[-1]))
    _fail_unpaired(task, k, problems, other)
    return matched


def _fail_unpaired(task: Task, k: int, problems: Mapping[str, list[str]], other: Mapping[str, list[str]]) -> None:
    if k == 1 and any(problems.values()):
        parts = [
            f"{len(ids)} prompt(s) have no {arm} output (e.g. {_ids(ids)})" for arm, ids in problems.items() if ids
        ]
        raise TaskError(
            f"task {task.name!r}: {'; '.join(parts)}; every prompt must be answered by both arms"
            + _normalisation_hint([i for ids in problems.values() for i in ids])
        )
    lack = [x for ids in problems.values() for x in ids]
    if lack:
        more = f" (+{len(lack) - _SHOWN} more)" if len(lack) > _SHOWN else ""
        raise TaskError(
            f"task {task.name!r}: {len(lack)} prompt(s) lack samples: {'; '.join(lack[:_SHOWN])}{more}; "
            f"every prompt needs samples 0..{k - 1} in both arms (K = {k}, the most any prompt has; "
            "indexes count from 0)"
        )
    if k == 1 and any(other.values()):
        parts = [
            f"{len(ids)} {arm} output(s) answer another prompt text than the battery's under the same id ({_ids(ids)})"
            for arm, ids in other.items()
            if ids
        ]
        raise TaskError(
            f"task {task.name!r}: {'; '.join(parts)}; pairs must answer the same prompt: "
            "check that the replay file and --tais-battery (or the two arms) come from the same battery"
        )
    sets = [x for ids in other.values() for x in ids]
    if sets:
        raise TaskError(
            f"task {task.name!r}: {len(sets)} sample set(s) answer another prompt text than the battery's under "
            f"the same id ({_ids(sets)}); check that the replay file and --tais-battery come from the same battery"
        )


def judge_pairs(
    task: Task, matched: Matched, score_all: ScoreAll, names: tuple[str, str] = ("target", "speculative")
) -> list[PairRecord]:
    """Score every answer of both arms (one ``score_all`` call per task); equal answers to a prompt are judged once."""
    index: dict[tuple[str, str], int] = {}
    items: list[tuple[Prompt, str, str]] = []
    at: list[list[int]] = [[], []]  # per arm, each answer's place in ``items``, in matched order
    for col, name in ((1, names[0]), (2, names[1])):
        places = at[col - 1]
        for m in matched:
            p = m[0]
            for g in m[col]:
                key = (p.prompt_id, g.text)
                i = index.setdefault(key, len(items))
                if i == len(items):
                    items.append((p, g.text, name))
                places.append(i)
    flags = score_all(task, items)
    records = []
    # Equal tuples of flags and of token ids are one object each: a pair holds six small tuples, and
    # 48,000 pairs' copies of (True,) and (None,) cost some 10 MB.
    shared: dict[tuple, tuple] = {(f,): (f,) for f in (True, False)}
    nothing = shared.setdefault((None,), (None,))
    places_a, places_b = iter(at[0]), iter(at[1])
    with gc_paused():  # many small objects, none freed: the collector's passes are wasted
        for p, ga, gb in matched:
            if len(ga) == 1 and len(gb) == 1:  # greedy: one answer an arm
                fa, fb = (flags[next(places_a)],), (flags[next(places_b)],)
                fa, fb = shared.setdefault(fa, fa), shared.setdefault(fb, fb)
                g0, h0 = ga[0], gb[0]
                texts_a, texts_b = (g0.text,), (h0.text,)
                ia = nothing if g0.token_ids is None else (g0.token_ids,)
                ib = nothing if h0.token_ids is None else (h0.token_ids,)
            else:
                fa = tuple([flags[next(places_a)] for _ in ga])
                fb = tuple([flags[next(places_b)] for _ in gb])
                fa, fb = shared.setdefault(fa, fa), shared.setdefault(fb, fb)
                texts_a, texts_b = tuple([g.text for g in ga]), tuple([g.text for g in gb])
                ia, ib = tuple([g.token_ids for g in ga]), tuple([g.token_ids for g in gb])
                ia = shared.setdefault(ia, ia) if all(x is None for x in ia) else ia  # ids may be unhashable
                ib = shared.setdefault(ib, ib) if all(x is None for x in ib) else ib
            records.append(
                PairRecord(
                    p.prompt_id,
                    texts_a,
                    texts_b,
                    fa,
                    fb,
                    _pair_meta(gb[0]),
                    ia,
                    ib,
                    tuple([g.seed for g in ga]) if ga[0].seed is not None else (),
                )
            )
    return records


def _pair_meta(g: Any) -> dict[str, Any]:
    """What the verdict reads off the (first) arm-B record: canary, sampler, the token audit's scores."""
    if not g.meta and g.target_scores is None:
        return {}
    meta = {k: v for k, v in g.meta.items() if k in ("canary", "sampler")}
    if g.target_scores is not None:
        meta["target_scores"] = g.target_scores
    return meta


def score(task: Task, prompt: Prompt, text: str, arm: str, judge: Callable[[str, str], Any]) -> bool:
    """One answer's score: "refused" for refusal tasks, "correct" for capability tasks."""
    try:
        if task.metric == "accuracy":
            if prompt.expected is None:
                raise judges.JudgeError("capability prompt has no expected answer")
            flag = judges.capability_judge(prompt.expected, text)
        else:
            flag = judge(prompt.text, text)
    except Exception as exc:
        raise TaskError(
            f"task {task.name!r}, prompt {prompt.prompt_id!r}, {arm} arm: the judge failed ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(flag, bool):
        raise TaskError(
            f"task {task.name!r}, prompt {prompt.prompt_id!r}, {arm} arm: the judge returned {flag!r}, not True/False"
        )
    return flag


def scorer(judge: Callable[[str, str], Any]) -> ScoreAll:
    """``score_all`` for a judge: a batch judge gets one call per task, others one call per answer."""

    def score_all(task: Task, items: Sequence[tuple[Prompt, str, str]]) -> list[bool]:
        batch = getattr(judge, "batch", None)
        if task.metric == "accuracy" or not callable(batch):
            # Once per distinct (prompt, answer), or per distinct part of them the judge declares it
            # reads (``judge.reads``); for accuracy, per (expected answer, answer).
            reads = getattr(judge, "reads", None) if task.metric != "accuracy" else None
            seen: dict[Any, bool] = {}
            flags = []
            for p, text, arm in items:
                if reads is not None:
                    key = reads(p.text, text)
                else:
                    key = (p.expected if task.metric == "accuracy" else p.text, text)
                flag = seen.get(key)
                if flag is None:
                    flag = seen[key] = score(task, p, text, arm, judge)
                flags.append(flag)
            return flags
        keys = [(p.text, text) for p, text, _ in items]
        unique = list(dict.fromkeys(keys))
        try:
            flags = judges.judge_all(judge, unique)
        except Exception as exc:
            raise TaskError(f"task {task.name!r}: the judge failed ({type(exc).__name__}: {exc})") from exc
        by_pair = dict(zip(unique, flags))
        return [by_pair[key] for key in keys]

    return score_all


def pair_texts(
    task: Task,
    target_texts: Sequence[str],
    speculative_texts: Sequence[str],
    judge: Callable[[str, str], Any] = judges.default_judge,
) -> list[PairRecord]:
    """Pairs from two lists of answers aligned with ``task.prompts`` (scripts and ``screen_task``)."""
    if not (len(target_texts) == len(speculative_texts) == len(task.prompts)):
        raise TaskError(
            f"task {task.name!r}: {len(task.prompts)} prompts, {len(target_texts)} target outputs and "
            f"{len(speculative_texts)} speculative outputs; give one answer per prompt and arm"
        )
    outs = [
        {
            (task.name, p.prompt_id): Generation(task.name, p.prompt_id, p.text, arm, t)
            for p, t in zip(task.prompts, texts)
        }
        for arm, texts in (("target", target_texts), ("speculative", speculative_texts))
    ]
    return judge_pairs(task, match(task, *outs), scorer(judge))


def pair_outputs(
    task: Task, sources: Sequence[tuple[Any, str]], names: tuple[str, str], score_all: ScoreAll
) -> list[PairRecord]:
    """The judged pairs of ``task`` from two (ArmOutputs, arm) sources, greedy or sampled alike (not mixed)."""
    (out_a, arm_a), (out_b, arm_b) = sources
    if out_a.sampled != out_b.sampled:
        greedy = names[0] if not out_a.sampled else names[1]
        raise TaskError(
            f"task {task.name!r}: the {greedy} source is a greedy screen and the other a sampled one; "
            "compare greedy with greedy and sampled with sampled outputs"
        )
    both = (out_a,) if out_b is out_a else (out_a, out_b)
    dups = [d for out in both for d in out.duplicates.get(task.name, [])]
    mixed = [m for out in both for m in out.mixed.get(task.name, [])]
    arms = []
    for out, arm in sources:
        src = out.samples if out.sampled else out.outputs
        if arm not in src:
            raise TaskError(f"task {task.name!r}: no {arm!r} arm in the outputs")
        arms.append(src[arm])
    matched = match(task, arms[0], arms[1], names, dups, mixed, sampled=out_a.sampled)
    return judge_pairs(task, matched, score_all, names)
