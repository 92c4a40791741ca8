"""The run: options -> config -> screens (matrix cells, variants, null reruns, baseline) -> contrasts.

:class:`TaisSession` owns everything one pytest process screens. ``plan()`` lists the contrasts
(one test each), ``handle(contrast)`` prepares one for its test, and ``finish(rows, engines)``
compares with or saves the baseline and writes the reports. No pytest import: the plugin hands it
the raw option values and two callables (the run's shared folder, and a context that lets engine
progress reach the terminal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

from ..setup import config as _config
from . import contrasts as C
from ..errors import TaskError
from ..records.generation import SPECULATIVE, TARGET, ArmOutputs


class SessionError(ValueError):
    """The run's inputs cannot be screened; the plugin reports it as a usage error."""


@dataclasses.dataclass
class RunSummary:
    """What ``finish`` did: lines for the terminal, and whether the run must fail for it."""

    lines: list[str]
    failed: bool = False
    engines: dict[str, Any] = dataclasses.field(default_factory=dict)


Sink = Callable[[dict], None]


class TaskHandle:
    """What a test gets as ``tais_task``: the task, its paired records, and its verdict.

    ``on(screen)`` gives the same task on another screen (see ``tais_variant``);
    ``between(a, b)`` compares two (screen, arm) sources, e.g. float32 vs bfloat16 target-only.
    """

    def __init__(
        self,
        screen: Any,
        contrast: C.Contrast,
        sink: Sink,
        a: Any = None,
        b: Any = None,
        null: Callable[[], dict | None] | None = None,
        family: Callable[[C.Contrast], list[float]] | None = None,
    ) -> None:
        self.screen = screen
        self.contrast = contrast
        self.name = contrast.task
        self.task = screen.task(contrast.task)
        self._sink = sink
        self._a, self._b = a, b
        self._null = null
        self._family = family  # the other gated contrasts' raw leak p-values (the Holm family)

    def __repr__(self) -> str:
        return f"<tais task {self.name!r}: {len(self.task.prompts)} prompts>"

    @property
    def pairs(self):
        return self.screen.pairs(self.name, self._a, self._b)

    def on(self, screen: Any) -> "TaskHandle":
        return TaskHandle(screen, C.Contrast(self.name, getattr(screen, "label", "") or C.DEFAULT), self._sink)

    def between(self, a: tuple, b: tuple, contrast: str | None = None) -> "TaskHandle":
        return TaskHandle(self.screen, C.Contrast(self.name, contrast or "custom"), self._sink, a, b)

    def prepare(self) -> "TaskHandle":
        """Generate and judge now, so that a broken task errors in its test's setup."""
        if self.contrast.kind == C.PROBE:
            self.screen.probe(self.name)
        else:
            self.pairs
            canary = self.canary
            if canary is not None and canary[1] == 0:
                raise TaskError(
                    f"task {self.name!r}: control void: the canary changed no answer ({canary[0]} replaced answer(s), every "
                    "one equal to the target's), so this run cannot show that the gate catches a leak; raise --tais-canary, "
                    "change --tais-seed, or use a draft whose answers differ from the target's"
                )
        return self

    @property
    def canary(self) -> tuple[int, int] | None:
        """(answers the canary replaced, those that differ from the target's), or None: no canary here."""
        marked = [p for p in self.pairs if p.meta.get("canary")]
        if not marked:
            return None
        if hasattr(marked[0], "target_text"):
            return len(marked), sum(p.speculative_text != p.target_text for p in marked)
        return len(marked), sum(p.speculative_texts != p.target_texts for p in marked)

    @property
    def is_control(self) -> bool:
        """A contrast whose speculative answers a canary replaced is a negative control: it must fail the gate."""
        return self.contrast.kind != C.PROBE and self.canary is not None

    def verdict(self, expect: str = "pass", **overrides: Any):
        from ..report.rows import control_outcome, probe_row, verdict_row

        if self.contrast.kind == C.PROBE:
            self._sink(probe_row(self.screen.probe(self.name), self.contrast.describe()))
            return None
        null = self._null() if self._null is not None else None
        if null is not None:
            overrides.setdefault("h_cutoff", max(self.screen.cfg.h_cutoff, null["abs_h_quantile"]))
            if "rerun_spread" in null:  # sampled: the moved share counts moves beyond the stack's own
                overrides.setdefault("spread", null["rerun_spread"])
            elif "flips" in null:  # greedy: flips are compared with the stack's own target-vs-target flips
                overrides.setdefault("leak_null", tuple(null["flips"]))
            if "audit_tolerance" in null:  # greedy engine runs: the token audit's tolerance from the reruns
                overrides.setdefault("audit_tolerance", tuple(null["audit_tolerance"]))
        if self._family is not None:
            overrides.setdefault("leak_others", self._family(self.contrast))
        if self.is_control:
            expect = "fail"
        v = self.screen.verdict(self.name, self._a, self._b, **overrides)
        row = verdict_row(v, self.contrast.describe(), null)
        if expect == "fail":
            row.update(expect="fail", control=control_outcome(v.status))
        self._sink(row)
        return v


class TaisSession:
    def __init__(
        self,
        raw: Mapping[str, Any],
        rootdir: Path,
        shared_dir: Callable[[], Path],
        quiet: Callable[[], ContextManager] = contextlib.nullcontext,
    ) -> None:
        self.raw = dict(raw)
        self.rootdir = rootdir
        self.cfg = _config.build(raw, rootdir)  # ConfigError
        self._shared_dir = shared_dir
        self._quiet = quiet
        self.engine_settings: Any = None
        self.cells: list[Any] = []  # matrix.Cell; the first is the session's own screen
        self.cell_screens: dict[str, Any] = {}
        self.variants: dict[tuple, Any] = {}
        self.null_screens: list[Any] = []
        self._null_cache: dict[str, dict[str, Any]] = {}
        self._leak_ps: dict[C.Contrast, float] | None = None
        self.baseline: Any = None
        self.baseline_screen: Any = None
        if self.cfg.active:
            try:
                self._build()
            except BaseException:
                self.close()  # a replay may be loaded (and frozen) before a later input fails
                raise

    @property
    def active(self) -> bool:
        return self.cfg.active

    # -- building the screens ------------------------------------------------------------------
    def _build(self) -> None:
        from .screen import Screen, ScreenSetupError

        cells = self._matrix() if self.cfg.engines else []
        generate = None
        if cells:
            self.engine_settings = cells[0][1]
            generate = self.generator(self.engine_settings, arms=(SPECULATIVE,) if self.cfg.probe else None)
        try:
            self.screen = Screen(self.cfg, generate=generate, make_judge_generate=self._judge_factory())
        except ScreenSetupError as exc:
            raise SessionError(str(exc)) from None
        if len(cells) > 1:
            self.cells = [cell for cell, _ in cells]
            self.cell_screens = {cells[0][0].label: self.screen}
            for cell, settings in cells[1:]:
                self.cell_screens[cell.label] = self.screen.derive(self.generator(settings))
        if self.cfg.baseline:
            self._load_baseline()
        for i in range(1, self.cfg.null_runs + 1):
            rerun = dataclasses.replace(self.engine_settings, seed=self.engine_settings.seed + i)
            reference = self._target_answers if not self.cfg.probe else None
            self.null_screens.append(self.screen.derive(self.generator(rerun, (TARGET,), i, reference)))

    def _matrix(self) -> list[tuple[Any, Any]]:
        """The engine settings of every matrix cell (one cell when no option lists several values)."""
        from ..setup import matrix
        from ..engines import SettingsError, engine_settings

        try:
            axes = matrix.read_axes(self.raw, self.rootdir)
            base = engine_settings(matrix.first_values(self.raw, axes), self.rootdir)
        except (matrix.MatrixError, SettingsError) as exc:
            raise SessionError(str(exc)) from None
        out = []
        for cell in matrix.cells(axes) if axes else []:
            draft = cell.changes.get("draft")
            if draft is not None and not Path(draft).is_dir():
                raise SessionError(
                    f"--tais-draft: draft {cell.values['draft']!r} at {draft} is not a model folder; check the path"
                )
            try:
                out.append((cell, dataclasses.replace(base, **cell.changes)))
            except SettingsError as exc:
                raise SessionError(f"matrix cell {cell.label or 'default'}: {exc}") from None
        return out or [(matrix.Cell(label="", changes={}, values={}), base)]

    def _judge_factory(self) -> Any:
        from ..setup.config import needs_engine

        if not needs_engine(self.cfg.judge):
            return None
        from ..engines import judge_engine_factory

        return judge_engine_factory(self.raw, self.engine_settings, self.rootdir, self._shared_dir)

    def _load_baseline(self) -> None:
        from .baseline import BaselineError, check_compatible, load_baseline
        from ..records.generation import index_generations

        try:
            baseline = load_baseline(self.cfg.baseline_dir, self.cfg.baseline)
            check_compatible(baseline, self.screen.tasks)
        except BaselineError as exc:
            raise SessionError(f"--tais-baseline={self.cfg.baseline}: {exc}") from None
        self.baseline = baseline
        self.baseline_screen = self.screen.derive(lambda prompts: index_generations(baseline.generations))

    def _target_answers(self) -> Any:
        """The session's target-only answers by (task, prompt id): what a null rerun's token audit compares with."""
        return self.screen.outputs().outputs.get(TARGET, {})

    def generator(
        self,
        settings: Any,
        arms: tuple[str, ...] | None = None,
        shuffle: int | None = None,
        reference: Callable[[], Any] | None = None,
    ):
        """``generate(prompts) -> ArmOutputs`` on engines with ``settings`` (started on the first call).

        ``reference()``: answers a target-only rerun's token audit compares with (null reruns).
        """

        def generate(prompts):
            from ..engines import run_arms

            if shuffle is not None:  # another batch order: part of what a null rerun varies
                prompts = list(prompts)
                random.Random(shuffle).shuffle(prompts)
            metrics = {t.name: t.metric for t in self.screen.tasks}
            with self._quiet():
                return run_arms(
                    settings,
                    prompts,
                    shared_dir=self._shared_dir(),
                    progress=True,
                    task_metrics=metrics,
                    **({"arms": arms} if arms else {}),
                    **({"reference": reference()} if reference is not None else {}),
                )

        return generate

    def variant(self, tasks: Sequence[str] | None = None, arms: Sequence[str] | None = None, **changes: Any) -> Any:
        """The battery (or some tasks of it) on engines with changed settings; each built once.

        ``arms`` generates only those arms (e.g. ``["target"]`` for a target-vs-target contrast).
        """
        from ..engines import SettingsError
        from ..setup.engine import VLLM_ONLY_FIELDS

        if self.engine_settings is None:
            raise SessionError("tais_variant needs real engines: pass --tais-target (and --tais-draft)")
        if arms is not None:
            arms = tuple(arms)
            if not arms or not set(arms) <= {TARGET, SPECULATIVE}:
                raise SessionError(
                    f"tais_variant(arms={list(arms)!r}): give some of {TARGET!r} and {SPECULATIVE!r}, or leave it out for both"
                )
        key = (tuple(tasks or ()), arms, tuple(sorted((k, str(v)) for k, v in changes.items())))
        if key not in self.variants:
            shown = ", ".join(f"{k}={v!r}" for k, v in changes.items())
            carried = {}
            if changes.get("backend", self.engine_settings.backend) != "vllm":
                # The session's vLLM-only settings size its vLLM engines; a variant on another backend leaves them.
                carried = {f: None for f in VLLM_ONLY_FIELDS if f not in changes}
            try:
                settings = dataclasses.replace(self.engine_settings, **carried, **changes)
            except (TypeError, SettingsError) as exc:
                raise SessionError(f"tais_variant({shown}): {exc}") from None
            unknown = [t for t in tasks or () if t not in self.screen.by_name]
            if unknown:
                raise SessionError(
                    f"tais_variant(tasks={list(tasks)!r}): unknown task(s) {unknown}; tasks are: {', '.join(self.screen.by_name)}"
                )
            label = ",".join(f"{k}={Path(v).name if isinstance(v, Path) else v}" for k, v in changes.items())
            self.variants[key] = self.screen.derive(self.generator(settings, arms=arms), label=label, tasks=tasks)
        return self.variants[key]

    # -- the plan -------------------------------------------------------------------------------
    def plan(self) -> list[C.Contrast]:
        """Every contrast of the run, one test each, in report order."""
        out: list[C.Contrast] = []
        for t in self.screen.tasks:
            if self.cfg.probe:
                out.append(C.Contrast(t.name, C.PROBE))
                continue
            out.extend(self._cell_contrasts(t.name))
            if self.baseline_screen is not None:
                out.extend(C.Contrast(t.name, kind) for kind in C.BASELINE)
        return out

    def _cell_contrasts(self, task: str) -> list[C.Contrast]:
        cells = self.cells
        if len(cells) <= 1:
            return [C.Contrast(task)]
        out = [C.Contrast(task, C.DEFAULT, c.label) for c in cells]
        first = cells[0]
        for axis, kind in (("draft", C.DRAFT_VS_DRAFT), ("dtype", C.PRECISION)):
            out.extend(
                C.Contrast(task, kind, a.label, b.label)
                for a in cells
                if a.values.get(axis) == first.values.get(axis)
                for b in cells
                if axis in b.values and b.differs_only_in(a, axis)
            )
        return out

    def screen_for(self, label: str) -> Any:
        return self.cell_screens.get(label, self.screen) if label else self.screen

    def handle(self, contrast: C.Contrast, sink: Sink) -> TaskHandle:
        """The contrast's handle, generated and judged (raises :class:`TaskError` where it cannot be)."""
        screen = self.screen_for(contrast.config)
        a = b = None
        if contrast.kind in C.BASELINE:
            base_arm, arm = C.BASELINE[contrast.kind]
            a, b = (self.baseline_screen, base_arm), (self.screen, arm)
        elif contrast.kind in (C.DRAFT_VS_DRAFT, C.PRECISION):
            arm = SPECULATIVE if contrast.kind == C.DRAFT_VS_DRAFT else TARGET
            a, b = (screen, arm), (self.screen_for(contrast.versus), arm)
        null = None
        if contrast.kind == C.DEFAULT and self.null_screens and not contrast.config:
            null = lambda: self.null_calibration(contrast.task)  # noqa: E731
        family = self.leak_family if contrast.kind == C.DEFAULT else None
        handle = TaskHandle(screen, contrast, sink, a, b, null, family).prepare()
        if null is not None:
            null()
        return handle

    def null_calibration(self, task: str) -> dict[str, Any]:
        """The stack's own nondeterminism for one task: the target-only arm against its reruns."""
        if task not in self._null_cache:
            import numpy as np

            shares, hs, spreads, flips = [], [], [], [0, 0]
            for rerun in self.null_screens:
                v = self.screen.verdict(task, (self.screen, TARGET), (rerun, TARGET), leak_test="report")
                if v.k == 1:
                    flips[0] += v.table.b
                    flips[1] += v.table.c
                shares.append(v.identity.identical_share)
                hs.append(abs(v.cohens_h))
                if v.k > 1:  # sampled: how far a prompt's share moves between reruns of one arm
                    from ..stats import rerun_spread

                    spreads.append(rerun_spread(v.counts_target, v.counts_speculative, v.k))
            level = self.cfg.h_null_level
            self._null_cache[task] = {
                "runs": len(hs),
                "identical_share": shares,
                "abs_h": hs,
                "abs_h_quantile": float(np.quantile(hs, level, method="inverted_cdf")),
                "level": level,
            }
            if spreads:
                self._null_cache[task].update(rerun_spreads=spreads, rerun_spread=max(spreads))
            else:
                self._null_cache[task]["flips"] = flips
                self._null_cache[task].update(self._null_audit())
        return self._null_cache[task]

    def _null_audit(self) -> dict[str, Any]:
        """The token audit's tolerance from the reruns: the gaps at their answers' divergence positions
        (every task pooled: numerics noise belongs to the stack, not to a task). Nothing where the
        reruns were not scored (a replay, a backend that cannot score)."""
        from ..stats.audit import tolerance_from_null

        gaps: list[float] = []
        for rerun in self.null_screens:
            out = rerun.outputs()
            if not out.audit or out.audit.get("unscored_why"):
                return {}
            for g in out.outputs.get(TARGET, {}).values():
                gaps += [float(m["gap"]) for m in (g.target_scores or {}).get("mismatches", ())]
        tol, source = tolerance_from_null(gaps, len(self.null_screens))
        return {"audit_tolerance": [tol, source], "audit_null_gaps": len(gaps)}

    def leak_family(self, contrast: C.Contrast) -> list[float]:
        """The raw leak p-values of the other gated (target-vs-speculative) contrasts of the same matrix cell.

        Holm's adjustment needs every p of the family; each is computed once per process from the
        judged pairs. The family is one configuration's tasks: each cell is a claim about its own
        stack, and an xdist worker screening one cell starts no other cell's engines for it. A
        contrast that cannot be computed counts with p = 1 (it errors in its own test): the family
        keeps its size, so the adjustment is never weaker than planned.
        """
        if self._leak_ps is None:
            from ..stats.leak import contrast_counts, raw_p

            ps: dict[C.Contrast, float] = {}
            for c in self.plan():
                if c.kind != C.DEFAULT:
                    continue
                try:
                    b, cc, diffs = contrast_counts(self.screen_for(c.config).pairs(c.task))
                    null = None
                    if self.null_screens and not c.config and diffs is None:
                        null = tuple(self.null_calibration(c.task).get("flips") or (0, 0))
                    ps[c] = raw_p(b, cc, null, diffs)[0]
                except TaskError:
                    ps[c] = 1.0
            self._leak_ps = ps
        return [p for c, p in self._leak_ps.items() if c != contrast and c.config == contrast.config]

    # -- after the tests ------------------------------------------------------------------------
    def generated_outputs(self) -> list[tuple[str, ArmOutputs]]:
        """(label, outputs) of every screen this process generated."""
        screens = list(self.cell_screens.items()) if self.cell_screens else [("", self.screen)]
        screens += [(v.label, v) for v in self.variants.values()]
        screens += [(f"null rerun {i}", v) for i, v in enumerate(self.null_screens, 1)]
        return [(label, s.outputs()) for label, s in screens if s.generated]

    def order(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        tasks = {t.name: i for i, t in enumerate(self.screen.tasks)}
        cells = {c.label: i for i, c in enumerate(self.cells)}

        def key(r: Mapping[str, Any]) -> tuple:
            kind = r.get("contrast", C.DEFAULT)
            c = C.Contrast(
                r.get("task", ""), kind if kind in C.ORDER else C.DEFAULT, r.get("config", ""), r.get("versus", "")
            )
            return (*c.sort_key(tasks, cells), r.get("nodeid", ""))

        return [dict(r) for r in sorted(rows, key=key)]

    def finish(self, rows: Sequence[Mapping[str, Any]], engines: dict[str, Any], exit_ok: bool) -> RunSummary:
        """Compare with or save the baseline, then write the reports; ``rows`` in any order."""
        rows = self.order(rows)
        summary = RunSummary(lines=[], engines=engines)
        from ..pairs.safety_judges import judge_line

        line = judge_line(self.screen.judge)
        if line:
            summary.lines.append(line)
        if self.cfg.baseline or self.cfg.save_baseline:
            from .baseline import fingerprint_diff, stack_fingerprint

            settings = self.engine_settings.describe() if self.engine_settings is not None else None
            fingerprint = stack_fingerprint(
                settings, engines.get("fingerprints") or {}, self.screen.judge_name, self.cfg.battery
            )
            if self.baseline is not None:
                changes = fingerprint_diff(self.baseline.fingerprint, fingerprint)
                engines["baseline"] = {"name": self.baseline.name, "fingerprint_changes": changes}
                summary.lines.append(f"tais: compared with baseline {self.baseline.name!r}; stack changes:")
                summary.lines.extend(f"  {line}" for line in changes or ["(none)"])
            if self.cfg.save_baseline:
                saved, line = self._save_baseline(rows, fingerprint)
                summary.lines.append(line)
                summary.failed = not saved
        if self.cfg.report is not None:
            from ..report import build_report, write_html, write_markdown, write_report
            from ..pairs.safety_judges import describe as describe_judge

            # The judge as resolved (its rules' version, or its model's hash), beside the option as given.
            from ..battery.published import provenance_of

            datasets = provenance_of(self.screen.tasks)  # published benchmarks: id, commit, sha256, licence
            report = build_report(
                {
                    **self.cfg.describe(),
                    "judge_name": self.screen.judge_name,
                    **describe_judge(self.screen.judge),
                    **({"datasets": datasets} if datasets else {}),
                },
                rows,
                engines,
            )
            write_report(self.cfg.report, report)
            write_markdown(self.cfg.report, report)
            write_html(self.cfg.report, report)
        return summary

    def close(self) -> None:
        """The run is over: the records loaded at the start go back to the collector (see
        :func:`pytest_tais.records.generation.freeze_long_lived`)."""
        from ..records.files import unfreeze_long_lived

        unfreeze_long_lived()

    def _save_baseline(self, rows: Sequence[Mapping[str, Any]], fingerprint: dict[str, Any]) -> tuple[bool, str]:
        from .baseline import BaselineError, save_baseline

        name = self.cfg.save_baseline
        rows = [r for r in rows if r.get("contrast", C.DEFAULT) == C.DEFAULT]
        screened = {r.get("task") for r in rows if r.get("status") in ("pass", "fail")}
        missing = [t.name for t in self.screen.tasks if t.name not in screened]
        if missing:
            return False, f"tais: baseline {name!r} NOT saved: no verdict for task(s) {', '.join(missing)}"
        try:
            outputs = self.screen.outputs()  # replay: loaded; engines: read back from the store
            wanted = {(t.name, p.prompt_id) for t in self.screen.tasks for p in t.prompts}
            if outputs.sampled:  # every sample of every prompt
                generations = [
                    g
                    for arm in outputs.samples.values()
                    for key, per in arm.items()
                    if key in wanted
                    for g in per.values()
                ]
            else:
                generations = [g for arm in outputs.outputs.values() for key, g in arm.items() if key in wanted]
            path = save_baseline(
                self.cfg.baseline_dir,
                name,
                generations=generations,
                rows=rows,
                fingerprint=fingerprint,
                config=self.cfg.describe(),
            )
        except (BaselineError, TaskError) as exc:
            return False, f"tais: baseline {name!r} NOT saved: {exc}"
        return True, f"tais: saved baseline {name!r} in {path}"
