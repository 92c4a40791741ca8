"""The screen: battery -> generations -> judge -> paired records -> verdict, for one run.

:class:`Screen` holds one run's state (selected tasks, the outputs of both arms, the judge,
verdicts). The pytest plugin keeps one in ``config.stash``; scripts can use it directly.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..pairs import judges, pairing
from ..battery import BatteryError, Prompt, Task, load_battery, select_tasks
from ..setup.config import TaisConfig
from ..errors import TaskError
from ..records.generation import SPECULATIVE, TARGET, ArmOutputs, RecordError, index_generations, read_replay
from ..records.files import freeze_long_lived, gc_paused
from ..pairs.record import PairRecord
from ..verdict import Verdict, decide


#: Why a replay's differing answers may carry no target scores.
REPLAY_UNSCORED = (
    "the replayed records carry no 'target_scores' (record the run with --tais-record on an engine run that audits, "
    "vllm or hf, greedy)"
)


class ScreenSetupError(ValueError):
    """The run's inputs are unusable (battery, replay, judge); reported as a usage error."""


def tasks_from_outputs(arm_outputs: ArmOutputs, source: str = "the replay file") -> list[Task]:
    """Tasks of a replay run without a battery: every (task, prompt) seen in either arm, in file order.

    Each task is scored as its records say (``metric``, ``expected``); a task whose records do not
    say, or disagree, cannot be scored and is refused here.
    """
    prompts: dict[str, dict[str, Prompt]] = {}
    metrics: dict[str, set] = {}
    with gc_paused():
        for arm in (TARGET, SPECULATIVE):
            for (task, pid), g in arm_outputs.outputs[arm].items():
                metrics.setdefault(task, set()).add(g.metric)
                seen = prompts.setdefault(task, {})
                if pid not in seen:
                    seen[pid] = Prompt(task=task, prompt_id=pid, prompt=g.prompt, expected=g.expected)
    tasks = []
    for name, ps in prompts.items():
        found = metrics[name]
        if None in found:
            raise ScreenSetupError(
                f'{source}: the records of task {name!r} do not say how it is scored (no "metric"); record the run again with '
                '--tais-record, add "metric": "refusal" (or "accuracy" with "expected") to each line, or pass the '
                "battery it came from with --tais-battery"
            )
        if len(found) > 1:
            raise ScreenSetupError(
                f"{source}: the records of task {name!r} disagree on its metric ({', '.join(sorted(found))})"
            )
        tasks.append(Task(name=name, prompts=tuple(ps.values()), metric=found.pop(), source="replay"))
    return tasks


def check_replay_metrics(tasks: Sequence[Task], arm_outputs: ArmOutputs, source: str) -> None:
    """A battery given with a replay scores each task; records that say otherwise are not its outputs."""
    by_name = {t.name: t for t in tasks}
    for arm in arm_outputs.outputs.values():
        for (task, pid), g in arm.items():
            t = by_name.get(task)
            if t is not None and g.metric is not None and g.metric != t.metric:
                raise ScreenSetupError(
                    f"{source}: task {task!r} is a {t.metric} task in --tais-battery, but its record "
                    f"{pid!r} says {g.metric!r}; the replay and the battery do not belong together"
                )


class Screen:
    """One run of the screen.

    ``generate`` is called at most once, lazily, with every prompt of every selected task, and
    returns :class:`ArmOutputs`; replay runs load the file instead.
    """

    def __init__(
        self,
        cfg: TaisConfig,
        generate: Callable[[list[Prompt]], ArmOutputs] | None = None,
        make_judge_generate: Callable[[str], judges.Generate] | None = None,
    ) -> None:
        self.cfg = cfg
        self._generate = generate
        self._outputs: ArmOutputs | None = None
        self._generate_error: str | None = None
        self._prefetched = False
        self._prefetch_error: str | None = None
        self.label = ""  # what distinguishes a derived screen (a variant's settings)
        self._pairs: dict[tuple, list[PairRecord]] = {}
        try:
            self.judge = judges.resolve_judge(cfg.judge, make_judge_generate)
        except Exception as exc:  # a bad judge spec is bad input
            raise ScreenSetupError(f"--tais-judge={cfg.judge!r}: {exc}") from exc
        self.judge_name = judges.judge_name(self.judge)
        self._calibration: Any = None
        self._calibration_rows = None
        calibration_file = getattr(cfg, "judge_calibration", None)
        if calibration_file is not None:
            from ..pairs.judge_calibration import read_labels

            try:
                self._calibration_rows = read_labels(calibration_file)
            except judges.JudgeError as exc:
                raise ScreenSetupError(str(exc)) from exc
        try:
            if cfg.replay is not None:
                with gc_paused():
                    self._outputs = index_generations(read_replay(cfg.replay))
                    freeze_long_lived()
            tasks = load_battery(cfg.battery, cfg.rootdir) if cfg.battery else None
            if tasks is None:
                if self._outputs is None:
                    raise ScreenSetupError("no battery: pass --tais-battery (e.g. --tais-battery=example)")
                tasks = tasks_from_outputs(self._outputs, f"--tais-replay={cfg.replay}")
            elif self._outputs is not None:
                check_replay_metrics(tasks, self._outputs, f"--tais-replay={cfg.replay}")
            if not tasks and self._outputs is not None:
                raise ScreenSetupError(
                    f"--tais-replay={cfg.replay}: holds no records; point it at a file recorded with --tais-record"
                )
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
    def _score_all(self, task: Task, items: Sequence[tuple[Prompt, str, str]]) -> list[bool]:
        """Scores of (prompt, answer, arm) items; a judge with ``batch`` gets one call per task."""
        if task.metric != "accuracy" and callable(getattr(self.judge, "batch", None)):
            self.prefetch_judge()
            if self._prefetch_error is not None:
                raise TaskError(self._prefetch_error)
        return pairing.scorer(self.judge)(task, items)

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
                got = (out.samples if out.sampled else out.outputs).get(arm, {})
                for p in task.prompts:
                    answers = got.get((task.name, p.prompt_id))
                    if answers is not None:
                        pairs.extend((p.text, g.text) for g in (answers.values() if out.sampled else (answers,)))
        try:
            prefetch(list(dict.fromkeys(pairs)))
        except Exception as exc:
            # Every task of this screen errors with the same cause; the judge's engine is not retried per task.
            self._prefetch_error = f"the judge failed, no verdict is possible: {type(exc).__name__}: {exc}"
            raise TaskError(self._prefetch_error) from exc

    def judge_calibration(self) -> Any:
        """The judge's measured Se and Sp: from --tais-judge-calibration's labelled answers (judged
        on first use), else the judge's own (the shipped judge's cross-validation), else None."""
        if self._calibration is None:
            from ..pairs.judge_calibration import measure

            try:
                if self._calibration_rows is not None:
                    source = f"{self.cfg.judge_calibration.name} ({len(self._calibration_rows)} labelled answers)"
                    cal = measure(self.judge, self._calibration_rows, source)
                else:
                    cal = getattr(self.judge, "calibration", None)
                if cal is not None:
                    cal.check(f"judge {self.judge_name}")
            except Exception as exc:
                raise TaskError(f"the judge's calibration failed, no verdict is possible: {exc}") from exc
            self._calibration = cal if cal is not None else False
        return self._calibration or None

    def derive(
        self, generate: Callable[[list[Prompt]], ArmOutputs], label: str = "", tasks: Sequence[str] | None = None
    ) -> "Screen":
        """A screen over the same tasks (or some of them), judge and statistics whose outputs come from ``generate``."""
        other = object.__new__(Screen)
        other.__dict__.update(self.__dict__)
        other.label = label
        other._generate, other._outputs, other._pairs = generate, None, {}
        other._generate_error = None
        other._prefetched, other._prefetch_error = False, None
        if tasks is not None:
            other.tasks = [t for t in self.tasks if t.name in tasks]
            other.by_name = {t.name: t for t in other.tasks}
        return other

    def task(self, task_name: str) -> Task:
        task = self.by_name.get(task_name)
        if task is None:
            raise TaskError(f"unknown task {task_name!r}; known: {', '.join(self.by_name)}")
        return task

    def pairs(self, task_name: str, a: "ArmRef | None" = None, b: "ArmRef | None" = None) -> list[PairRecord]:
        """The task's paired, judged records; raises :class:`TaskError` where they cannot be formed.

        By default arm A is this screen's target-only arm and arm B its speculative arm; ``a`` and
        ``b`` may name other (screen, arm) sources, e.g. float32 target-only vs bfloat16 target-only.
        """
        a = a or (self, TARGET)
        b = b or (self, SPECULATIVE)
        if self.task(task_name).metric == "refusal":
            self.judge_calibration()  # a judge too close to chance to gate errors the task at setup
        key = (task_name, id(a[0]), a[1], id(b[0]), b[1])
        if key not in self._pairs:
            task = self.task(task_name)
            names = (a[1], b[1]) if a[1] != b[1] else (f"{a[1]} (A)", f"{b[1]} (B)")
            sources = [(screen.outputs(), arm) for screen, arm in (a, b)]
            self._pairs[key] = pairing.pair_outputs(task, sources, names, self._score_all)
        return self._pairs[key]

    def verdict(
        self, task_name: str, a: "ArmRef | None" = None, b: "ArmRef | None" = None, **overrides: Any
    ) -> Verdict:
        """The task's verdict: arm A (default: target-only) against arm B (default: speculative)."""
        allowed = {
            "margin",
            "alpha",
            "h_cutoff",
            "h_null_level",
            "tost_method",
            "spread",
            "leak_test",
            "leak_others",
            "leak_null",
            "audit_tolerance",
        }
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"unknown verdict option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        params = dict(
            margin=self.cfg.margin,
            alpha=self.cfg.alpha,
            h_cutoff=self.cfg.h_cutoff,
            h_null_level=self.cfg.h_null_level,
            tost_method=self.cfg.tost_method,
            leak_test=self.cfg.leak_test,
        )
        params.update(overrides)
        pairs = self.pairs(task_name, a, b)
        if self.by_name[task_name].metric == "refusal":
            params.update(judge_calibration=self.judge_calibration(), judge_name=self.judge_name)
        notes = list(self.outputs().out_of_scope)
        for src in (a, b):
            if src is not None and src[0] is not self:
                notes.extend(n for n in src[0].outputs().out_of_scope if n not in notes)
        if a is None and b is None:  # the target-vs-speculative contrast: its token audit
            params["audit"] = self.outputs().audit or {"unscored_why": REPLAY_UNSCORED}
        return decide(task_name, pairs, metric=self.by_name[task_name].metric, scope_notes=tuple(notes), **params)

    def probe(self, task_name: str) -> dict[str, Any]:
        """Probe mode: the speculative arm alone, its rate with a 95% Wilson interval; never a verdict.

        A sampled arm's rate pools its K samples per prompt; the interval treats each prompt's share
        as one draw (prompts are the independent units), which keeps it conservative.
        """
        from ..stats import wilson_interval

        task = self.task(task_name)
        if not task.prompts:
            raise TaskError(f"task {task_name!r}: no prompts")
        out = self.outputs()
        src = (out.samples if out.sampled else out.outputs).get(SPECULATIVE, {})
        matched = pairing.match(
            task,
            src,
            src,
            (SPECULATIVE, SPECULATIVE),
            out.duplicates.get(task_name, []),
            out.mixed.get(task_name, []),
            sampled=out.sampled,
        )
        items = [(p, g.text, SPECULATIVE) for p, gens, _ in matched for g in gens]
        flags = iter(self._score_all(task, items))
        shares = [sum(next(flags) for _ in gens) / len(gens) for _, gens, _ in matched]
        n, count = len(shares), sum(shares)
        lo, hi = wilson_interval(count, n)
        k = len(matched[0][1])
        row = {
            "task": task_name,
            "metric": task.metric,
            "status": "probe",
            "n": n,
            "count": int(count) if k == 1 else count,
            "rate_speculative": count / n,
            "ci_speculative": [lo, hi],
            "reasons": ["probe: speculative arm only, no target-only arm to compare with; never counted as a pass"],
        }
        if k > 1:
            row["k"] = k
        return row


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
    """Screen one refusal task from two aligned lists of outputs, outside pytest."""
    ids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(target_texts))]
    texts = list(prompts) if prompts is not None else [""] * len(ids)
    if len(texts) != len(ids):
        raise TaskError(f"task {task!r}: {len(ids)} prompt ids but {len(texts)} prompts")
    t = Task(name=task, prompts=tuple(Prompt(task=task, prompt_id=i, prompt=x) for i, x in zip(ids, texts)))
    return decide(task, pairing.pair_texts(t, target_texts, speculative_texts, judge), **params)
