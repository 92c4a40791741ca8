"""pytest wiring for the TAIS screen: hooks, fixtures, items, JUnit properties and the stash.

The run itself is :class:`pytest_tais.run.session.TaisSession`; this module only connects it to pytest.
Nothing heavy is imported here: runs that do not ask for the screen pay for the options table only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from pathlib import Path
from typing import Any

import pytest

from .setup import options
from .errors import NEVER_ASKED, TaskError

SESSION = pytest.StashKey[Any]()
_ROW = pytest.StashKey[dict]()
_CONTRAST = pytest.StashKey[Any]()
#: The fixtures that need a configured screen: requesting one without it is a usage error.
SCREEN_FIXTURES = ("tais_task", "tais_equivalent", "tais_screen", "tais_variant")
_MARKER = "tais(tasks=None): a TAIS screen task test; tasks=[names or globs] limits which tasks parametrize tais_task"
_NOTHING_TO_SCREEN = "{what} needs the TAIS screen, but nothing is configured to screen: pass --tais-target=MODEL (with --tais-draft), --tais-target-url=URL (running servers) or --tais-replay=PATH (recorded outputs)"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)
    raw = options.read(config, error=pytest.UsageError)
    if not raw:
        return  # the screen was not asked for: nothing else is imported
    from .setup.config import ConfigError
    from .run.session import SessionError, TaisSession

    try:
        session = TaisSession(raw, Path(str(config.rootpath)), lambda: _shared_dir(config), lambda: _quiet(config))
    except (ConfigError, SessionError) as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION] = session
    config.pluginmanager.register(_Reporter(config, session), "tais-reporter")


@pytest.hookimpl(tryfirst=True)  # before pytest's own final collections walk what is left
def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        del config.stash[SESSION]
        config.pluginmanager.get_plugin("tais-reporter").session = None
        session.close()  # the screens' records are freed as this frame lets go of the session


def _shared_dir(config: pytest.Config) -> Path:
    """One folder for all processes of this run: xdist workers share the basetemp's parent."""
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return base.parent if _is_worker(config) else base


def _quiet(config: pytest.Config) -> Any:
    """Generation runs inside a test's setup: let its progress bars reach the terminal."""
    capman = config.pluginmanager.getplugin("capturemanager")
    return capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()


def _session(config: pytest.Config, what: str = "this test") -> Any:
    session = config.stash.get(SESSION, None)
    if session is None:
        raise pytest.UsageError(_NOTHING_TO_SCREEN.format(what=what))
    return session


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION, None)
    if session is None:
        return None
    from .report.table import header_lines

    return header_lines(session)


# -- fixtures ---------------------------------------------------------------------------------
def _sink(node: pytest.Item):
    """Where a handle puts its row: the item's stash and JUnit properties (a probe is then skipped)."""
    from .report.rows import junit_properties
    from .report.table import probe_reason

    def record(row: dict) -> None:
        node.stash[_ROW] = row
        props = [(k, v) for k, v in node.user_properties if not str(k).startswith("tais.")]
        node.user_properties[:] = props + junit_properties(row)
        if row.get("status") == "probe":
            pytest.skip(probe_reason(row))

    return record


def _prepare(config: pytest.Config, contrast: Any, node: pytest.Item) -> Any:
    node.stash[_CONTRAST] = contrast
    try:
        return _session(config).handle(contrast, _sink(node))
    except TaskError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture
def tais_task(request: pytest.FixtureRequest) -> Any:
    """One task of the battery (a contrast of it); parametrized over the selected tasks by pytest-tais."""
    contrast = getattr(request, "param", None)
    if contrast is None:
        pytest.fail("tais_task is parametrized by pytest-tais; do not parametrize it yourself", pytrace=False)
    return _prepare(request.config, contrast, request.node)


@pytest.fixture
def tais_equivalent():
    """``tais_equivalent(tais_task, **overrides)``: fail the test when the arms are not equivalent."""
    from .assertion import tais_equivalent as check

    return check


@pytest.fixture(scope="session")
def tais_screen(request: pytest.FixtureRequest):
    """The session's :class:`~pytest_tais.run.screen.Screen` (tasks, outputs, verdicts)."""
    return _session(request.config, "tais_screen").screen


@pytest.fixture(scope="session")
def tais_variant(request: pytest.FixtureRequest):
    """``tais_variant(tasks=None, arms=None, **changes) -> Screen``: the battery on engines with changed settings.

    ``changes`` are engine settings (``draft``, ``dtype``, ``backend``, ``hf_acceptance``,
    ``canary``, ``num_speculative_tokens``, ...); ``tasks`` limits it to some tasks, ``arms`` to
    some arms (``["target"]``: no speculative engine starts). Each
    configuration generates once per session; arms whose fingerprint is unchanged come from the
    generation store.
    """
    from .run.session import SessionError

    session = _session(request.config, "tais_variant")

    def make(tasks: list[str] | None = None, arms: list[str] | None = None, **changes: Any):
        try:
            return session.variant(tasks, arms, **changes)
        except SessionError as exc:
            raise pytest.UsageError(str(exc)) from None

    if session.engine_settings is None:
        pytest.fail("tais_variant needs real engines: pass --tais-target (and --tais-draft)", pytrace=False)
    return make


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tais_task" not in metafunc.fixturenames:
        return
    session = metafunc.config.stash.get(SESSION, None)
    if session is None:  # a usage error at the end of collection (pytest_collection_modifyitems)
        metafunc.parametrize("tais_task", [None], ids=["tais-unconfigured"], indirect=True)
        return
    plan = session.plan()
    marker = metafunc.definition.get_closest_marker("tais")
    patterns = marker.kwargs.get("tasks") if marker is not None else None
    if patterns is not None:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        names = [t.name for t in session.screen.tasks]
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unknown:
            why = f"@pytest.mark.tais(tasks={patterns!r}): {unknown} match no selected task; tasks are: {', '.join(names)}"
            pytest.fail(why, pytrace=False)
        plan = [c for c in plan if any(fnmatch.fnmatchcase(c.task, p) for p in patterns)]
    metafunc.parametrize("tais_task", plan, ids=[c.test_id for c in plan], indirect=True)
    metafunc.definition.add_marker(pytest.mark.tais)


# -- tests without a user test file ---------------------------------------------------------------
class TaisItem(pytest.Item):
    """One contrast screened with the default assertion (collected when no test uses ``tais_task``)."""

    def __init__(self, *, contrast: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.contrast = contrast
        self.add_marker(pytest.mark.tais)
        self.handle: Any = None

    def setup(self) -> None:
        self.handle = _prepare(self.config, self.contrast, self)

    def runtest(self) -> None:
        from .assertion import tais_equivalent as check

        check(self.handle)

    def teardown(self) -> None:
        self.handle = None  # it holds the screen and its records: the item outlives the run's data otherwise

    def repr_failure(self, excinfo, style=None):  # type: ignore[override]
        from .assertion import TaisControlNotCaught, TaisNotEquivalent

        if excinfo.errisinstance((TaisNotEquivalent, TaisControlNotCaught, TaskError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"tais task {self.contrast.test_id}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    wanting = [item for item in items if set(SCREEN_FIXTURES) & set(getattr(item, "fixturenames", ()))]
    tais = config.stash.get(SESSION, None)
    if tais is None:
        if wanting:
            what = f"{wanting[0].nodeid} (and {len(wanting) - 1} more)" if len(wanting) > 1 else wanting[0].nodeid
            raise pytest.UsageError(_NOTHING_TO_SCREEN.format(what=what))
        return
    if any("tais_task" in getattr(item, "fixturenames", ()) for item in items):
        return
    own = [
        TaisItem.from_parent(session, name=f"tais[{c.item_label}]", nodeid=f"tais::{c.item_label}", contrast=c)
        for c in tais.plan()
    ]
    items.extend(own)
    if own and not _is_worker(config):  # count them: "collected N items", and --collect-only
        config.hook.pytest_collectreport(report=pytest.CollectReport("tais", "passed", None, own))


# -- reports ----------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rep = yield
    contrast = item.stash.get(_CONTRAST, None)
    if contrast is None:
        return rep
    row = item.stash.get(_ROW, None)
    if rep.when == "call" and rep.passed and row is None:  # a screened task must not pass unchecked
        rep.outcome, rep.longrepr = "failed", NEVER_ASKED.format(task=contrast.test_id, nodeid=item.nodeid)
    if rep.when == "call" and row is not None:
        rep.tais = dict(row, nodeid=item.nodeid)
    elif rep.failed and (rep.when == "setup" or row is None) and rep.when != "teardown":
        from .report.rows import error_row, junit_properties

        message = str(call.excinfo.value) if call.excinfo else str(rep.longrepr or "task could not be computed")
        rep.tais = dict(error_row(contrast.task, contrast.describe(), message), nodeid=item.nodeid)
        rep.user_properties.extend(junit_properties(rep.tais))
    if getattr(rep, "tais", None) is not None:
        from .report.engines import snapshot

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        rep.tais_engine = snapshot(worker, item.config.stash[SESSION].generated_outputs())
    return rep


class _Reporter:
    """Collects rows from reports (on the xdist controller too); the session writes the outputs."""

    def __init__(self, config: pytest.Config, session: Any) -> None:
        self.config = config
        self.session = session
        self.rows: dict[str, dict[str, Any]] = {}  # nodeid -> row
        self.engines: dict[str, dict[str, Any]] = {}  # worker -> engine snapshot
        self.summary: Any = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = getattr(report, "tais", None)
        if row is None:
            return
        self.rows[report.nodeid] = row
        if engine := getattr(report, "tais_engine", None):
            self.engines[engine.get("worker", "main")] = engine

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if _is_worker(self.config):
            return
        from .report.engines import merge_engine_snapshots

        rows, engines = list(self.rows.values()), merge_engine_snapshots(self.engines)
        self.summary = self.session.finish(rows, engines, exitstatus == 0)
        if self.summary.failed and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if _is_worker(config):
            return
        from .report.table import summary_lines

        terminalreporter.write_sep("=", "tais")
        verbose = config.get_verbosity() > 0  # -v: whole lines, every variant's engine block
        for line, color in summary_lines(self.session, list(self.rows.values()), self.summary, verbose):
            terminalreporter.write_line(line, **({color: True} if color else {}))
