"""Configuration: the core options' raw values -> one frozen, validated object.

The options themselves are declared in ``options.py``. Invalid values, and options that cannot
apply in the chosen mode, raise :class:`ConfigError`, which the plugin turns into a usage error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from . import options
from ..stats.levels import LEAK_TEST_MODES, TOST_METHODS, check_levels
from .options import OptionError, default

#: Engine options that a replay run still uses: the model judge's store and server key.
_REPLAY_JUDGE_OPTIONS = ("tais_cache_dir", "tais_no_cache", "tais_api_key_env", "tais_engine_log")


class ConfigError(OptionError):
    """An option has an invalid value or cannot apply; the message names the option and the fix."""


@dataclasses.dataclass(frozen=True)
class TaisConfig:
    target: str | None = None
    target_url: str | None = None
    draft: str | None = None
    battery: str | None = None
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    replay: Path | None = None
    judge: str | None = None
    judge_calibration: Path | None = None
    margin: float = default("tais_margin")
    alpha: float = default("tais_alpha")
    h_cutoff: float = default("tais_h_cutoff")
    h_null_level: float = default("tais_h_null_level")
    tost_method: str = default("tais_tost_method")
    leak_test: str = default("tais_leak_test")
    report: Path | None = None
    probe: bool = False
    null_runs: int = default("tais_null_runs")
    save_baseline: str | None = None
    baseline: str | None = None
    baseline_dir: Path = Path(".tais/baselines")
    rootdir: Path = Path(".")

    @property
    def active(self) -> bool:
        """True when the run asked for the screen (recorded outputs or real engines)."""
        return self.replay is not None or self.target is not None or self.target_url is not None

    @property
    def engines(self) -> bool:
        """True when the run starts or calls real engines (local models or running servers)."""
        return self.target is not None or self.target_url is not None

    def describe(self) -> dict[str, Any]:
        """The configuration as it goes into reports (no secrets live here)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, Path):
                out[k] = str(v)
            elif isinstance(v, tuple):
                out[k] = list(v)
        return out


def build(raw: Mapping[str, Any], rootdir: Path) -> TaisConfig:
    """Build and validate the config from the raw option values (``options.read``)."""
    try:
        v = {k: x.strip() if isinstance(x, str) else x for k, x in options.values(raw, "core", rootdir).items()}
        _check_statistics(v)
        _check_mode(raw, v)
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
    return TaisConfig(
        target=v["tais_target"] or None,
        target_url=v["tais_target_url"] or None,
        draft=v["tais_draft"] or None,
        battery=v["tais_battery"] or None,
        tasks=tuple(t.strip() for t in (v["tais_tasks"] or "").split(",") if t.strip()),
        limit=v["tais_limit"],
        replay=v["tais_replay"],
        judge=v["tais_judge"] or None,
        judge_calibration=v["tais_judge_calibration"],
        margin=v["tais_margin"],
        alpha=v["tais_alpha"],
        h_cutoff=v["tais_h_cutoff"],
        h_null_level=v["tais_h_null_level"],
        tost_method=v["tais_tost_method"],
        leak_test=v["tais_leak_test"],
        report=v["tais_report"],
        probe=bool(v["tais_probe"]),
        null_runs=v["tais_null_runs"],
        save_baseline=v["tais_save_baseline"] or None,
        baseline=v["tais_baseline"] or None,
        baseline_dir=v["tais_baseline_dir"] or rootdir / ".tais" / "baselines",
        rootdir=rootdir,
    )


def _check_statistics(v: Mapping[str, Any]) -> None:
    try:
        check_levels(v["tais_margin"], v["tais_alpha"])
    except ValueError as exc:  # "margin=..." or "alpha=...": name the option
        raise ConfigError(f"--tais-{exc}") from None
    if not (v["tais_h_cutoff"] > 0.0):
        raise ConfigError(f"--tais-h-cutoff={v['tais_h_cutoff']!r} must be positive, e.g. 0.1")
    if not (0.5 <= v["tais_h_null_level"] < 1.0):
        raise ConfigError(f"--tais-h-null-level={v['tais_h_null_level']!r} must lie in [0.5, 1), e.g. 0.95")
    if v["tais_tost_method"] not in TOST_METHODS:
        raise ConfigError(
            f"--tais-tost-method={v['tais_tost_method']!r} is unknown; use one of {', '.join(TOST_METHODS)}"
        )
    report = v["tais_report"]
    if report is not None and report.exists() and not report.is_dir():  # found now, not after the run
        raise ConfigError(
            f"--tais-report={report} is a file; it names the folder that report.json, summary.md and "
            f"report.html are written into: give a folder, e.g. --tais-report={report.parent / 'tais-report'}"
        )
    if v["tais_leak_test"] not in LEAK_TEST_MODES:
        raise ConfigError(
            f"--tais-leak-test={v['tais_leak_test']!r} is unknown; use gate (a directional leak fails the "
            "task) or report (shown without gating)"
        )
    if v["tais_limit"] is not None and v["tais_limit"] < 1:
        raise ConfigError(f"--tais-limit={v['tais_limit']} must be at least 1")
    if not (0 <= v["tais_null_runs"] <= 20):
        raise ConfigError(
            f"--tais-null-runs={v['tais_null_runs']} must lie in 0..20 (each rerun regenerates the target-only arm)"
        )
    for flag, name in (("--tais-save-baseline", v["tais_save_baseline"]), ("--tais-baseline", v["tais_baseline"])):
        if name and not all(ch.isalnum() or ch in "._-" for ch in name):
            raise ConfigError(f"{flag}={name!r}: use letters, digits, '.', '_' and '-' only")


def _check_mode(raw: Mapping[str, Any], v: Mapping[str, Any]) -> None:
    """Fail closed on options that cannot apply in the chosen mode: nothing is silently ignored."""
    engines = bool(v["tais_target"] or v["tais_target_url"])
    replay = v["tais_replay"]
    if not engines and replay is None:
        if raw:
            names = ", ".join(o.flag for o in options.given(raw))
            raise ConfigError(
                f"{names} given, but there is nothing to screen: pass --tais-target=MODEL (with --tais-draft), "
                "--tais-target-url=URL (running servers) or --tais-replay=PATH (recorded outputs)"
            )
        return
    if replay is not None:
        _check_replay(raw, v)
    if v["tais_draft"] and not engines:
        raise ConfigError("--tais-draft given without --tais-target; the speculative arm needs the target too")
    if v["tais_null_runs"] and not engines:
        raise ConfigError(
            "--tais-null-runs reruns the target-only engine; it needs --tais-target (recorded outputs cannot be rerun)"
        )
    if v["tais_probe"] and (v["tais_baseline"] or v["tais_save_baseline"]):
        raise ConfigError(
            "--tais-probe has no target-only arm to save or compare; drop --tais-baseline/--tais-save-baseline"
        )


#: The ``--tais-judge`` kinds that run a model on an engine: ``model:`` and the named safety judges
#: (``pairs/safety_judges.FORMATS``).
ENGINE_JUDGES = ("model", "llamaguard3", "llamaguard3-1b", "wildguard", "harmbench", "shieldgemma")


def needs_engine(spec: str | None) -> bool:
    """Whether the judge spec runs a model on an engine (``model:MODEL`` or ``NAME:MODEL`` of a named judge)."""
    if not spec or ":" not in spec:
        return False
    return spec.strip().partition(":")[0].strip().lower() in ENGINE_JUDGES


def _check_replay(raw: Mapping[str, Any], v: Mapping[str, Any]) -> None:
    replay = v["tais_replay"]
    if not replay.exists():
        raise ConfigError(
            f"--tais-replay={replay}: no such file or folder; record a run with --tais-record or point at an existing JSONL file"
        )
    if v["tais_target"] or v["tais_target_url"]:
        raise ConfigError(
            "--tais-replay and --tais-target/--tais-target-url both given: replay gates recorded outputs without engines; pass one of them"
        )
    judge = (v["tais_judge"] or "").strip()
    allowed = _REPLAY_JUDGE_OPTIONS if needs_engine(judge) else ()
    extra = [o.flag for o in options.given(raw, "engine") if o.dest not in allowed]
    if v["tais_draft"]:
        extra.insert(0, "--tais-draft")
    if extra:
        raise ConfigError(
            f"{', '.join(extra)} cannot apply with --tais-replay: recorded outputs are gated as they were generated and no "
            "engine runs (a canary, a record file, a draft or engine settings would change nothing); drop "
            f"{'it' if len(extra) == 1 else 'them'}, or screen live engines with --tais-target"
        )
