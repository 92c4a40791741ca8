"""Engine settings: one frozen, validated object built from the options (see ``options.py``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

BACKENDS = ("vllm", "hf")
SPEC_METHODS = ("draft_model", "ngram")
DTYPES = ("float32", "bfloat16", "float16", "auto")
PROMPT_MODES = ("chat", "raw")
HF_ACCEPTANCE = ("exact", "typical")
STANDARD_REJECTION = "standard"

# Typical acceptance constants (Medusa, Cai et al. 2024: posterior_threshold, posterior_alpha).
TYPICAL_EPSILON = 0.09
TYPICAL_DELTA = 0.3

# Engine arguments that have their own option: giving them in --tais-engine-kwargs would bypass
# validation and the fingerprint's named fields.
MANAGED_ENGINE_KWARGS = {
    "model": "--tais-target",
    "speculative_config": "--tais-draft / --tais-spec-method / --tais-num-speculative-tokens",
    "dtype": "--tais-dtype",
    "seed": "--tais-seed",
    "enforce_eager": "--tais-enforce-eager",
    "trust_remote_code": "--tais-trust-remote-code",
    "max_model_len": "--tais-max-model-len",
    "gpu_memory_utilization": "--tais-gpu-memory-utilization",
    "disable_log_stats": "(kept on: it feeds the draft acceptance metrics)",
}
_SECRET_MARKERS = ("token", "secret", "password", "key", "auth", "credential")


class SettingsError(ValueError):
    """An engine setting is invalid; the message names the option and the fix."""


def redact(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Engine kwargs for reports and fingerprints: secret-looking values hidden."""
    return {k: ("<redacted>" if any(m in k.lower() for m in _SECRET_MARKERS) else v) for k, v in kwargs.items()}


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    target: Path
    draft: Path | None = None
    backend: str = "vllm"
    spec_method: str = "draft_model"
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    dtype: str = "float32"
    seed: int = 0
    max_tokens: int = 64
    max_model_len: int | None = None
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.45
    engine_kwargs_json: str = "{}"
    system_prompt: str | None = None
    prompt_mode: str = "chat"
    trust_remote_code: bool = False
    temperature: float = 0.0
    rejection_sample_method: str = STANDARD_REJECTION
    cache_dir: Path = Path(".tais-cache")
    no_cache: bool = False
    record: Path | None = None
    hf_acceptance: str = "exact"
    canary: float = 0.0
    # Prompts per engine call: outputs are stored after each chunk, so an interrupted run resumes.
    chunk_size: int = 256

    def __post_init__(self) -> None:
        def bad(option: str, msg: str) -> SettingsError:
            return SettingsError(f"{option}: {msg}")

        object.__setattr__(self, "target", Path(self.target))
        if self.draft is not None:
            object.__setattr__(self, "draft", Path(self.draft))
        if self.backend not in BACKENDS:
            raise bad("--tais-backend", f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)} (recorded outputs: --tais-replay)")
        if self.spec_method not in SPEC_METHODS:
            raise bad("--tais-spec-method", f"unknown method {self.spec_method!r}; use one of {', '.join(SPEC_METHODS)}")
        if self.spec_method == "draft_model" and self.draft is None:
            raise bad("--tais-draft", "missing; the draft_model method needs a draft model folder (or pass --tais-spec-method=ngram)")
        for name, value, low in (
            ("--tais-num-speculative-tokens", self.num_speculative_tokens, 1),
            ("--tais-max-tokens", self.max_tokens, 1),
            ("--tais-seed", self.seed, 0),
            ("prompt_lookup_min", self.prompt_lookup_min, 1),
            ("chunk_size", self.chunk_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"{value!r} must be a whole number >= {low}")
        if self.prompt_lookup_max < self.prompt_lookup_min:
            raise bad("prompt_lookup_max", f"{self.prompt_lookup_max} must be >= prompt_lookup_min ({self.prompt_lookup_min})")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len <= self.max_tokens):
            raise bad("--tais-max-model-len", f"{self.max_model_len!r} must be a whole number above --tais-max-tokens ({self.max_tokens})")
        if self.dtype not in DTYPES:
            raise bad("--tais-dtype", f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)} (float32 for byte identity on CPU)")
        if not (0.0 < self.gpu_memory_utilization <= 1.0):
            raise bad("--tais-gpu-memory-utilization", f"{self.gpu_memory_utilization!r} must lie in (0, 1], e.g. 0.45 so two engines fit on one GPU")
        if self.prompt_mode not in PROMPT_MODES:
            raise bad("--tais-prompt-mode", f"unknown mode {self.prompt_mode!r}; use chat (the tokenizer's chat template) or raw")
        if not isinstance(self.temperature, (int, float)) or self.temperature != 0:
            raise bad(
                "--tais-temperature",
                f"{self.temperature!r} is not allowed; only 0 is: the screen's claims (byte identity, paired "
                "refusal rates) hold for greedy decoding, and sampled outputs differ between runs by chance",
            )
        if not self.rejection_sample_method or not isinstance(self.rejection_sample_method, str):
            raise bad("--tais-rejection-sample-method", "empty; use standard (lossless verification)")
        if self.hf_acceptance not in HF_ACCEPTANCE:
            raise bad("--tais-hf-acceptance", f"unknown rule {self.hf_acceptance!r}; use exact or typical")
        if self.hf_acceptance == "typical":
            if self.backend != "hf":
                raise bad("--tais-hf-acceptance", "typical acceptance exists in the hf backend only; add --tais-backend=hf")
            if self.spec_method != "draft_model":
                raise bad("--tais-hf-acceptance", "typical acceptance verifies a draft model's tokens; use --tais-spec-method=draft_model")
        if self.rejection_sample_method != STANDARD_REJECTION and self.backend != "vllm":
            raise bad("--tais-rejection-sample-method", "only the vllm backend has rejection sample methods; drop it or use --tais-backend=vllm")
        if not isinstance(self.canary, (int, float)) or not math.isfinite(self.canary) or not (0.0 <= self.canary <= 1.0):
            raise bad("--tais-canary", f"{self.canary!r} must be a share in [0, 1], e.g. 0.2")
        if self.canary > 0 and self.draft is None:
            raise bad("--tais-canary", "the canary replaces outputs with the draft model's own; pass --tais-draft")
        try:
            kwargs = json.loads(self.engine_kwargs_json)
        except json.JSONDecodeError as exc:
            raise bad("--tais-engine-kwargs", f"not valid JSON ({exc.msg}); give a JSON object such as '{{\"max_num_seqs\": 64}}'") from None
        if not isinstance(kwargs, dict):
            raise bad("--tais-engine-kwargs", "must be a JSON object such as '{\"max_num_seqs\": 64}'")
        for key in kwargs:
            if key in MANAGED_ENGINE_KWARGS:
                raise bad("--tais-engine-kwargs", f"{key!r} has its own option; use {MANAGED_ENGINE_KWARGS[key]}")
        object.__setattr__(self, "engine_kwargs_json", json.dumps(kwargs, sort_keys=True))

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        return json.loads(self.engine_kwargs_json)

    @property
    def typical_epsilon(self) -> float:
        return TYPICAL_EPSILON

    @property
    def typical_delta(self) -> float:
        return TYPICAL_DELTA

    def describe(self) -> dict[str, Any]:
        """The settings as they go into reports (secret-looking engine kwargs hidden)."""
        out: dict[str, Any] = {
            "backend": self.backend,
            "target": str(self.target),
            "draft": str(self.draft) if self.draft else None,
            "spec_method": self.spec_method,
            "num_speculative_tokens": self.num_speculative_tokens,
            "dtype": self.dtype,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager,
            "prompt_mode": self.prompt_mode,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "rejection_sample_method": self.rejection_sample_method,
            "cache": "off" if self.no_cache else str(self.cache_dir),
            "record": str(self.record) if self.record else None,
            "engine_kwargs": redact(self.engine_kwargs),
        }
        if self.spec_method == "ngram":
            out["prompt_lookup"] = [self.prompt_lookup_min, self.prompt_lookup_max]
        if self.backend == "vllm":
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.backend == "hf":
            out["hf_acceptance"] = self.hf_acceptance
        if self.canary:
            out["canary"] = self.canary
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        return out
