"""The vLLM backend: offline ``vllm.LLM`` engines, one per arm, started lazily and shut down fully.

Target-only arm: the target alone. Speculative arm: the target with ``speculative_config``
(any of vLLM's methods: a draft model, EAGLE/EAGLE-3/Medusa heads, MTP layers, n-gram or suffix
lookup). vLLM is imported on the first ``generate`` only.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from typing import Any, Iterator, Sequence

from ..setup import device
from .base import ArmSpec, Backend, BatchResult, EngineError, Output, Progress
from .fingerprint import HashMemo, arm_fingerprint, effective_prompt_mode
from ..records.hub import describe
from .lifeline import engines_die_with_parent
from ..setup.engine import DRAFT_FOLDER_METHODS

# vLLM v1 counters (vllm/v1/spec_decode/metrics.py); summed over engine labels.
_SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens",
}


def _bar_factory(progress: Progress | None) -> Any:
    """vLLM's ``use_tqdm`` hook: our per-arm bar for the engine loop, nothing for rendering loops."""
    if progress is None:
        return False

    def factory(*args: Any, **kwargs: Any) -> Any:
        if args:  # vLLM wraps its prompt-rendering iterable too; leave that one bare
            return args[0]
        return progress.bar()

    return factory


def _cpu_build() -> bool:
    return device.cpu_build()


RESERVED_CPUS_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
#: Engine waves (``max_num_seqs`` requests each) per generate call. A call ends at a barrier where the
#: engine drains; a call of one wave would idle it at every end, and a call smaller than a wave
#: (the 256-prompt chunk against an H200's 1024) would cap its batch.
CALL_WAVES = 4
# What our vllm-cpu engines run with where the user has not set the variable. Reserved cores 0: an
# offline engine has no serving front end to keep a core for (1.5-1.7x tokens/s for SmolLM2-135M on
# 2 cores). Multiprocessing 0: the engine core runs in this process instead of two spawned ones
# that import vLLM and torch again (bundled models: 2.5-3.5 s a start against 19-23 s, the same
# tokens; docs/performance.md).
CPU_ENGINE_DEFAULTS = {RESERVED_CPUS_ENV: "0", MULTIPROCESSING_ENV: "0"}
# vllm-cpu 0.32 rebinds its kernels at every start by scanning each loaded module, and llvmlite's
# library wrapper (numba's) breaks that scan, in this process and in forked children. vLLM's ngram
# proposer imports numba: an ngram engine core, and every engine once numba is loaded, runs in a
# spawned process, so this process stays able to start the next engine.
WORKER_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
SCAN_BREAKER = "llvmlite.binding.ffi"
NUMBA_METHODS = frozenset({"ngram"})
SPAWNED_ENGINE_DEFAULTS = {RESERVED_CPUS_ENV: "0", MULTIPROCESSING_ENV: "1", WORKER_METHOD_ENV: "spawn"}


def _users(name: str) -> str:
    return os.environ.get(name, "").strip()


def _must_spawn(method: str | None) -> bool:
    return method in NUMBA_METHODS or SCAN_BREAKER in sys.modules


def cpu_engine_env(method: str | None = None) -> dict[str, str] | None:
    """What an engine for ``method`` would run with now: the user's value, else ours; None off vllm-cpu."""
    if not _cpu_build():
        return None
    defaults = SPAWNED_ENGINE_DEFAULTS if _must_spawn(method) else CPU_ENGINE_DEFAULTS
    return {name: _users(name) or value for name, value in defaults.items()}


def _unstartable_here(env: dict[str, str]) -> str | None:
    """Why the user's settings cannot start a vllm-cpu engine in this process, if they cannot."""
    if SCAN_BREAKER not in sys.modules or (env.get(MULTIPROCESSING_ENV), env.get(WORKER_METHOD_ENV)) == ("1", "spawn"):
        return None
    return (
        f"vllm-cpu cannot start an engine in this process or a forked one once numba's llvmlite is loaded "
        f"(an ngram engine or other code in this process loaded it): {MULTIPROCESSING_ENV}={env.get(MULTIPROCESSING_ENV)} and "
        f"{WORKER_METHOD_ENV}={env.get(WORKER_METHOD_ENV, 'fork')}; unset both and the plugin spawns the engine "
        f"core, or set them to 1 and spawn"
    )


@contextlib.contextmanager
def _cpu_engine_defaults(env: dict[str, str] | None) -> Iterator[None]:
    # Scoped to LLM(...): vLLM reads these there, and engine processes it starts inherit them.
    unset = [n for n in env or () if not _users(n)]
    for name in unset:
        os.environ[name] = env[name]
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    # An engine core in this process seeds Python's, numpy's and torch's global generators: the
    # user's test process keeps the state it had.
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def _forget_engine_process_state() -> None:
    """After an in-process engine: vLLM froze the GC heap and cached its environment variables."""
    gc.unfreeze()  # the closed engine's objects become collectable again
    envs = sys.modules.get("vllm.envs")
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()  # the next engine reads the variables as they are then


#: Context reserved above the longest prompt and its answer, in steps of this many tokens (a few
#: prompts more or less do not change the engine's shape).
MODEL_LEN_STEP = 256


def _model_limit(folder: Any) -> int | None:
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return limit if isinstance(limit, int) and limit > 0 else None


_LONGEST: dict[tuple, int] = {}


def _longest_prompt(settings: Any, spec: ArmSpec, mode: str, texts: Sequence[str]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(spec.model), trust_remote_code=settings.trust_remote_code)
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    prefix = f"{settings.system_prompt}\n\n" if settings.system_prompt else ""
    longest = 0
    for text in dict.fromkeys(texts):
        if mode == "chat":
            rendered = tok.apply_chat_template(
                system + [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prefix + text)["input_ids"]
        longest = max(longest, len(ids))
    return longest


def needed_model_len(settings: Any, spec: ArmSpec, mode: str, texts: Sequence[str]) -> int | None:
    """The longest prompt as the engine sees it (chat template applied), plus --tais-max-tokens and
    the speculative lookahead, rounded up to :data:`MODEL_LEN_STEP`; None where that is not below
    the model's own limit (vLLM's default then stands) or the tokenizer cannot be read."""
    import hashlib

    key = (str(spec.model), mode, settings.system_prompt, hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest())
    if key not in _LONGEST:  # the target-only and speculative arms share the target's count
        try:
            _LONGEST[key] = _longest_prompt(settings, spec, mode, texts)
        except Exception:  # vLLM reads the tokenizer itself and reports what is wrong with it
            return None
    longest = _LONGEST[key]
    lookahead = settings.num_speculative_tokens if spec.method is not None else 0
    need = longest + settings.max_tokens + lookahead + 1
    need = -(-need // MODEL_LEN_STEP) * MODEL_LEN_STEP
    limit = _model_limit(spec.model)
    if limit is not None and need >= limit:
        return None
    return need


class VllmBackend(Backend):
    name = "vllm"

    def __init__(self, settings: Any, spec: ArmSpec, memo: HashMemo) -> None:
        super().__init__(settings, spec)
        self._memo = memo
        self._llm: Any = None
        self._children_before: set[int] = set()
        self._free_before: dict[int, int] | None = None  # free GPU memory before the start (NVML)
        self._needed_len: int | None = None
        self.mode, _ = effective_prompt_mode(settings, spec.model)

    def fingerprint(self) -> dict[str, Any]:
        return arm_fingerprint(self.settings, self.spec, self._memo)

    def speculative_config(self) -> dict[str, Any] | None:
        """vLLM's ``speculative_config`` for this arm (None: target only).

        The named options first; --tais-speculative-config adds fields they do not set (the
        settings refuse overlaps). mtp, ngram and suffix name no model: vLLM takes the target's
        own MTP layers, or proposes from the text.
        """
        s, spec = self.settings, self.spec
        if spec.method is None:
            return None
        cfg: dict[str, Any] = {"method": spec.method, "num_speculative_tokens": s.num_speculative_tokens}
        if spec.method in DRAFT_FOLDER_METHODS:
            cfg["model"] = str(spec.draft)
        if spec.method == "ngram":
            cfg["prompt_lookup_max"] = s.prompt_lookup_max
            cfg["prompt_lookup_min"] = s.prompt_lookup_min
        if s.rejection_sample_method != "standard":
            cfg["rejection_sample_method"] = s.rejection_sample_method
        cfg.update(s.speculative_config_extra)
        return cfg

    def engine_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": str(self.spec.model),
            "dtype": s.dtype,
            "seed": s.seed,
            "enforce_eager": s.enforce_eager,
            "trust_remote_code": s.trust_remote_code,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "disable_log_stats": False,  # the spec-decode counters live in the stats
        }
        if s.max_model_len is not None:
            kwargs["max_model_len"] = s.max_model_len
        elif self._needed_len is not None:
            kwargs["max_model_len"] = self._needed_len
        if s.kv_cache_memory is not None:
            kwargs["kv_cache_memory_bytes"] = s.kv_cache_memory
        kwargs.update(s.parallel)
        spec_cfg = self.speculative_config()
        if spec_cfg is not None:
            kwargs["speculative_config"] = spec_cfg
        if getattr(s, "sampled", False) and _cpu_build():
            # vllm-cpu 0.32 rewinds a seeded request's generator after a partial (chunked) prefill,
            # which CPU generators cannot do ("CPU Generator does not use offset"): prefill whole.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(s.engine_kwargs)
        return kwargs

    def _start(self) -> Any:
        if self._llm is not None:
            return self._llm
        if self.started:
            raise EngineError(
                f"{self.spec.arm} arm: the engine was already started and closed once; start a new backend"
            )
        import multiprocessing

        self._children_before = {p.pid for p in multiprocessing.active_children()}
        method = (self.speculative_config() or {}).get("method")
        env = cpu_engine_env(method)
        why = env and _unstartable_here(env)
        if why:
            raise EngineError(f"{self.spec.arm} arm: {why}")
        where = ""  # decided before the start: an ngram start itself loads numba
        if env and _must_spawn(method) and env[MULTIPROCESSING_ENV] == "1":
            where = f", engine core in a spawned process: {'ngram loads numba' if method in NUMBA_METHODS else 'numba is loaded here'}"
        if not env:
            self._free_before = device.free_memory()
        if self._needed_len is not None and self.settings.max_model_len is None:
            where += f", context {self._needed_len} tokens (what the prompts need)"
        if getattr(self.settings, "batch_invariant", False):
            env = {**(env or {}), device.BATCH_INVARIANT_ENV: "1"}
        self._count_start()
        t0 = time.perf_counter()
        try:
            # The engine core inherits fds 1 and 2 here: its output goes to the log for its whole life.
            with self.log.capture(fds=True):
                from vllm import LLM

                with engines_die_with_parent(), _cpu_engine_defaults(env), _global_rng_kept():
                    self._llm = LLM(**self.engine_kwargs())
        except Exception as exc:
            self.close()
            raise EngineError(
                f"{self.spec.arm} arm: vLLM could not start an engine for {self.spec.model}: {type(exc).__name__}: {exc}"
                f"{self.log.tail()}"
            ) from exc
        self.startup_seconds = time.perf_counter() - t0
        self.log.announce(f"{self.spec.arm} arm (vllm, {describe(self.spec.model)}{where})", self.startup_seconds)
        return self._llm

    def plan(self, texts: Sequence[str]) -> None:
        """Off vllm-cpu, with --tais-max-model-len unset: reserve the context these prompts need.

        vLLM's default is the model's whole context (128k tokens for many models), whose KV cache
        may not fit beside a second engine, and the start fails. vllm-cpu keeps its behaviour.
        """
        if self.settings.max_model_len is None and not _cpu_build() and texts:
            self._needed_len = needed_model_len(self.settings, self.spec, self.mode, texts)

    def prompts_per_call(self) -> int:
        llm = self._start()
        try:
            seqs = int(llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        except (AttributeError, TypeError, ValueError):  # a vLLM that keeps it elsewhere: the plain chunk
            return self.settings.chunk_size
        return max(self.settings.chunk_size, CALL_WAVES * seqs)

    def _spec_counters(self) -> dict[str, int]:
        out = {v: 0 for v in _SPEC_COUNTERS.values()}
        try:
            metrics = self._llm.get_metrics()
        except Exception:  # stats unavailable: acceptance is reported as unknown, never guessed
            return {}
        seen = False
        for m in metrics:
            key = _SPEC_COUNTERS.get(getattr(m, "name", ""))
            if key is not None and hasattr(m, "value"):
                out[key] += int(m.value)
                seen = True
        return out if seen else {}

    def generate_sampled(
        self, texts: Sequence[str], seeds: Sequence[int], *, progress: Progress | None = None
    ) -> BatchResult:
        """One request per (text, seed): SamplingParams(temperature, top_p, top_k, seed) each."""
        from vllm import SamplingParams

        s = self.settings
        extra = {"top_k": s.top_k} if s.top_k else {}
        params = [
            SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=int(seed), **extra)
            for seed in seeds
        ]
        return self.generate(texts, progress=progress, params=params)

    def generate(self, texts: Sequence[str], *, progress: Progress | None = None, params: Any = None) -> BatchResult:
        llm = self._start()
        from vllm import SamplingParams

        s = self.settings
        if params is None:
            params = SamplingParams(temperature=0.0, max_tokens=s.max_tokens, seed=s.seed)
        before = self._spec_counters() if self.spec.speculative else {}
        t0 = time.perf_counter()
        try:
            with self.log.capture(fds=False):  # not fds 1 and 2: the progress bar writes there
                results = self._run(llm, texts, params, progress)
        except Exception as exc:
            raise EngineError(
                f"{self.spec.arm} arm: vLLM generation failed: {type(exc).__name__}: {exc}{self.log.tail()}"
            ) from exc
        seconds = time.perf_counter() - t0
        outputs = []
        for r in results:
            if not r.outputs:
                outputs.append(Output(text="", token_ids=(), finish_reason="none"))
                continue
            o = r.outputs[0]
            outputs.append(
                Output(text=o.text, token_ids=tuple(int(t) for t in o.token_ids), finish_reason=str(o.finish_reason))
            )
        metrics: dict[str, Any] = {"seconds": seconds, "generated_tokens": sum(len(o.token_ids) for o in outputs)}
        if self.spec.speculative:
            after = self._spec_counters()
            if before and after:
                metrics.update({k: after[k] - before.get(k, 0) for k in after})
        return BatchResult(outputs=outputs, metrics=metrics)

    def score(self, items: Sequence[tuple[str, Sequence[int]]]) -> list[dict[str, Any]]:
        """The token audit: each (prompt, answer token ids) teacher-forced through this arm's model.

        One request per answer, prompt + answer as the prompt, ``max_tokens=1`` and
        ``prompt_logprobs=1``: vLLM returns at every prompt position the top token and the actual
        token with their logprobs (``stats.audit`` classifies the gaps).
        """
        from vllm import SamplingParams

        from .scoring import answer_scores, dtype_name

        llm = self._start()
        tok = llm.get_tokenizer()
        prompts = [self._prompt_ids(tok, text) for text, _ in items]
        requests = [{"prompt_token_ids": p + [int(t) for t in ids]} for p, (_, ids) in zip(prompts, items)]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        try:
            with self.log.capture(fds=False):
                results = llm.generate(requests, params, use_tqdm=False)
        except Exception as exc:
            raise EngineError(
                f"{self.spec.arm} arm: the token audit's scoring failed: {type(exc).__name__}: {exc}{self.log.tail()}"
            ) from exc
        dtype = dtype_name(llm.llm_engine.model_config.dtype)
        out = []
        for p, (_, ids), r in zip(prompts, items, results):
            rows = []
            for j, t in enumerate(ids):
                d = r.prompt_logprobs[len(p) + j]
                top = max(d.items(), key=lambda kv: kv[1].logprob)
                rows.append((top[0], top[1].logprob, d[int(t)].logprob))
            out.append(answer_scores(ids, rows, lambda i: tok.decode([i]), dtype, "vllm prompt_logprobs"))
        return out

    def _prompt_ids(self, tok: Any, text: str) -> list[int]:
        """The prompt's token ids as ``_run`` has vLLM render them (the chat template, or the raw text)."""
        s = self.settings
        if self.mode == "chat":
            system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
            rendered = tok.apply_chat_template(
                system + [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return list(tok(rendered, add_special_tokens=False)["input_ids"])
        prefix = f"{s.system_prompt}\n\n" if s.system_prompt else ""
        return list(tok(prefix + text)["input_ids"])

    def _run(self, llm: Any, texts: Sequence[str], params: Any, progress: Progress | None) -> Any:
        s = self.settings
        if self.mode == "chat":
            system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
            convs = [system + [{"role": "user", "content": t}] for t in texts]
            return llm.chat(convs, params, use_tqdm=_bar_factory(progress))
        prefix = f"{s.system_prompt}\n\n" if s.system_prompt else ""
        return llm.generate([prefix + t for t in texts], params, use_tqdm=_bar_factory(progress))

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:  # never started, or a start that failed part-way
            if self.started:
                _forget_engine_process_state()
            self.log.close()
            return
        import multiprocessing

        try:
            with self.log.capture(fds=True):  # shutdown messages belong in the log too
                try:
                    llm.llm_engine.engine_core.shutdown()
                finally:
                    del llm
                    _forget_engine_process_state()
                    gc.collect()
        finally:
            self.log.close()
        # An engine core in its own process must be gone before the next arm starts.
        for child in multiprocessing.active_children():
            if child.pid in self._children_before:
                continue
            child.join(timeout=60)
            if child.is_alive():
                child.terminate()
                child.join(timeout=10)
            if child.is_alive():
                raise EngineError(
                    f"{self.spec.arm} arm: the vLLM engine process {child.pid} did not exit after shutdown"
                )
        # No torch.cuda here: a CUDA call in this process would make vLLM fork the next engine
        # core into a process that cannot use CUDA, and this process holds no GPU memory to free.
        held = device.wait_for_memory(self._free_before)
        if held:
            raise EngineError(
                f"{self.spec.arm} arm: the GPU memory of the closed engine did not come back within "
                f"{device.MEMORY_WAIT_SECONDS:.0f} s ({held}); the next engine would not fit. Look for "
                "leftover processes (nvidia-smi), or lower --tais-gpu-memory-utilization"
            )
