"""Models by Hugging Face hub id: ``org/name`` or ``org/name@REVISION`` to a local snapshot folder.

Resolution goes through ``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE``,
``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_TOKEN``; the token is read by huggingface_hub itself and
never passes through this module. A local folder always wins over an id that looks the same.
huggingface_hub is imported only when an id is resolved.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

#: ``org/name`` with an optional ``@revision`` (a branch, tag or commit sha).
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^\s@]+))?\Z")
_COMMIT = re.compile(r"[0-9a-f]{40}\Z")
#: A commit abbreviated as this plugin prints it (``org/name@sha12``), or as git does.
_SHORT_COMMIT = re.compile(r"[0-9a-f]{7,39}\Z")
#: Files engines never read; skipping them keeps e.g. Llama's original/ checkpoint (16 GB) off disk.
IGNORE_PATTERNS = [
    "original/*",
    "*.pth",
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "*.h5",
    "*.msgpack",
    "*.tflite",
    "onnx/*",
    "openvino/*",
    "coreml/*",
]


class HubError(ValueError):
    """An id that cannot be resolved; the message names the id and the fix."""


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    folder: Path
    repo_id: str | None = None  # None: a local folder given as such
    revision: str | None = None  # as asked (None: main)
    commit: str | None = None  # the commit sha the snapshot is


def looks_like_repo_id(value: str) -> bool:
    return _REPO_ID.match(value.strip()) is not None and not value.strip().startswith((".", "~"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now: tests and CI set it after import."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache() -> Path:
    """The hub cache folder as huggingface_hub finds it, from the environment as it is now."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def snapshot_identity(folder: Path) -> dict[str, str] | None:
    """{"repo_id", "commit"} when ``folder`` is a hub cache snapshot (``models--ORG--NAME/snapshots/SHA``)."""
    folder = Path(folder)
    repo_dir = folder.parent.parent
    prefix = next((p for p in ("models--", "datasets--") if repo_dir.name.startswith(p)), None)
    if folder.parent.name != "snapshots" or prefix is None or not _COMMIT.match(folder.name):
        return None
    return {"repo_id": repo_dir.name[len(prefix) :].replace("--", "/"), "commit": folder.name}


def _cached_refs(repo_dir: Path) -> list[str]:
    refs = repo_dir / "refs"
    names = sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    snaps = sorted(p.name for p in (repo_dir / "snapshots").iterdir()) if (repo_dir / "snapshots").is_dir() else []
    return names + [s[:12] for s in snaps]


def fetch_hint(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    rev = (" --repo-type dataset" if repo_type == "dataset" else "") + (f" --revision {revision}" if revision else "")
    return f"hf download {repo_id}{rev} (huggingface-cli download {repo_id}{rev} with older huggingface_hub)"


def _full_commit(repo_dir: Path, revision: str | None) -> str | None:
    """A short commit sha made whole from the cached snapshots when exactly one starts with it."""
    snaps = repo_dir / "snapshots"
    if not revision or not _SHORT_COMMIT.match(revision) or not snaps.is_dir():
        return revision
    found = [p.name for p in snaps.iterdir() if _COMMIT.match(p.name) and p.name.startswith(revision)]
    return found[0] if len(found) == 1 else revision


def _missing_snapshot(repo_dir: Path, revision: str | None) -> str | None:
    """What is missing when a cached ref points at a snapshot folder that is not there."""
    ref = repo_dir / "refs" / (revision or "main")
    try:
        sha = ref.read_text().strip() if ref.is_file() else None
    except OSError:
        return None
    if sha and not (repo_dir / "snapshots" / sha).is_dir():
        return f"revision {revision or 'main'!r} is commit {sha[:12]}, whose snapshot folder is missing"
    return None


def _incomplete_files(folder: Path, repo_type: str) -> str | None:
    """A snapshot whose files point at blobs that never arrived, or a model's without its config.json."""
    dangling = sorted(p.name for p in folder.iterdir() if p.is_symlink() and not p.exists()) if folder.is_dir() else []
    if dangling:
        return f"{len(dangling)} file(s) point at missing blobs ({', '.join(dangling[:3])})"
    if repo_type == "model" and folder.is_dir() and not (folder / "config.json").exists():
        return "no config.json"
    return None


def repo_url(repo_id: str, repo_type: str = "model") -> str:
    """The repository's page, where a gated repository's terms are accepted (honours HF_ENDPOINT)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def _what(repo_type: str) -> str:
    return "dataset" if repo_type == "dataset" else "model"


def _not_cached(
    given: str, repo_id: str, revision: str | None, repo_dir: Path, cache: Path, is_offline: bool, repo_type: str
) -> HubError:
    """What to do when the snapshot is neither in the cache nor reachable."""
    if repo_dir.is_dir():
        cached = ", ".join(_cached_refs(repo_dir)) or "none"
        where = "HF_HUB_OFFLINE is set" if is_offline else "the hub cannot be reached"
        return HubError(
            f"{given}: revision {revision or 'main'!r} of {repo_id} is not in the hub cache "
            f"{cache} and {where} (cached revisions: {cached}); fetch it with "
            f"`{fetch_hint(repo_id, revision, repo_type)}` or give a cached revision"
        )
    if is_offline:
        return HubError(
            f"{given}: {repo_id} is not in the hub cache {cache} and HF_HUB_OFFLINE is set; "
            f"fetch it with `{fetch_hint(repo_id, revision, repo_type)}` (set HF_HUB_CACHE or HF_HOME if the "
            f"cache lives elsewhere), or pass a local {_what(repo_type)} folder"
        )
    return HubError(
        f"{given}: the hub cannot be reached and {repo_id} is not in the hub cache {cache}; "
        f"fetch it where the hub is reachable (`{fetch_hint(repo_id, revision, repo_type)}`) and run with "
        f"HF_HUB_OFFLINE=1, or pass a local {_what(repo_type)} folder"
    )


def _download(
    repo_id: str, revision: str | None, repo_type: str, *, given: str, repo_dir: Path, patterns: dict[str, Any]
) -> str:
    """``snapshot_download``, its errors said as what to do (``given``: the option and value as typed)."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=str(hub_cache()),
            local_files_only=offline(),
            **patterns,
        )
    except errors.RevisionNotFoundError:
        raise HubError(
            f"{given}: the hub has no revision {revision!r} of {repo_id}; give a branch, tag or commit sha that exists"
        ) from None
    except errors.GatedRepoError:
        raise HubError(
            f"{given}: {repo_id} is gated; accept its terms at {repo_url(repo_id, repo_type)} and export "
            "HF_TOKEN (a token of that account) before running pytest"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"{given}: the hub has no repository {repo_id}, or it is private; check the id, or "
            "export HF_TOKEN with access; a local folder of that name would win over the id"
        ) from None
    except errors.LocalEntryNotFoundError:
        missing = _missing_snapshot(repo_dir, revision)
        if missing:
            raise HubError(
                f"{given}: incomplete snapshot in the hub cache {hub_cache()}: {missing} (an interrupted "
                f"download?); fetch it again with `{fetch_hint(repo_id, revision, repo_type)}`"
            ) from None
        raise _not_cached(given, repo_id, revision, repo_dir, hub_cache(), offline(), repo_type) from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise HubError(
            f"{given}: the hub answered HTTP {status}; check the id and HF_TOKEN, or fetch it "
            f"(`{fetch_hint(repo_id, revision, repo_type)}`) and run with HF_HUB_OFFLINE=1"
        ) from None
    except ValueError as exc:  # huggingface_hub's own validation of the id
        raise HubError(
            f"{given}: not a valid hub id ({exc}); give org/name or org/name@REVISION, "
            f"or a local {_what(repo_type)} folder"
        ) from None
    return folder


def resolve_repo(
    repo_id: str,
    revision: str | None,
    *,
    option: str,
    repo_type: str = "model",
    allow_patterns: list[str] | None = None,
) -> ResolvedModel:
    """The local snapshot of ``repo_id`` at ``revision``, downloaded unless offline.

    ``repo_type="dataset"`` resolves a dataset repository (``datasets--ORG--NAME`` in the cache);
    ``allow_patterns`` limits what is downloaded to the files a caller reads.
    """
    what = _what(repo_type)
    try:
        import huggingface_hub  # noqa: F401  (the download imports it again)
    except ImportError:
        raise HubError(
            f"{option}={repo_id}: a hub id needs huggingface_hub (pip install huggingface_hub), "
            f"or pass a local {what} folder"
        ) from None
    cache = hub_cache()
    label = f"{repo_id}@{revision}" if revision else repo_id
    repo_dir = cache / (f"{what}s--" + repo_id.replace("/", "--"))
    revision = _full_commit(repo_dir, revision)  # org/name@sha12, as the terminal prints it, is taken back
    patterns = (
        {"allow_patterns": allow_patterns} if allow_patterns is not None else {"ignore_patterns": IGNORE_PATTERNS}
    )
    folder = _download(repo_id, revision, repo_type, given=f"{option}={label}", repo_dir=repo_dir, patterns=patterns)
    path = Path(folder)
    broken = _incomplete_files(path, repo_type)
    if broken:
        raise HubError(
            f"{option}={label}: incomplete snapshot {path}: {broken} (an interrupted download?); fetch it "
            f"again with `{fetch_hint(repo_id, revision, repo_type)}`"
        ) from None
    ident = snapshot_identity(path)
    return ResolvedModel(path, repo_id, revision, ident["commit"] if ident else None)


def resolve_model(option: str, value: str, rootdir: Path) -> ResolvedModel:
    """A model given as a folder (absolute, or relative to rootdir) or as a hub id; the folder wins.

    Raises :class:`HubError` for an id that cannot be resolved; returns the folder unchecked when
    ``value`` is not an id, so the caller's folder checks give their own message.
    """
    raw = value.strip()
    path = Path(raw).expanduser()
    local = path if path.is_absolute() else Path(rootdir) / path
    if local.exists() or not looks_like_repo_id(raw):
        return ResolvedModel(local)
    m = _REPO_ID.match(raw)
    assert m is not None
    try:
        return resolve_repo(m.group("repo"), m.group("rev"), option=option)
    except HubError as exc:
        raise HubError(f"{exc} (read as a hub id: there is no folder {local})") from None


def describe(resolved: Any) -> str:
    """``org/name@sha12`` for a hub model, the folder otherwise (for terminal lines)."""
    ident = snapshot_identity(Path(resolved))
    return f"{ident['repo_id']}@{ident['commit'][:12]}" if ident else str(resolved)
