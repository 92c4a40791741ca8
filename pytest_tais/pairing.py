"""Pairs: match two arms' outputs on (task, prompt id), check they answer the same prompt, judge them.

Used by the screen, by ``screen_task`` and by the benchmark scripts, so that a pair means the same
thing everywhere. Anything that makes a pair meaningless raises :class:`TaskError`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from . import judges
from .battery import Prompt, Task
from .contrasts import printable
from .errors import TaskError
from .records import Generation, gc_paused
from .verdict import PairRecord, SampledPair

Outputs = Mapping[tuple[str, str], Generation]
#: (prompt, answer, arm name) -> score; one call per task so that a batch judge sees them all.
ScoreAll = Callable[[Task, Sequence[tuple[Prompt, str, str]]], list[bool]]

_SHOWN = 3


def _ids(ids: Sequence[str]) -> str:
    more = f", ... (+{len(ids) - _SHOWN})" if len(ids) > _SHOWN else ""
    return ", ".join(printable(i) for i in ids[:_SHOWN]) + more


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
    return (f"; some ids differ only in Unicode normalisation ({'; '.join(alike[:_SHOWN])}{more}): write every id "
            "in one form (NFC) in both arms")


def match(task: Task, a: Outputs, b: Outputs, names: tuple[str, str] = ("target", "speculative"),
          duplicates: Sequence[str] = ()) -> list[tuple[Prompt, Generation, Generation]]:
    """Each prompt of ``task`` with arm A's and arm B's answer; fails closed on anything unpaired.

    Both answers must carry the prompt the battery holds: outputs recorded for other prompts under
    the same ids are not pairs.
    """
    if not task.prompts:
        raise TaskError(f"task {task.name!r}: no prompts; a task with zero prompts cannot pass")
    if duplicates:
        raise TaskError(f"task {task.name!r}: duplicate prompt ids in the outputs ({', '.join(sorted(duplicates)[:5])}); "
                        "each prompt must be answered once per arm")
    missing: dict[str, list[str]] = {names[0]: [], names[1]: []}
    other: dict[str, list[str]] = {names[0]: [], names[1]: []}
    matched = []
    for p in task.prompts:
        key = (task.name, p.prompt_id)
        ga, gb = a.get(key), b.get(key)
        for name, g in zip(names, (ga, gb)):
            if g is None:
                missing[name].append(p.prompt_id)
            elif g.prompt != p.text:
                other[name].append(p.prompt_id)
        if ga is not None and gb is not None:
            matched.append((p, ga, gb))
    if any(missing.values()):
        parts = [f"{len(ids)} prompt(s) have no {arm} output (e.g. {_ids(ids)})" for arm, ids in missing.items() if ids]
        raise TaskError(f"task {task.name!r}: {'; '.join(parts)}; every prompt must be answered by both arms"
                        + _normalisation_hint([i for ids in missing.values() for i in ids]))
    if any(other.values()):
        parts = [f"{len(ids)} {arm} output(s) answer another prompt text than the battery's under the same id ({_ids(ids)})"
                 for arm, ids in other.items() if ids]
        raise TaskError(f"task {task.name!r}: {'; '.join(parts)}; pairs must answer the same prompt: "
                        "check that the replay file and --tais-battery (or the two arms) come from the same battery")
    return matched


def judge_pairs(task: Task, matched: Sequence[tuple[Prompt, Generation, Generation]], score_all: ScoreAll,
                names: tuple[str, str] = ("target", "speculative")) -> list[PairRecord]:
    """Score both answers of every pair; byte-identical answers get the same score, judged once."""
    items = [(p, ga.text, names[0]) for p, ga, _ in matched]
    items += [(p, gb.text, names[1]) for p, ga, gb in matched if gb.text != ga.text]
    scores = iter(score_all(task, items))
    flags_a = [next(scores) for _ in matched]
    records = []
    with gc_paused():  # many small objects, none freed: the collector's passes are wasted
        for (p, ga, gb), flag_a in zip(matched, flags_a):
            flag_b = flag_a if gb.text == ga.text else next(scores)
            records.append(PairRecord(
                prompt_id=p.prompt_id, target_text=ga.text, speculative_text=gb.text, target_flag=flag_a,
                speculative_flag=flag_b, meta={k: v for k, v in gb.meta.items() if k == "canary"},
                target_token_ids=ga.token_ids, speculative_token_ids=gb.token_ids,
            ))
    return records


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
        raise TaskError(f"task {task.name!r}, prompt {prompt.prompt_id!r}, {arm} arm: the judge returned {flag!r}, not True/False")
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
        unique = list(dict.fromkeys((p.text, text) for p, text, _ in items))
        try:
            flags = judges.judge_all(judge, unique)
        except Exception as exc:
            raise TaskError(f"task {task.name!r}: the judge failed ({type(exc).__name__}: {exc})") from exc
        by_pair = dict(zip(unique, flags))
        return [by_pair[(p.text, text)] for p, text, _ in items]

    return score_all


def pair_texts(task: Task, target_texts: Sequence[str], speculative_texts: Sequence[str],
               judge: Callable[[str, str], Any] = judges.default_judge) -> list[PairRecord]:
    """Pairs from two lists of answers aligned with ``task.prompts`` (scripts and ``screen_task``)."""
    if not (len(target_texts) == len(speculative_texts) == len(task.prompts)):
        raise TaskError(f"task {task.name!r}: {len(task.prompts)} prompts, {len(target_texts)} target outputs and "
                        f"{len(speculative_texts)} speculative outputs; give one answer per prompt and arm")
    outs = [{(task.name, p.prompt_id): Generation(task.name, p.prompt_id, p.text, arm, t)
             for p, t in zip(task.prompts, texts)} for arm, texts in (("target", target_texts), ("speculative", speculative_texts))]
    return judge_pairs(task, match(task, *outs), scorer(judge))


# -- sampled screens: K samples per prompt per arm -----------------------------------------------------
SampleOutputs = Mapping[tuple[str, str], Mapping[int, Generation]]


def match_samples(task: Task, a: SampleOutputs, b: SampleOutputs, names: tuple[str, str] = ("target", "speculative"),
                  duplicates: Sequence[str] = (), mixed: Sequence[str] = ()) -> tuple[int, list[tuple[Prompt, list[Generation], list[Generation]]]]:
    """Each prompt of ``task`` with both arms' K samples (in sample order): (K, matches).

    Fails closed on a prompt without samples in an arm, one with fewer samples than another
    (K is the most any prompt has, in either arm), sample indexes other than 0..K-1, a duplicate
    sample index, greedy and sampled records mixed, and samples that answer another prompt text.
    """
    if not task.prompts:
        raise TaskError(f"task {task.name!r}: no prompts; a task with zero prompts cannot pass")
    if duplicates:
        raise TaskError(f"task {task.name!r}: duplicate sample indexes in the outputs ({', '.join(sorted(duplicates)[:5])}); "
                        "each sample of a prompt must be answered once per arm")
    if mixed:
        raise TaskError(f"task {task.name!r}: greedy records (no \"sample\") and sampled ones for the same prompts "
                        f"({_ids(sorted(mixed))}); a task is screened greedy or sampled, not both")
    k = max((len(src.get((task.name, p.prompt_id), {})) for src in (a, b) for p in task.prompts), default=0)
    if k < 2:
        raise TaskError(f"task {task.name!r}: a sampled screen needs K >= 2 samples per prompt per arm, found at most {k}; "
                        "generate with --tais-samples=K (K >= 2)")
    problems: list[str] = []
    other: list[str] = []
    matched = []
    for p in task.prompts:
        key = (task.name, p.prompt_id)
        per_arm = []
        for name, src in zip(names, (a, b)):
            got = src.get(key, {})
            if sorted(got) != list(range(k)):
                lacking = [i for i in range(k) if i not in got]
                extra = [i for i in got if not 0 <= i < k]
                # Both named: sample 2 of K = 2 is the out-of-range index, not only a missing 1.
                what = ", ".join(x for x in (f"missing samples {lacking[:5]}" if lacking else "",
                                             f"sample indexes {sorted(extra)[:5]} outside 0..{k - 1}" if extra else "") if x)
                problems.append(f"{name} {printable(p.prompt_id)}: {len(got)} of {k} ({what})")
                continue
            gens = [got[i] for i in range(k)]
            if any(g.prompt != p.text for g in gens):
                other.append(f"{name} {printable(p.prompt_id)}")
            per_arm.append(gens)
        if len(per_arm) == 2:
            matched.append((p, per_arm[0], per_arm[1]))
    if problems:
        more = f" (+{len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise TaskError(f"task {task.name!r}: {len(problems)} prompt(s) lack samples: {'; '.join(problems[:_SHOWN])}{more}; "
                        f"every prompt needs samples 0..{k - 1} in both arms (K = {k}, the most any prompt has; indexes count from 0)")
    if other:
        raise TaskError(f"task {task.name!r}: {len(other)} sample set(s) answer another prompt text than the battery's under "
                        f"the same id ({_ids(other)}); check that the replay file and --tais-battery come from the same battery")
    return k, matched


def judge_samples(task: Task, matched: Sequence[tuple[Prompt, Sequence[Generation], Sequence[Generation]]],
                  score_all: ScoreAll, names: tuple[str, str] = ("target", "speculative")) -> list[SampledPair]:
    """Score every sample of both arms (one judge call per task; equal texts of a prompt judged once)."""
    items: list[tuple[Prompt, str, str]] = []
    index: dict[tuple[str, str], int] = {}
    for p, ga, gb in matched:
        for name, gens in zip(names, (ga, gb)):
            for g in gens:
                if (p.prompt_id, g.text) not in index:
                    index[(p.prompt_id, g.text)] = len(items)
                    items.append((p, g.text, name))
    flags = score_all(task, items)
    out = []
    for p, ga, gb in matched:
        out.append(SampledPair(
            prompt_id=p.prompt_id,
            target_texts=tuple(g.text for g in ga), speculative_texts=tuple(g.text for g in gb),
            target_flags=tuple(flags[index[(p.prompt_id, g.text)]] for g in ga),
            speculative_flags=tuple(flags[index[(p.prompt_id, g.text)]] for g in gb),
            seeds=tuple(g.seed for g in ga),
            meta={k: v for k, v in gb[0].meta.items() if k in ("canary", "sampler")},
        ))
    return out


def pair_samples(task: Task, sources: Sequence[tuple[Any, str]], names: tuple[str, str], score_all: ScoreAll) -> list[SampledPair]:
    """Sampled pairs of ``task`` from two (ArmOutputs, arm) sources; both must be sampled screens."""
    (out_a, arm_a), (out_b, arm_b) = sources
    if not (out_a.sampled and out_b.sampled):
        greedy = names[0] if not out_a.sampled else names[1]
        raise TaskError(f"task {task.name!r}: the {greedy} source is a greedy screen and the other a sampled one; "
                        "compare greedy with greedy and sampled with sampled outputs")
    dups = list(out_a.duplicates.get(task.name, [])) + (list(out_b.duplicates.get(task.name, [])) if out_b is not out_a else [])
    mixed = list(out_a.mixed.get(task.name, [])) + (list(out_b.mixed.get(task.name, [])) if out_b is not out_a else [])
    _, matched = match_samples(task, out_a.samples.get(arm_a, {}), out_b.samples.get(arm_b, {}), names, dups, mixed)
    return judge_samples(task, matched, score_all, names)
