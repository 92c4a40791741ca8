"""The token audit in the engine stage: score the served speculative answers that differ from the
target-only answers, on the target-only arm's engine, before it closes.

``run_arms`` fills the target-only arm last; :class:`AuditRun` is its ``then``: it sees the
target's answers, picks every served answer (the speculative one, or the canary's draft answer)
whose text differs, takes what the store's score cache holds and has the still-open target engine
score the rest (a warm run starts no engine). Null reruns (the target-only arm alone) score their
answers that differ from the session's target-only answers instead: the stack's own noise.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..battery.base import Prompt
from ..records.generation import SPECULATIVE
from ..records.scores import ScoreCache, score_key
from ..records.store import GenerationStore, StoredOutput, prompt_key
from ..setup.engine import STANDARD_REJECTION, EngineSettings
from .base import DRAFT, Backend, EngineError

#: Backends that can score tokens teacher-forced.
SCORING_BACKENDS = ("vllm", "hf")
LOSSLESS = "lossless"  # stats.audit.LOSSLESS: the engines stage cannot import the statistics


def verifier_claim(settings: EngineSettings) -> str:
    """What the speculative arm's verification claims: lossless, or the lossy rule it runs."""
    if settings.backend == "hf":
        return LOSSLESS if settings.hf_acceptance == "exact" else f"lossy: {settings.hf_acceptance} acceptance"
    if settings.rejection_sample_method != STANDARD_REJECTION:
        return f"lossy: {settings.rejection_sample_method} rejection sampling"
    return LOSSLESS


def unscored_why(settings: EngineSettings) -> str | None:
    """Why this run's differing answers get no target scores (None: they do)."""
    if settings.sampled:
        return "sampled screen: no greedy output to audit"
    if settings.backend not in SCORING_BACKENDS:
        return f"the {settings.backend} backend cannot score tokens teacher-forced (vllm and hf can)"
    return None


class AuditRun:
    """One run's audit: which answers to score, the scores, and what scoring cost."""

    def __init__(
        self,
        settings: EngineSettings,
        prompts: Sequence[Prompt],
        stored: Mapping[str, Mapping[str, StoredOutput]],
        chosen: set,
        store: GenerationStore,
        writable: bool,
        reference: Mapping[tuple[str, str], Any] | None = None,
    ) -> None:
        self.settings, self.prompts, self.stored, self.chosen = settings, prompts, stored, chosen
        self.store, self.writable, self.reference = store, writable, reference
        self.scores: dict[str, dict[str, Any]] = {}
        self.cost: dict[str, Any] = {"audited": 0, "scored_now": 0, "seconds": 0.0, "cpu_seconds": 0.0}

    def wanted(self, target: Mapping[str, StoredOutput]) -> dict[str, tuple[str, tuple[int, ...]]]:
        """score key -> (prompt, answer ids) of every answer the audit must see."""
        out = {}
        for p in self.prompts:
            mine = target[prompt_key(p.text)]
            if self.reference is not None:  # a null rerun: its own answer against the session's target
                ref = self.reference.get((p.task, p.prompt_id))
                served = mine if ref is not None and ref.text != mine.text else None
            else:
                source = DRAFT if (p.task, p.prompt_id) in self.chosen else SPECULATIVE
                s = self.stored[source][prompt_key(p.text)]
                served = s if s.text != mine.text else None
            if served is not None:
                out[score_key(p.text, served.token_ids)] = (p.text, tuple(served.token_ids))
        return out

    def __call__(self, backend: Backend, shard_key: str, target: Mapping[str, StoredOutput]) -> None:
        """Score what the cache lacks on ``backend`` (the target-only engine, open or not yet started)."""
        cache = ScoreCache(self.store.root, shard_key)
        wanted = self.wanted(target)
        have = cache.read()
        todo = [k for k in wanted if k not in have]
        if todo and not self.writable:
            raise self.store.read_only_error(f"{len(todo)} answer(s) for the token audit are not scored")
        new: dict[str, dict[str, Any]] = {}
        if todo:
            if not backend.started:  # all answers were stored: the engine starts for the audit alone
                self.cost["engine_started_for_audit"] = True
                backend._start()  # outside the timers: a start is the engine's cost, not the scoring's
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                got = backend.score([wanted[k] for k in todo])
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"the token audit's scoring failed: {type(exc).__name__}: {exc}") from exc
            new = dict(zip(todo, got))
            cache.append(new.items())
            self.cost.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        self.scores = {k: new.get(k) or have[k] for k in wanted}
        self.cost.update(audited=len(wanted), scored_now=len(todo), scorer=backend.name)
        if todo:
            self.cost["cpu_seconds_per_answer"] = self.cost["cpu_seconds"] / len(todo)
            self.cost["seconds_per_answer"] = self.cost["seconds"] / len(todo)

    def scores_of(self, prompt: str, token_ids: Sequence[int], claim: str) -> dict[str, Any] | None:
        s = self.scores.get(score_key(prompt, token_ids))
        return None if s is None else {**s, "verifier": claim}
