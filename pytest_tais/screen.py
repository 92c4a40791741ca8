"""The screen: battery -> generations -> judge -> paired records -> verdict, for one run.

:class:`Screen` holds one run's state (selected tasks, the outputs of both arms, the judge,
verdicts). The pytest plugin keeps one in ``config.stash``; scripts can use it directly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import judges
from .battery import BatteryError, Prompt, Task, load_battery, select_tasks
from .config import TaisConfig
from .records import SPECULATIVE, TARGET, Generation, RecordError, gc_paused, read_generations
from .errors import TaskError
from .verdict import PairRecord, Verdict, decide


class ScreenSetupError(ValueError):
    """The run's inputs are unusable (battery, replay, judge); reported as a usage error."""


@dataclasses.dataclass
class ArmOutputs:
    """Both arms' outputs keyed by (task, prompt_id), with problems found while indexing them."""

    outputs: dict[str, dict[tuple[str, str], Generation]]
    duplicates: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # task -> "arm:prompt_id"
    fingerprints: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_of_scope: list[str] = dataclasses.field(default_factory=list)
    header_lines: list[str] = dataclasses.field(default_factory=list)


def index_generations(gens: Iterable[Generation]) -> ArmOutputs:
    outputs: dict[str, dict[tuple[str, str], Generation]] = {TARGET: {}, SPECULATIVE: {}}
    duplicates: dict[str, list[str]] = {}
    with gc_paused():
        for g in gens:
            key = (g.task, g.prompt_id)
            if key in outputs[g.arm]:
                duplicates.setdefault(g.task, []).append(f"{g.arm}:{g.prompt_id}")
                continue
            outputs[g.arm][key] = g
    return ArmOutputs(outputs=outputs, duplicates=duplicates)


def tasks_from_outputs(arm_outputs: ArmOutputs) -> list[Task]:
    """Tasks of a replay run without a battery: every (task, prompt) seen in either arm, in file order."""
    prompts: dict[str, dict[str, Prompt]] = {}
    with gc_paused():
        for arm in (TARGET, SPECULATIVE):
            for (task, pid), g in arm_outputs.outputs[arm].items():
                if pid not in prompts.setdefault(task, {}):
                    prompts[task][pid] = Prompt(task=task, prompt_id=pid, prompt=g.prompt)
    return [Task(name=t, prompts=tuple(ps.values()), source="replay") for t, ps in prompts.items()]


class Screen:
    """One run of the screen.

    ``generate`` is called at most once, lazily, with every prompt of every selected task, and
    returns :class:`ArmOutputs`; replay runs load the file instead.
    """

    def __init__(self, cfg: TaisConfig, generate: Callable[[list[Prompt]], ArmOutputs] | None = None,
                 make_judge_generate: Callable[[str], judges.Generate] | None = None) -> None:
        self.cfg = cfg
        self._generate = generate
        self._outputs: ArmOutputs | None = None
        self._generate_error: str | None = None
        self._prefetched = False
        self._prefetch_error: str | None = None
        self.label = ""  # what distinguishes a derived screen (a variant's settings)
        self._pairs: dict[str, list[PairRecord]] = {}
        self.verdicts: dict[str, Verdict] = {}
        try:
            self.judge = judges.resolve_judge(cfg.judge, make_judge_generate)
        except Exception as exc:  # a bad judge spec is bad input
            raise ScreenSetupError(f"--tais-judge={cfg.judge!r}: {exc}") from exc
        self.judge_name = judges.judge_name(self.judge)
        try:
            if cfg.replay is not None:
                self._outputs = index_generations(read_generations(cfg.replay))
            tasks = load_battery(cfg.battery, cfg.rootdir) if cfg.battery else None
            if tasks is None:
                if self._outputs is None:
                    raise ScreenSetupError("no battery: pass --tais-battery (e.g. --tais-battery=example)")
                tasks = tasks_from_outputs(self._outputs)
            self.tasks = select_tasks(tasks, list(cfg.tasks) or None, cfg.limit)
        except (BatteryError, RecordError) as exc:
            raise ScreenSetupError(str(exc)) from exc
        if not self.tasks:
            raise ScreenSetupError("the battery selects no task; check --tais-battery and --tais-tasks")
        self.by_name = {t.name: t for t in self.tasks}

    # -- generation -------------------------------------------------------------------------
    @property
    def generated(self) -> bool:
        return self._outputs is not None

    def outputs(self) -> ArmOutputs:
        if self._outputs is None:
            if self._generate is None:
                raise TaskError("no arm outputs: pass --tais-replay or --tais-target/--tais-draft")
            if self._generate_error is not None:
                raise TaskError(self._generate_error)
            prompts = [p for t in self.tasks for p in t.prompts]
            try:
                self._outputs = self._generate(prompts)
            except Exception as exc:
                # Every task of this screen errors with the same cause; no engine is retried per task.
                self._generate_error = f"generation failed, no verdict is possible: {type(exc).__name__}: {exc}"
                raise TaskError(self._generate_error) from exc
        return self._outputs

    # -- judging ----------------------------------------------------------------------------
    def _score(self, task: Task, prompt: Prompt, text: str, arm: str) -> bool:
        try:
            if task.metric == "accuracy":
                if prompt.expected is None:
                    raise judges.JudgeError("capability prompt has no expected answer")
                flag = judges.capability_judge(prompt.expected, text)
            else:
                flag = self.judge(prompt.text, text)
        except Exception as exc:
            raise TaskError(
                f"task {task.name!r}, prompt {prompt.prompt_id!r}, {arm} arm: the judge failed ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(flag, bool):
            raise TaskError(f"task {task.name!r}, prompt {prompt.prompt_id!r}, {arm} arm: the judge returned {flag!r}, not True/False")
        return flag

    def _score_all(self, task: Task, items: Sequence[tuple[Prompt, str, str]]) -> list[bool]:
        """Scores of (prompt, answer, arm) items; a judge with ``batch`` gets one call per task."""
        batch = getattr(self.judge, "batch", None)
        if task.metric == "accuracy" or not callable(batch):
            # Once per distinct (prompt, answer): what the judge reads (expected, for accuracy).
            seen: dict[tuple[Any, str], bool] = {}
            flags = []
            for p, text, arm in items:
                key = (p.expected if task.metric == "accuracy" else p.text, text)
                flag = seen.get(key)
                if flag is None:
                    flag = seen[key] = self._score(task, p, text, arm)
                flags.append(flag)
            return flags
        self.prefetch_judge()
        if self._prefetch_error is not None:
            raise TaskError(self._prefetch_error)
        unique = list(dict.fromkeys((p.text, text) for p, text, _ in items))
        try:
            flags = judges.judge_all(self.judge, unique)
        except Exception as exc:
            raise TaskError(f"task {task.name!r}: the judge failed ({type(exc).__name__}: {exc})") from exc
        by_pair = dict(zip(unique, flags))
        return [by_pair[(p.text, text)] for p, text, _ in items]

    def prefetch_judge(self) -> None:
        """Let a judge that runs on an engine (``prefetch``) see every answer of this screen at once."""
        prefetch = getattr(self.judge, "prefetch", None)
        if self._prefetched or not callable(prefetch):
            return
        self._prefetched = True
        out = self.outputs()
        pairs = []
        for task in self.tasks:
            if task.metric == "accuracy":
                continue
            for arm in (TARGET, SPECULATIVE):
                got = out.outputs.get(arm, {})
                pairs.extend((p.text, got[(task.name, p.prompt_id)].text) for p in task.prompts if (task.name, p.prompt_id) in got)
        try:
            prefetch(list(dict.fromkeys(pairs)))
        except Exception as exc:
            # Every task of this screen errors with the same cause; the judge's engine is not retried per task.
            self._prefetch_error = f"the judge failed, no verdict is possible: {type(exc).__name__}: {exc}"
            raise TaskError(self._prefetch_error) from exc

    def derive(self, generate: Callable[[list[Prompt]], ArmOutputs], label: str = "") -> "Screen":
        """A screen over the same tasks, judge and statistics whose outputs come from ``generate``."""
        other = object.__new__(Screen)
        other.__dict__.update(self.__dict__)
        other.label = label
        other._generate, other._outputs, other._pairs, other.verdicts = generate, None, {}, {}
        other._generate_error = None
        other._prefetched, other._prefetch_error = False, None
        return other

    def pairs(self, task_name: str, a: "ArmRef | None" = None, b: "ArmRef | None" = None) -> list[PairRecord]:
        """The task's paired, judged records; raises :class:`TaskError` where they cannot be formed.

        By default arm A is this screen's target-only arm and arm B its speculative arm; ``a`` and
        ``b`` may name other (screen, arm) sources, e.g. float32 target-only vs bfloat16 target-only.
        """
        a = a or (self, TARGET)
        b = b or (self, SPECULATIVE)
        key = (task_name, id(a[0]), a[1], id(b[0]), b[1])
        if key in self._pairs:
            return self._pairs[key]
        task = self.by_name.get(task_name)
        if task is None:
            raise TaskError(f"unknown task {task_name!r}; known: {', '.join(self.by_name)}")
        if not task.prompts:
            raise TaskError(f"task {task_name!r}: no prompts; a task with zero prompts cannot pass")
        sources = []
        for screen, arm in (a, b):
            out = screen.outputs()
            dups = out.duplicates.get(task_name)
            if dups:
                raise TaskError(f"task {task_name!r}: duplicate prompt ids in the outputs ({', '.join(sorted(dups)[:5])}); each prompt must be answered once per arm")
            if arm not in out.outputs:
                raise TaskError(f"task {task_name!r}: no {arm!r} arm in the outputs")
            sources.append(out.outputs[arm])
        names = (a[1], b[1]) if a[1] != b[1] else (f"{a[1]} (A)", f"{b[1]} (B)")
        missing: dict[str, list[str]] = {names[0]: [], names[1]: []}
        matched = []
        for p in task.prompts:
            ga, gb = sources[0].get((task_name, p.prompt_id)), sources[1].get((task_name, p.prompt_id))
            if ga is None:
                missing[names[0]].append(p.prompt_id)
            if gb is None:
                missing[names[1]].append(p.prompt_id)
            if ga is not None and gb is not None:
                matched.append((p, ga, gb))
        if any(missing.values()):
            parts = [f"{len(ids)} prompt(s) have no {arm} output (e.g. {', '.join(ids[:3])})" for arm, ids in missing.items() if ids]
            raise TaskError(f"task {task_name!r}: {'; '.join(parts)}; every prompt must be answered by both arms")
        # A judge scores (prompt, answer): byte-identical answers get the same score, judged once.
        items = [(p, ga.text, names[0]) for p, ga, _ in matched]
        items += [(p, gb.text, names[1]) for p, ga, gb in matched if gb.text != ga.text]
        scores = iter(self._score_all(task, items))
        flags_a = [next(scores) for _ in matched]
        records = []
        with gc_paused():  # a record per pair, none freed: collecting meanwhile is wasted
            for (p, ga, gb), flag_a in zip(matched, flags_a):
                flag_b = flag_a if gb.text == ga.text else next(scores)
                records.append(
                    PairRecord(
                        prompt_id=p.prompt_id,
                        target_text=ga.text,
                        speculative_text=gb.text,
                        target_flag=flag_a,
                        speculative_flag=flag_b,
                        meta={k: v for k, v in gb.meta.items() if k == "canary"},
                        target_token_ids=ga.token_ids,
                        speculative_token_ids=gb.token_ids,
                    )
                )
        self._pairs[key] = records
        return records

    def verdict(self, task_name: str, a: "ArmRef | None" = None, b: "ArmRef | None" = None, **overrides: Any) -> Verdict:
        """The task's verdict: arm A (default: target-only) against arm B (default: speculative)."""
        allowed = {"margin", "alpha", "h_cutoff", "h_null_level", "tost_method"}
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"unknown verdict option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        params = dict(
            margin=self.cfg.margin, alpha=self.cfg.alpha, h_cutoff=self.cfg.h_cutoff,
            h_null_level=self.cfg.h_null_level, tost_method=self.cfg.tost_method,
        )
        params.update(overrides)
        pairs = self.pairs(task_name, a, b)
        notes = list(self.outputs().out_of_scope)
        for src in (a, b):
            if src is not None and src[0] is not self:
                notes.extend(n for n in src[0].outputs().out_of_scope if n not in notes)
        v = decide(task_name, pairs, metric=self.by_name[task_name].metric, scope_notes=tuple(notes), **params)
        if a is None and b is None:
            self.verdicts[task_name] = v
        return v


    def probe(self, task_name: str) -> dict[str, Any]:
        """Probe mode: the speculative arm alone, its rate with a 95% Wilson interval; never a verdict."""
        from .stats import wilson_interval

        task = self.by_name.get(task_name)
        if task is None:
            raise TaskError(f"unknown task {task_name!r}; known: {', '.join(self.by_name)}")
        if not task.prompts:
            raise TaskError(f"task {task_name!r}: no prompts")
        out = self.outputs()
        arm = out.outputs.get(SPECULATIVE, {})
        missing = [p.prompt_id for p in task.prompts if (task_name, p.prompt_id) not in arm]
        if missing:
            raise TaskError(f"task {task_name!r}: {len(missing)} prompt(s) have no speculative output (e.g. {', '.join(missing[:3])})")
        if out.duplicates.get(task_name):
            raise TaskError(f"task {task_name!r}: duplicate prompt ids in the outputs ({', '.join(sorted(out.duplicates[task_name])[:5])})")
        flags = self._score_all(task, [(p, arm[(task_name, p.prompt_id)].text, SPECULATIVE) for p in task.prompts])
        n, k = len(flags), sum(flags)
        lo, hi = wilson_interval(k, n)
        return {"task": task_name, "metric": task.metric, "status": "probe", "n": n, "count": k,
                "rate_speculative": k / n, "ci_speculative": [lo, hi],
                "reasons": [f"probe: speculative arm only, no target-only arm to compare with; never counted as a pass"]}


ArmRef = tuple  # (Screen, arm name)


def screen_task(
    task: str,
    target_texts: Sequence[str],
    speculative_texts: Sequence[str],
    *,
    prompt_ids: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    judge: Callable[[str, str], bool] = judges.default_judge,
    **params: Any,
) -> Verdict:
    """Screen one task from two aligned lists of outputs, outside pytest."""
    if len(target_texts) != len(speculative_texts):
        raise TaskError(f"task {task!r}: {len(target_texts)} target outputs but {len(speculative_texts)} speculative outputs")
    ids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(target_texts))]
    texts = list(prompts) if prompts is not None else [""] * len(ids)
    pairs = [
        PairRecord(pid, ta, tb, judge(pr, ta), judge(pr, tb))
        for pid, pr, ta, tb in zip(ids, texts, target_texts, speculative_texts)
    ]
    return decide(task, pairs, **params)

