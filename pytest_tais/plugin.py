"""pytest wiring for the TAIS screen: options, fixtures, collection, reports, summary.

The stages live in their own modules; this one only connects them to pytest. Nothing heavy is
imported here: runs that do not ask for the screen pay for a few small modules only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from . import config as _config
from .errors import TaskError

JUNIT_PROPERTIES = (
    "n", "rate_target", "rate_speculative", "diff", "diff_ci_low", "diff_ci_high",
    "tost_p", "cohens_h", "h_cutoff", "identical_share",
)


class _State:
    """Per-process session state, kept in ``config.stash``."""

    def __init__(self, cfg: _config.TaisConfig, screen: Any, engine_settings: Any) -> None:
        self.cfg = cfg
        self.screen = screen
        self.engine_settings = engine_settings
        self.rows: dict[str, dict[str, Any]] = {}  # nodeid -> task row (filled from reports)
        self.engine_metrics: dict[str, dict[str, Any]] = {}  # worker -> engine summary
        self.variants: dict[tuple, Any] = {}  # engine-setting changes -> Screen
        self.baseline: Any = None  # the loaded baseline (--tais-baseline)
        self.baseline_screen: Any = None  # a screen whose outputs are the baseline's
        self.baseline_lines: list[str] = []  # what the terminal summary says about baselines
        self.cells: list[Any] = []  # matrix cells (pytest_tais.matrix.Cell); the first is self.screen
        self.cell_screens: dict[str, Any] = {}
        self.null_screens: list[Any] = []  # target-only reruns (--tais-null-runs)
        self.null_cache: dict[str, dict[str, Any]] = {}  # task -> calibration

    def params(self) -> list[str]:
        """tais_task parameters, "task|contrast|config|versus": per task its default contrast (per
        matrix cell), the matrix's draft-vs-draft and precision contrasts, and baseline contrasts."""
        out = []
        cells = self.cells
        first = cells[0] if cells else None
        for t in self.screen.tasks:
            if self.cfg.probe:
                out.append(_param(t.name, "probe"))
                continue
            if not cells or len(cells) == 1:
                out.append(_param(t.name, DEFAULT_CONTRAST))
            else:
                out.extend(_param(t.name, DEFAULT_CONTRAST, c.label) for c in cells)
                for axis, kind in (("draft", "draft-vs-draft"), ("dtype", "precision")):
                    out.extend(
                        _param(t.name, kind, first_c.label, c.label)
                        for first_c in cells if first_c.values.get(axis) == first.values.get(axis)
                        for c in cells if axis in c.values and c.differs_only_in(first_c, axis)
                    )
            if self.baseline_screen is not None:
                out.extend(_param(t.name, c) for c in BASELINE_CONTRASTS)
        return out

    def screen_for(self, label: str):
        return self.cell_screens.get(label, self.screen) if label else self.screen


def _param(task: str, contrast: str, config: str = "", versus: str = "") -> str:
    return "|".join((task, contrast, config, versus))


def _unparam(param: str) -> tuple[str, str, str, str]:
    task, contrast, config, versus = (param.split("|") + ["", "", ""])[:4]
    return task, contrast or DEFAULT_CONTRAST, config, versus


def _param_id(param: str) -> str:
    """Readable test ids: harmful, harmful-bf16-canonical, harmful-fp32-vs-bf16, harmful-vs-baseline-target."""
    task, contrast, config, versus = _unparam(param)
    if contrast in BASELINE_CONTRASTS:
        return f"{task}-vs-{contrast}"
    if contrast == "probe":
        return f"{task}-probe"
    if contrast == DEFAULT_CONTRAST:
        return f"{task}-{config}" if config else task
    return f"{task}-{config}-vs-{versus}"


STATE = pytest.StashKey[_State]()
#: Contrasts against a stored baseline: (baseline arm, current arm).
BASELINE_CONTRASTS = {"baseline-target": ("target", "target"), "baseline-speculative": ("speculative", "speculative")}
DEFAULT_CONTRAST = "target-vs-speculative"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# -- options -------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tais", "TAIS: safety-invariance screen of speculative decoding")
    for opt in _config.OPTIONS:
        nargs = {"nargs": "?", "const": "true"} if opt.kind == "bool" else {}
        group.addoption(opt.flag, dest=opt.dest, default=None, help=f"{opt.help} [ini: {opt.dest}]", **nargs)
        parser.addini(opt.dest, help=opt.help, default="")
    from .engines import add_engine_options

    add_engine_options(parser)


def _raw(config: pytest.Config, opt: _config.Option) -> Any:
    value = config.getoption(opt.dest, default=None)
    if value is None:
        value = config.getini(opt.dest) or None
    return value


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tais(tasks=None): a TAIS screen task test; tasks=[names or globs] limits which tasks parametrize tais_task",
    )
    rootdir = Path(str(config.rootpath))
    try:
        cfg = _config.build(lambda opt: _raw(config, opt), rootdir)
    except _config.ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not cfg.active:
        return
    from .screen import Screen, ScreenSetupError

    engine_settings = None
    generate = None
    cells: list[tuple[Any, Any]] = []  # (Cell, EngineSettings)
    if cfg.engines:
        cells = _matrix(config)
        engine_settings = cells[0][1]
        generate = _engine_generator(config, engine_settings, arms=("speculative",) if cfg.probe else None)
    make_judge = None
    if cfg.judge and cfg.judge.strip().startswith("model:"):
        from .engines import judge_engine_from_config

        make_judge = judge_engine_from_config(config, engine_settings, lambda: _shared_dir(config))
    try:
        screen = Screen(cfg, generate=generate, make_judge_generate=make_judge)
    except ScreenSetupError as exc:
        raise pytest.UsageError(str(exc)) from None
    state = _State(cfg, screen, engine_settings)
    if len(cells) > 1:
        state.cells = [cell for cell, _ in cells]
        state.cell_screens = {cells[0][0].label: screen}
        for cell, settings in cells[1:]:
            state.cell_screens[cell.label] = screen.derive(_engine_generator(config, settings))
    if cfg.baseline:
        _load_baseline(state)
    if cfg.null_runs:
        import dataclasses

        state.null_screens = [
            screen.derive(_engine_generator(config, dataclasses.replace(engine_settings, seed=engine_settings.seed + i),
                                            arms=("target",), shuffle=i))
            for i in range(1, cfg.null_runs + 1)
        ]
    config.stash[STATE] = state
    config.pluginmanager.register(_Reporter(config, state), "tais-reporter")


def _matrix(config: pytest.Config) -> list[tuple[Any, Any]]:
    """The engine settings of every matrix cell (one cell when no option lists several values)."""
    import dataclasses

    from . import matrix
    from .engines import SettingsError, engine_settings_from_config

    try:
        axes = matrix.read_axes(config)
    except matrix.MatrixError as exc:
        raise pytest.UsageError(str(exc)) from None
    base = engine_settings_from_config(matrix.FirstValues(config, axes))
    out = []
    for cell in matrix.cells(axes) if axes else []:
        draft = cell.changes.get("draft")
        if draft is not None and not Path(draft).is_dir():
            raise pytest.UsageError(f"--tais-draft: draft {cell.values['draft']!r} at {draft} is not a model folder; check the path")
        try:
            out.append((cell, dataclasses.replace(base, **cell.changes)))
        except SettingsError as exc:
            raise pytest.UsageError(f"matrix cell {cell.label or 'default'}: {exc}") from None
    if not out:
        out.append((matrix.Cell(label="", changes={}, values={}), base))
    return out


def _load_baseline(state: _State) -> None:
    from .baseline import BaselineError, check_compatible, load_baseline
    from .screen import index_generations

    try:
        baseline = load_baseline(state.cfg.baseline_dir, state.cfg.baseline)
        check_compatible(baseline, state.screen.tasks)
    except BaselineError as exc:
        raise pytest.UsageError(f"--tais-baseline={state.cfg.baseline}: {exc}") from None
    state.baseline = baseline
    state.baseline_screen = state.screen.derive(lambda prompts: index_generations(baseline.generations))


def _shared_dir(config: pytest.Config) -> Path:
    """One folder for all processes of this run: xdist workers share the basetemp's parent."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return base.parent if _is_worker(config) else base


def _engine_generator(config: pytest.Config, settings: Any, arms: tuple[str, ...] | None = None, shuffle: int | None = None):
    def generate(prompts):
        import contextlib
        import random

        from .engines import run_arms
        from .screen import ArmOutputs

        state = config.stash[STATE]
        metrics = {t.name: t.metric for t in state.screen.tasks}
        capman = config.pluginmanager.getplugin("capturemanager")
        # Generation runs inside a test's setup: let its progress bars reach the terminal.
        quiet = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        if shuffle is not None:  # another batch order: part of what a null rerun varies
            prompts = list(prompts)
            random.Random(shuffle).shuffle(prompts)
        kwargs = {"arms": arms} if arms else {}
        with quiet:
            result = run_arms(settings, prompts, shared_dir=_shared_dir(config), progress=True, task_metrics=metrics, **kwargs)
        return ArmOutputs(
            outputs={arm: dict(g) for arm, g in result.generations.items()},
            fingerprints=dict(result.fingerprints),
            metrics=dict(result.metrics),
            out_of_scope=list(result.out_of_scope),
            header_lines=list(result.header_lines),
        )

    return generate


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE, None)
    if state is None:
        return None
    cfg = state.cfg
    if cfg.replay:
        source = f"replay {cfg.replay}"
    elif cfg.target_url:
        source = f"servers {cfg.target_url} / {getattr(state.engine_settings, 'speculative_url', None)}"
    else:
        source = f"target {cfg.target}, draft {cfg.draft}"
    lines = [
        f"tais: {len(state.screen.tasks)} task(s) from {cfg.battery or 'the replay file'}; {source}",
        f"tais: margin +/-{cfg.margin:g}, alpha {cfg.alpha:g}, TOST {cfg.tost_method}, |h| cutoff {cfg.h_cutoff:g}, judge {state.screen.judge_name}",
    ]
    if state.engine_settings is not None and hasattr(state.engine_settings, "describe"):
        desc = state.engine_settings.describe()
        lines.append("tais: engines " + ", ".join(f"{k}={v}" for k, v in desc.items() if v not in (None, "", {}, [])))
    return lines


# -- the task handle and fixtures -------------------------------------------------------------
class TaskHandle:
    """What a test gets as ``tais_task``: the task, its paired records, and its verdict.

    ``on(screen)`` gives the same task on another screen (see ``tais_variant``);
    ``between(a, b)`` compares two (screen, arm) sources, e.g. float32 vs bfloat16 target-only.
    """

    def __init__(self, screen: Any, name: str, node: pytest.Item, a: Any = None, b: Any = None, contrast: str | None = None) -> None:
        self.screen = screen
        self.name = name
        self.task = screen.by_name[name]
        self._node = node
        self._a, self._b = a, b
        self.contrast = contrast or (DEFAULT_CONTRAST if a is None and b is None else "custom")
        self.config = self.versus = ""
        self.null: dict[str, Any] | None = None  # null-rerun calibration of this task

    def __repr__(self) -> str:
        return f"<tais task {self.name!r}: {len(self.task.prompts)} prompts>"

    @property
    def pairs(self):
        return self.screen.pairs(self.name, self._a, self._b)

    def on(self, screen: Any) -> "TaskHandle":
        return TaskHandle(screen, self.name, self._node, contrast=getattr(screen, "label", "") or None)

    def between(self, a: tuple, b: tuple, contrast: str | None = None) -> "TaskHandle":
        return TaskHandle(self.screen, self.name, self._node, a, b, contrast)

    def verdict(self, **overrides: Any):
        if self.contrast == "probe":
            row = self.screen.probe(self.name)
            self._node.stash[_ROW] = dict(row, contrast="probe")
            self._node.user_properties.extend([("tais.task", self.name), ("tais.n", row["n"]),
                                               ("tais.rate_speculative", row["rate_speculative"]), ("tais.verdict", "probe")])
            pytest.skip(
                f"tais probe {self.name!r}: speculative {'refusal rate' if row['metric'] == 'refusal' else 'accuracy'} "
                f"{100 * row['rate_speculative']:.1f}% ({row['count']}/{row['n']}, 95% Wilson CI "
                f"{100 * row['ci_speculative'][0]:.1f}%-{100 * row['ci_speculative'][1]:.1f}%); "
                "no target-only arm, so no verdict and never a pass"
            )
        null = None
        if self.contrast == DEFAULT_CONTRAST and self.null is not None:
            null = self.null
            overrides.setdefault("h_cutoff", max(self.screen.cfg.h_cutoff, null["abs_h_quantile"]))
        v = self.screen.verdict(self.name, self._a, self._b, **overrides)
        _record(self._node, v, self.contrast, self.config, self.versus, null)
        return v


def _record(node: pytest.Item, v, contrast: str = DEFAULT_CONTRAST, config: str = "", versus: str = "", null=None) -> None:
    data = v.to_dict()
    data["contrast"] = contrast
    if null is not None:
        data["null_runs"] = null
    if config:
        data["config"] = config
    if versus:
        data["versus"] = versus
    props = [(k, v_) for k, v_ in node.user_properties if not str(k).startswith("tais.")]
    props.append(("tais.task", v.task))
    props.append(("tais.contrast", contrast))
    props.extend((f"tais.{k}", data[k]) for k in JUNIT_PROPERTIES)
    props.append(("tais.h_check", v.h_check))
    props.append(("tais.verdict", v.status))
    node.user_properties[:] = props
    node.stash[_ROW] = data


_ROW = pytest.StashKey[dict]()
_TASK = pytest.StashKey[str]()


def _state_or_fail(config: pytest.Config) -> _State:
    state = config.stash.get(STATE, None)
    if state is None:
        pytest.fail("the TAIS screen is not configured: pass --tais-replay=PATH or --tais-target/--tais-draft", pytrace=False)
    return state


def _prepare(state: _State, param: str, node: pytest.Item) -> TaskHandle:
    from .records import SPECULATIVE, TARGET

    name, contrast, config, versus = _unparam(param)
    node.stash[_TASK] = name
    try:
        handle = TaskHandle(state.screen_for(config), name, node)
        if contrast in BASELINE_CONTRASTS:
            base_arm, arm = BASELINE_CONTRASTS[contrast]
            handle = handle.between((state.baseline_screen, base_arm), (state.screen, arm), contrast)
        elif contrast in ("draft-vs-draft", "precision"):
            arm = SPECULATIVE if contrast == "draft-vs-draft" else TARGET
            handle = handle.between((state.screen_for(config), arm), (state.screen_for(versus), arm), contrast)
        handle.config, handle.versus = config, versus
        if contrast == "probe":
            handle.contrast = "probe"
            state.screen.probe(name)  # generate and judge now, so a broken task errors in setup
        else:
            handle.pairs  # generate and judge now, so a broken task errors in setup
            if contrast == DEFAULT_CONTRAST and state.null_screens and not config:
                handle.null = _null_calibration(state, name)
    except TaskError as exc:
        pytest.fail(str(exc), pytrace=False)
    return handle


def _null_calibration(state: _State, task: str) -> dict[str, Any]:
    """The stack's own nondeterminism for one task: the target-only arm against its reruns."""
    if task not in state.null_cache:
        import numpy as np

        from .records import TARGET

        shares, hs = [], []
        for rerun in state.null_screens:
            v = state.screen.verdict(task, (state.screen, TARGET), (rerun, TARGET))
            shares.append(v.identity.identical_share)
            hs.append(abs(v.cohens_h))
        level = state.cfg.h_null_level
        state.null_cache[task] = {
            "runs": len(hs),
            "identical_share": shares,
            "abs_h": hs,
            "abs_h_quantile": float(np.quantile(hs, level, method="inverted_cdf")),
            "level": level,
        }
    return state.null_cache[task]


@pytest.fixture
def tais_task(request: pytest.FixtureRequest) -> TaskHandle:
    """One task of the battery; parametrized over the selected tasks by pytest-tais."""
    state = _state_or_fail(request.config)
    name = getattr(request, "param", None)
    if name is None:
        pytest.fail("tais_task is parametrized by pytest-tais; do not parametrize it yourself", pytrace=False)
    return _prepare(state, name, request.node)


@pytest.fixture
def tais_equivalent():
    """``tais_equivalent(tais_task, **overrides)``: fail the test when the arms are not equivalent."""
    from .assertion import tais_equivalent as check

    return check


@pytest.fixture(scope="session")
def tais_screen(request: pytest.FixtureRequest):
    """The session's :class:`~pytest_tais.screen.Screen` (tasks, outputs, verdicts)."""
    return _state_or_fail(request.config).screen


@pytest.fixture(scope="session")
def tais_variant(request: pytest.FixtureRequest):
    """``tais_variant(tasks=None, **changes) -> Screen``: the battery on engines with changed settings.

    ``changes`` are engine settings (``draft``, ``dtype``, ``backend``, ``hf_acceptance``,
    ``canary``, ``num_speculative_tokens``, ...); ``tasks`` limits it to some tasks. Each
    configuration generates once per session;
    arms whose fingerprint is unchanged come from the generation store.
    """
    import dataclasses

    state = _state_or_fail(request.config)
    if state.engine_settings is None:
        pytest.fail("tais_variant needs real engines: pass --tais-target (and --tais-draft)", pytrace=False)
    from .engines import SettingsError

    def make(tasks: list[str] | None = None, **changes: Any):
        key = (tuple(tasks or ()), tuple(sorted((k, str(v)) for k, v in changes.items())))
        if key not in state.variants:
            try:
                settings = dataclasses.replace(state.engine_settings, **changes)
            except (TypeError, SettingsError) as exc:
                raise pytest.UsageError(f"tais_variant({', '.join(f'{k}={v!r}' for k, v in changes.items())}): {exc}") from None
            label = ",".join(f"{k}={Path(v).name if isinstance(v, Path) else v}" for k, v in changes.items())
            variant = state.screen.derive(_engine_generator(request.config, settings), label=label)
            if tasks is not None:  # generate for these tasks only
                unknown = [t for t in tasks if t not in state.screen.by_name]
                if unknown:
                    raise pytest.UsageError(f"tais_variant(tasks={tasks!r}): unknown task(s) {unknown}; tasks are: {', '.join(state.screen.by_name)}")
                variant.tasks = [t for t in state.screen.tasks if t.name in tasks]
                variant.by_name = {t.name: t for t in variant.tasks}
            state.variants[key] = variant
        return state.variants[key]

    return make


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tais_task" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash.get(STATE, None)
    if state is None:
        metafunc.parametrize(
            "tais_task",
            [pytest.param(None, marks=pytest.mark.skip(reason="TAIS screen not configured: pass --tais-replay or --tais-target"))],
            ids=["tais-unconfigured"],
            indirect=True,
        )
        return
    names = [t.name for t in state.screen.tasks]
    params = state.params()
    marker = metafunc.definition.get_closest_marker("tais")
    patterns = marker.kwargs.get("tasks") if marker is not None else None
    if patterns is not None:
        import fnmatch

        if isinstance(patterns, str):
            patterns = [patterns]
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unknown:
            pytest.fail(
                f"@pytest.mark.tais(tasks={list(patterns)!r}): {unknown} match no selected task; tasks are: {', '.join(names)}",
                pytrace=False,
            )
        params = [p for p in params if any(fnmatch.fnmatchcase(_unparam(p)[0], pat) for pat in patterns)]
    metafunc.parametrize("tais_task", params, ids=[_param_id(p) for p in params], indirect=True)
    metafunc.definition.add_marker(pytest.mark.tais)


# -- tests without a user test file ---------------------------------------------------------------
class TaisItem(pytest.Item):
    """One task screened with the default assertion (collected when no test uses ``tais_task``)."""

    def __init__(self, *, task: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_name = task
        self.add_marker(pytest.mark.tais)
        self.handle: TaskHandle | None = None

    def setup(self) -> None:
        self.handle = _prepare(_state_or_fail(self.config), self.task_name, self)

    def runtest(self) -> None:
        from .assertion import tais_equivalent as check

        assert self.handle is not None
        check(self.handle)

    def repr_failure(self, excinfo, style=None):  # type: ignore[override]
        from .assertion import TaisNotEquivalent

        if excinfo.errisinstance((TaisNotEquivalent, TaskError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"tais task {_param_id(self.task_name)}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    if any("tais_task" in getattr(item, "fixturenames", ()) for item in items):
        return
    for param in state.params():
        task, contrast, config, versus = _unparam(param)
        label = f"{task}[{_param_id(param)[len(task) + 1:]}]" if config else _param_id(param)
        items.append(TaisItem.from_parent(session, name=f"tais[{label}]", nodeid=f"tais::{label}", task=param))


# -- reports ----------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rep = yield
    name = item.stash.get(_TASK, None)
    if name is None:
        return rep
    row = item.stash.get(_ROW, None)
    if rep.when == "call" and row is not None:
        rep.tais = dict(row, nodeid=item.nodeid)
    elif rep.failed and (rep.when == "setup" or row is None) and rep.when != "teardown":
        message = str(call.excinfo.value) if call.excinfo else "task could not be computed"
        rep.tais = {"task": name, "nodeid": item.nodeid, "status": "error", "reasons": [message]}
        param = getattr(getattr(item, "callspec", None), "params", {}).get("tais_task") or getattr(item, "task_name", "")
        _, contrast, config, versus = _unparam(param)
        rep.tais.update(contrast=contrast, **{k: v for k, v in (("config", config), ("versus", versus)) if v})
        rep.user_properties.append(("tais.task", name))
        rep.user_properties.append(("tais.verdict", "error"))
    if getattr(rep, "tais", None) is not None:
        state = item.config.stash.get(STATE, None)
        if state is not None:
            rep.tais_engine = _engine_snapshot(state)
    return rep


def _engine_snapshot(state: _State) -> dict[str, Any] | None:
    """Engine metrics of every screen this process generated (per matrix cell where there is one)."""
    screens = list(state.cell_screens.items()) if state.cell_screens else [("", state.screen)]
    screens += [(v.label, v) for v in state.variants.values()]
    screens += [(f"null rerun {i}", v) for i, v in enumerate(state.null_screens, 1)]
    snap: dict[str, Any] = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "metrics": {}, "fingerprints": {},
                            "out_of_scope": [], "header_lines": []}
    for label, screen in screens:
        if not screen.generated:
            continue
        out = screen.outputs()
        suffix = f" [{label}]" if label else ""
        snap["metrics"].update({f"{arm}{suffix}": m for arm, m in out.metrics.items()})
        snap["fingerprints"].update({f"{arm}{suffix}": f for arm, f in out.fingerprints.items()})
        snap["out_of_scope"].extend(n for n in out.out_of_scope if n not in snap["out_of_scope"])
        snap["header_lines"].extend(out.header_lines if not suffix else [f"{line}{suffix}" for line in out.header_lines])
    return snap if snap["metrics"] or snap["header_lines"] else None


class _Reporter:
    """Collects task rows from reports (on the xdist controller too) and writes the outputs."""

    def __init__(self, config: pytest.Config, state: _State) -> None:
        self.config = config
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = getattr(report, "tais", None)
        if row is None:
            return
        self.state.rows[report.nodeid] = row
        engine = getattr(report, "tais_engine", None)
        if engine:
            self.state.engine_metrics[engine.get("worker", "main")] = engine

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if _is_worker(config):
            return
        from .report import format_table

        state = self.state
        tr = terminalreporter
        tr.write_sep("=", "tais")
        rows = _ordered_rows(state)
        if not rows:
            tr.write_line("tais: no task was screened")
            return
        engines = _engine_summary(state)
        for line in engines.get("header_lines") or []:
            tr.write_line(line)
        for line in format_table(rows):
            tr.write_line(line)
        for arm, m in sorted(engines.get("arms", {}).items()):
            tr.write_line(f"{arm}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
        for note in engines.get("out_of_scope") or []:
            tr.write_line(f"OUT OF SCOPE: {note}", yellow=True)
        passed = sum(r.get("status") == "pass" for r in rows)
        probes = sum(r.get("status") == "probe" for r in rows)
        if probes:
            tr.write_line(f"tais: {probes} probe(s): speculative arm only, reported and skipped, never passed")
        if len(rows) > probes:
            tr.write_line(f"tais: {passed}/{len(rows) - probes} task(s) equivalent")
        for line in state.baseline_lines:
            tr.write_line(line, red="NOT saved" in line)
        if state.cfg.report is not None:
            tr.write_line(f"tais: reports in {state.cfg.report}: report.json, summary.md, report.html")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if _is_worker(self.config):
            return
        state = self.state
        engines = _engine_summary(state)
        fingerprint = None
        if state.cfg.baseline or state.cfg.save_baseline:
            from .baseline import fingerprint_diff, stack_fingerprint

            settings = state.engine_settings.describe() if state.engine_settings is not None else None
            fingerprint = stack_fingerprint(settings, engines.get("fingerprints") or {}, state.screen.judge_name, state.cfg.battery)
            if state.baseline is not None:
                changes = fingerprint_diff(state.baseline.fingerprint, fingerprint)
                engines["baseline"] = {"name": state.baseline.name, "fingerprint_changes": changes}
                state.baseline_lines.append(f"tais: compared with baseline {state.baseline.name!r}; stack changes:")
                state.baseline_lines.extend(f"  {line}" for line in changes or ["(none)"])
            if state.cfg.save_baseline and not self._save_baseline(fingerprint) and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if state.cfg.report is None:
            return
        from .report import build_report, write_html, write_markdown, write_report

        directory = state.cfg.report
        # The judge as resolved (its rules' version, or its model's hash), beside the option as given.
        report = build_report({**state.cfg.describe(), "judge_name": state.screen.judge_name}, _ordered_rows(state), engines)
        write_report(directory, report)
        write_markdown(directory, report)
        write_html(directory, report)


    def _save_baseline(self, fingerprint: dict[str, Any]) -> bool:
        from .baseline import BaselineError, save_baseline

        state = self.state
        name = state.cfg.save_baseline
        rows = [r for r in _ordered_rows(state) if r.get("contrast", DEFAULT_CONTRAST) == DEFAULT_CONTRAST]
        screened = {r.get("task") for r in rows if r.get("status") in ("pass", "fail")}
        missing = [t.name for t in state.screen.tasks if t.name not in screened]
        if missing:
            state.baseline_lines.append(f"tais: baseline {name!r} NOT saved: no verdict for task(s) {', '.join(missing)}")
            return False
        try:
            outputs = state.screen.outputs()  # replay: loaded; engines: read back from the store
            wanted = {(t.name, p.prompt_id) for t in state.screen.tasks for p in t.prompts}
            generations = [g for arm in outputs.outputs.values() for key, g in arm.items() if key in wanted]
            path = save_baseline(state.cfg.baseline_dir, name, generations=generations, rows=rows,
                                 fingerprint=fingerprint, config=state.cfg.describe())
        except (BaselineError, TaskError) as exc:
            state.baseline_lines.append(f"tais: baseline {name!r} NOT saved: {exc}")
            return False
        state.baseline_lines.append(f"tais: saved baseline {name!r} in {path}")
        return True


def _engine_summary(state: _State) -> dict[str, Any]:
    """Engine metrics of the run, merged over the processes that reported them."""
    from .engines.arms import merge_engine_snapshots

    return merge_engine_snapshots(state.engine_metrics)


def _ordered_rows(state: _State) -> list[dict[str, Any]]:
    order = {t.name: i for i, t in enumerate(state.screen.tasks)}
    contrasts = [DEFAULT_CONTRAST, "draft-vs-draft", "precision", *BASELINE_CONTRASTS]
    cells = {c.label: i for i, c in enumerate(state.cells)}

    def key(r: dict[str, Any]) -> tuple:
        c = r.get("contrast", DEFAULT_CONTRAST)
        return (order.get(r.get("task"), len(order)), contrasts.index(c) if c in contrasts else len(contrasts),
                cells.get(r.get("config", ""), 0), r.get("nodeid", ""))

    return sorted(state.rows.values(), key=key)
