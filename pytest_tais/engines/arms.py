"""Both arms for all prompts: through the generation store, one engine per arm, once per run.

Every process of a run (xdist workers included) calls :func:`run_arms` with the same
``shared_dir``. The first to take the store's lock generates what the store lacks, one arm after
the other (each engine shut down before the next starts), and appends the outputs; the others
then find everything stored and start no engine.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..battery.base import Prompt
from ..records.generation import SPECULATIVE, TARGET, ArmOutputs, Generation, write_generations
from ..records.store import GenerationStore, Shard, StoredOutput, StoreError, sample_key
from . import sampling
from .base import ARM_LABELS, DRAFT, ENGINE_STARTS, ArmSpec, Backend, EngineError, Progress, check_outputs
from .enginelog import EngineLog
from .fingerprint import HashMemo
from .openai import PartialBatchError
from ..setup.engine import (
    DRAFT_FOLDER_METHODS,
    SPEC_METHOD_DRAFTS,
    STANDARD_REJECTION,
    VALIDATED_METHODS,
    EngineSettings,
)
from .audit import AuditRun, unscored_why, verifier_claim
from .header import header_lines, scope_line  # noqa: F401  (scope_line: the reports read it)


def arm_specs(settings: EngineSettings) -> dict[str, ArmSpec]:
    specs = {
        TARGET: ArmSpec(TARGET, settings.target),
        SPECULATIVE: ArmSpec(
            SPECULATIVE,
            settings.target,
            settings.draft if settings.spec_method in DRAFT_FOLDER_METHODS else None,
            settings.spec_method,
        ),
    }
    if settings.canary > 0:
        assert settings.draft is not None  # settings validation guarantees it
        specs[DRAFT] = ArmSpec(DRAFT, settings.draft)
    return specs


def make_backend(settings: EngineSettings, spec: ArmSpec, memo: HashMemo) -> Backend:
    if settings.backend == "vllm":
        from .vllm import VllmBackend

        return VllmBackend(settings, spec, memo)
    if settings.backend == "hf":
        from .hf import HFBackend

        return HFBackend(settings, spec, memo)
    if settings.backend == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(settings, spec, memo)
    raise EngineError(f"--tais-backend={settings.backend!r} is unknown; use vllm, hf or openai")


def store_dir(settings: EngineSettings, shared_dir: Path) -> Path:
    """The persistent cache, or with --tais-no-cache a store that lives for this run only."""
    if settings.no_cache:
        return Path(shared_dir) / "tais-session-store"
    return Path(settings.cache_dir) / "generations"


def engine_log_dir(store: GenerationStore) -> Path:
    """Engine logs beside the store: the cache folder's engine-logs (this run's folder with --tais-no-cache)."""
    return store.root.parent / "engine-logs"


def canary_choice(
    prompts: Sequence[Prompt], seed: int, rate: float, task_metrics: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """The (task, prompt_id) pairs whose speculative output the canary replaces.

    Per refusal task, round(rate * n) prompts, ranked by SHA-256 of (seed, task, prompt id):
    deterministic, independent of prompt order, different for another seed.
    """
    by_task: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_task.setdefault(p.task, []).append(p)
    chosen: list[tuple[str, str]] = []
    for task, ps in by_task.items():
        if task_metrics is not None and task in task_metrics:
            metric = task_metrics[task]
        else:  # capability prompts carry an expected answer; refusal prompts do not
            metric = "accuracy" if any(p.expected is not None for p in ps) else "refusal"
        if metric != "refusal":
            continue
        k = math.floor(rate * len(ps) + 0.5)
        ranked = sorted(ps, key=lambda p: hashlib.sha256(f"{seed}\0{task}\0{p.prompt_id}".encode()).hexdigest())
        chosen.extend((p.task, p.prompt_id) for p in ranked[:k])
    return chosen


def _generate(
    backend: Backend, shard: Shard, chunk: Sequence[sampling.Unit], progress: Progress | None, check: Any
) -> Any:
    """One chunk generated, checked and appended to the shard."""
    arm = backend.spec.arm
    try:
        if chunk and chunk[0].sample is not None:  # a sampled screen: one seed per answer
            result = backend.generate_sampled([u.text for u in chunk], [u.seed for u in chunk], progress=progress)
        else:
            result = backend.generate([u.text for u in chunk], progress=progress)
    except PartialBatchError as exc:
        # Keep what came back, so a rerun asks only for the rest; then fail the run.
        kept = sorted(exc.done)
        check(arm, [chunk[i].text for i in kept], [exc.done[i] for i in kept])
        shard.append(
            StoredOutput(
                chunk[i].text,
                exc.done[i].text,
                exc.done[i].token_ids,
                exc.done[i].finish_reason,
                chunk[i].sample,
                chunk[i].seed,
            )
            for i in kept
        )
        raise
    check(arm, [u.text for u in chunk], result.outputs)
    shard.append(
        StoredOutput(u.text, o.text, o.token_ids, o.finish_reason, u.sample, u.seed)
        for u, o in zip(chunk, result.outputs)
    )
    return result


def _generate_missing(
    backend: Backend, shard: Shard, units: Sequence[Any], missing: Sequence[Any], progress: bool, run: dict[str, Any]
) -> None:
    """Generate ``missing`` in calls of the backend's size, adding each call's numbers to ``run``."""
    arm = backend.spec.arm
    counters: dict[str, int] = {}
    # A backend may judge its own outputs (the openai one accepts usage counts for absent token ids).
    check = getattr(backend, "check_outputs", check_outputs)
    backend.plan([u.text for u in missing])
    size = backend.prompts_per_call()
    for start in range(0, len(missing), size):
        chunk = missing[start : start + size]
        prog = None
        if progress:
            prog = Progress(
                desc=f"tais {ARM_LABELS[arm]}",
                total=len(units),
                done=len(units) - len(missing) + start,
                last_chunk=start + len(chunk) >= len(missing),
            )
        result = _generate(backend, shard, chunk, prog, check)
        run["generated_tokens"] += int(result.metrics.get("generated_tokens", 0))
        run["seconds"] += float(result.metrics.get("seconds", 0.0))
        for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
            if key in result.metrics:
                counters[key] = counters.get(key, 0) + int(result.metrics[key])
        if "observed_num_speculative_tokens" in result.metrics:
            run["observed_num_speculative_tokens"] = result.metrics["observed_num_speculative_tokens"]
    run.update(counters)


def _fill(
    store: GenerationStore,
    shard: Shard,
    backend: Backend,
    texts: Sequence[Any],
    settings: EngineSettings,
    progress: bool,
    writable: bool = True,
    then: Any = None,
) -> tuple[dict[str, StoredOutput], dict[str, Any] | None]:
    """Generate the answers the shard lacks (caller holds the lock, or ``writable`` is False: a
    read-only store, which can only serve); return the shard and this run.

    ``texts``: prompt texts (greedy) or :class:`sampling.Unit` records (sampled screens).
    ``then(backend, shard key, answers)`` runs before the engine closes (the token audit).
    """
    arm = backend.spec.arm
    units = [sampling.as_unit(t) for t in texts]
    have = shard.read()
    missing = [u for u in units if sample_key(*u) not in have]
    run: dict[str, Any] | None = None
    if missing and not writable:
        raise store.read_only_error(
            f"{len(missing)} of {len(texts)} {ARM_LABELS[arm]} output(s) are not stored and would have to be generated"
        )
    if missing:
        run = {
            "arm": arm,
            "fingerprint": shard.key,
            "backend": settings.backend,
            "prompts": len(missing),
            "generated_tokens": 0,
            "seconds": 0.0,
            "status": "failed",
        }
        # Logged before the engine starts, so a run killed on the way stays in the log as "running".
        entry_id = store.log_engine_start({**run, "status": "running"})
        try:
            _generate_missing(backend, shard, units, missing, progress, run)
            if then is not None:
                then(backend, shard.key, shard.read())
            run["status"] = "ok"
        finally:
            try:
                backend.close()
            finally:
                if backend.started:
                    run["startup_seconds"] = backend.startup_seconds
                store.update_engine_start(entry_id, run if backend.started else None)
        have = shard.read()
    elif then is not None:  # everything stored: the engine starts only if the audit must score
        _then_close(then, backend, shard.key, have)
    lacking = [u for u in units if sample_key(*u) not in have]
    if lacking:
        raise EngineError(
            f"{ARM_LABELS[arm]} arm: {len(lacking)} answer(s) have no stored output after generation, e.g. {lacking[0].text[:80]!r}"
        )
    return have, run


def _then_close(then: Any, backend: Backend, key: str, have: Mapping[str, StoredOutput]) -> None:
    try:
        then(backend, key, have)
    finally:
        backend.close()


def fill_arm(
    store: GenerationStore,
    memo: HashMemo,
    settings: EngineSettings,
    spec: ArmSpec,
    texts: list[str],
    progress: bool,
    writable: bool = True,
    then: Any = None,
) -> tuple[dict[str, Any], dict[str, StoredOutput], dict[str, Any] | None]:
    """One arm's outputs for ``texts`` through the store (caller holds its lock, or the store is
    read-only: ``writable`` False): (fingerprint with key, shard, run)."""
    backend = make_backend(settings, spec, memo)
    try:
        fp = backend.fingerprint()
    except OSError as exc:
        raise EngineError(f"{ARM_LABELS[spec.arm]} arm: cannot read the model files: {exc}") from exc
    if writable:  # the hash memo is only a cache: a read-only store re-hashes next time
        memo.save()
    shard = store.shard(fp)
    backend.log = EngineLog.for_start(settings.engine_log, engine_log_dir(store), spec.arm, shard.key)
    stored, run = _fill(store, shard, backend, texts, settings, progress, writable, then)
    return {"key": shard.key, **fp}, stored, run


def _arm_metrics(
    arm: str,
    texts: list[str],
    stored: Mapping[str, StoredOutput],
    run: Mapping[str, Any] | None,
    starts: int,
    log: list[dict[str, Any]],
    key: str,
    speculative: bool,
) -> dict[str, Any]:
    """This process's numbers, and the same over the logged runs that made the outputs.

    ``generated_tokens``, ``seconds`` and ``tokens_per_s`` count what this process generated now
    (0 and None when everything was reused); ``output_tokens`` counts every output served;
    ``logged_*`` sum the store's log of the runs that made these outputs (this one included).
    """
    runs = [r for r in log if r.get("fingerprint") == key and r.get("status") == "ok"]
    logged_tokens = sum(int(r.get("generated_tokens", 0)) for r in runs)
    logged_seconds = sum(float(r.get("seconds", 0.0)) for r in runs)
    generated = int(run["prompts"]) if run else 0
    tokens = int(run["generated_tokens"]) if run else 0
    seconds = float(run["seconds"]) if run else 0.0
    m: dict[str, Any] = {
        "engine_starts": starts,
        "prompts": len(texts),
        "generated": generated,
        "reused": len(texts) - generated,
        "generated_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "startup_seconds": run.get("startup_seconds") if run else None,
        "output_tokens": sum(len(stored[sample_key(*sampling.as_unit(t))].token_ids) for t in texts),
        "logged_tokens": logged_tokens,
        "logged_seconds": logged_seconds,
        "logged_tokens_per_s": logged_tokens / logged_seconds if logged_seconds > 0 else None,
        "logged_startup_seconds": sum(
            float(r["startup_seconds"]) for r in runs if r.get("startup_seconds") is not None
        ),
    }
    if speculative:
        with_counts = [r for r in runs if "num_draft_tokens" in r]
        drafts = sum(int(r["num_drafts"]) for r in with_counts)
        draft_tokens = sum(int(r["num_draft_tokens"]) for r in with_counts)
        accepted = sum(int(r["num_accepted_tokens"]) for r in with_counts)
        m["draft_acceptance_rate"] = accepted / draft_tokens if draft_tokens else None
        # vLLM's definition: tokens per verification step, the bonus token included.
        m["mean_accepted_length"] = 1 + accepted / drafts if drafts else None
        observed = {r["observed_num_speculative_tokens"] for r in runs if "observed_num_speculative_tokens" in r}
        if len(observed) == 1:
            m["observed_num_speculative_tokens"] = observed.pop()
    return m


def _scope(settings: EngineSettings) -> list[str]:
    notes = []
    if settings.spec_method not in VALIDATED_METHODS:
        notes.append(
            f"speculative method {settings.spec_method!r} ({SPEC_METHOD_DRAFTS[settings.spec_method]}): not validated by the "
            "seed study (validated: draft_model with exact verification); the verdict is the screen's own"
        )
    if settings.sampled:
        notes.append(
            f"sampled screen ({sampling.describe(settings)}; sampler: {sampling.sampler_name(settings)}): outside the seed "
            "study's validated scope, whose claims are for greedy decoding only"
        )
    if settings.rejection_sample_method != STANDARD_REJECTION:
        notes.append(
            f"rejection sample method {settings.rejection_sample_method!r}: the screen is validated for standard "
            "(lossless) verification only"
        )
    if settings.backend == "hf" and settings.hf_acceptance == "typical":
        notes.append(
            "typical acceptance (hf): a lossy verifier that lets draft behaviour into the outputs; validated scope is exact verification"
        )
    if settings.backend == "hf" and settings.hf_acceptance == "wrong-q":
        notes.append(
            "wrong-q rejection sampler (hf): accepts with p/q' for a q' the draft did not sample from, a lossy verifier; validated scope is exact verification"
        )
    if settings.backend == "hf" and settings.hf_acceptance == "synthetic":
        notes.append(
            "synthetic acceptance (hf): draft tokens kept at a fixed rate whatever the target says, a lossy verifier; validated scope is exact verification"
        )
    return notes


def _scoring(p: Prompt, task_metrics: Mapping[str, str] | None) -> dict[str, Any]:
    """What a record needs so that its replay scores the task as this run does."""
    metric = (task_metrics or {}).get(p.task) or ("accuracy" if p.expected is not None else "refusal")
    return {"metric": metric, "expected": p.expected if metric == "accuracy" else None}


def _checked(prompts: Sequence[Prompt], arms: tuple[str, ...]) -> list[Prompt]:
    if not arms or any(a not in (TARGET, SPECULATIVE) for a in arms):
        raise EngineError(f"arms must be a non-empty subset of ({TARGET!r}, {SPECULATIVE!r}), got {arms!r}")
    prompts = list(prompts)
    if not prompts:
        raise EngineError("no prompts to generate: the selected tasks are empty")
    seen: set[tuple[str, str]] = set()
    for p in prompts:
        if not isinstance(p, Prompt):
            raise EngineError(f"run_arms takes battery Prompt records, got {type(p).__name__}")
        if (p.task, p.prompt_id) in seen:
            raise EngineError(
                f"task {p.task!r}: prompt id {p.prompt_id!r} appears twice; prompt ids must be unique per task"
            )
        seen.add((p.task, p.prompt_id))
    return prompts


def run_arms(
    settings: EngineSettings,
    prompts: Sequence[Prompt],
    *,
    shared_dir: Path,
    progress: bool = True,
    task_metrics: Mapping[str, str] | None = None,
    arms: Sequence[str] = (TARGET, SPECULATIVE),
    reference: Mapping[tuple[str, str], Any] | None = None,
) -> ArmOutputs:
    """Answer every prompt in both arms (generating only what the store lacks).

    ``task_metrics`` (task -> "refusal" | "accuracy") tells the canary which tasks are refusal
    tasks; without it a task whose prompts carry ``expected`` answers counts as capability.
    ``arms`` limits the run to some arms: the speculative arm alone (probe mode) or the
    target-only arm alone (null-calibration reruns). The token audit (:mod:`.audit`) scores on the
    target-only arm's engine, which runs last (a null rerun: against ``reference``, (task, id) -> answer).
    """
    arms = tuple(arms)
    prompts = _checked(prompts, arms)
    texts = list(dict.fromkeys(p.text for p in prompts))
    chosen = canary_choice(prompts, settings.seed, settings.canary, task_metrics) if settings.canary > 0 else []
    by_key = {(p.task, p.prompt_id): p for p in prompts}
    if SPECULATIVE not in arms:
        chosen = []
    arm_texts = {arm: sampling.units(texts, settings) for arm in arms}
    if chosen:
        arm_texts[DRAFT] = sampling.units(list(dict.fromkeys(by_key[k].text for k in chosen)), settings)

    specs = arm_specs(settings)
    fps: dict[str, dict[str, Any]] = {}
    stored: dict[str, dict[str, StoredOutput]] = {}
    runs: dict[str, dict[str, Any] | None] = {}
    before = dict(ENGINE_STARTS)
    try:
        store = GenerationStore(store_dir(settings, shared_dir))
        with store.writer() as writable:
            memo = HashMemo(store.hash_memo_path)
            audit = _audit_run(settings, prompts, arms, stored, set(chosen), store, writable, reference)
            for arm in sorted(arm_texts, key=lambda a: audit is not None and a == TARGET):  # it scores: last
                then = audit if arm == TARGET else None
                fps[arm], stored[arm], runs[arm] = fill_arm(
                    store, memo, settings, specs[arm], arm_texts[arm], progress, writable, then
                )
            log = store.engine_starts()
    except StoreError as exc:
        raise EngineError(str(exc)) from exc

    return _outputs(
        settings, prompts, arms, chosen, stored, fps, runs, store, log, before, specs, arm_texts, task_metrics, audit
    )


def _audit_run(
    settings: EngineSettings,
    prompts: Sequence[Prompt],
    arms: Sequence[str],
    stored: Mapping[str, Mapping[str, StoredOutput]],
    chosen: set,
    store: GenerationStore,
    writable: bool,
    reference: Mapping[tuple[str, str], Any] | None,
) -> AuditRun | None:
    """The token audit of a greedy run on a backend that scores: both arms, or a null rerun with its reference."""
    if unscored_why(settings) is not None or TARGET not in arms:
        return None
    if SPECULATIVE not in arms and reference is None:
        return None
    return AuditRun(settings, prompts, stored, chosen, store, writable, reference if SPECULATIVE not in arms else None)


def _run_metrics(
    arm_texts: Mapping[str, list],
    stored: Mapping[str, Mapping[str, StoredOutput]],
    runs: Mapping[str, Any],
    starts_before: Mapping[str, int],
    log: list,
    fps: Mapping[str, dict[str, Any]],
    specs: Mapping[str, ArmSpec],
    n_canary: int,
) -> dict[str, dict[str, Any]]:
    """Each arm's numbers for this run (engine starts since ``starts_before``)."""
    metrics = {
        arm: _arm_metrics(
            arm,
            arm_texts[arm],
            stored[arm],
            runs[arm],
            ENGINE_STARTS.get(arm, 0) - starts_before.get(arm, 0),
            log,
            fps[arm]["key"],
            specs[arm].speculative,
        )
        for arm in arm_texts
    }
    if n_canary:
        metrics[SPECULATIVE]["canary_replaced"] = n_canary
    return metrics


def _outputs(
    settings: EngineSettings,
    prompts: Sequence[Prompt],
    arms: Sequence[str],
    chosen: Sequence[tuple[str, str]],
    stored: Mapping[str, Mapping[str, StoredOutput]],
    fps: Mapping[str, dict[str, Any]],
    runs: Mapping[str, Any],
    store: GenerationStore,
    log: list,
    starts_before: Mapping[str, int],
    specs: Mapping[str, ArmSpec],
    arm_texts: Mapping[str, list],
    task_metrics: Mapping[str, str] | None,
    audit: AuditRun | None = None,
) -> ArmOutputs:
    """The run's outputs: per prompt and arm one generation (greedy) or K, each with its sample index and seed.

    The canary replaces the speculative answers of its chosen prompts with the draft's own (drawn
    with the same seeds).
    """
    from ..records.generation import index_generations

    gens = _generations(settings, prompts, arms, set(chosen), stored, fps, specs, task_metrics, audit)
    out = index_generations(gens)
    for arm in arms:  # an arm left out (null reruns, probe) is absent, not empty
        out.outputs.setdefault(arm, {})
    for arm in set(out.outputs) - set(arms):
        del out.outputs[arm]
    metrics = _run_metrics(arm_texts, stored, runs, starts_before, log, fps, specs, len(chosen))
    if settings.record is not None and len(arms) == 2:
        write_generations(settings.record, gens)
    out.fingerprints, out.metrics, out.store_dir = dict(fps), metrics, store.root
    out.out_of_scope = _scope(settings)
    out.audit = {"unscored_why": unscored_why(settings), "verifier": verifier_claim(settings), "dtype": settings.dtype}
    if audit is not None:
        out.audit["cost"] = audit.cost
    out.header_lines = header_lines(settings, fps, store.root, metrics, len(chosen))
    return out


def _generations(
    settings: EngineSettings,
    prompts: Sequence[Prompt],
    arms: Sequence[str],
    canary: set,
    stored: Mapping[str, Mapping[str, StoredOutput]],
    fps: Mapping[str, dict[str, Any]],
    specs: Mapping[str, ArmSpec],
    task_metrics: Mapping[str, str] | None,
    audit: AuditRun | None = None,
) -> list[Generation]:
    """Per prompt and arm its K answers from the store (the canary's prompts from the draft alone)."""
    gens: list[Generation] = []
    for p in prompts:
        for arm in arms:
            source = DRAFT if arm == SPECULATIVE and (p.task, p.prompt_id) in canary else arm
            meta: dict[str, Any] = {"fingerprint": fps[source]["key"]}
            if settings.sampled:
                meta["sampler"] = (
                    sampling.sampler_name(settings, specs[arm].speculative)
                    if source != DRAFT
                    else "draft alone (canary)"
                )
            if source == DRAFT:
                meta["canary"] = True
            for u in sampling.units([p.text], settings):
                s = stored[source][sample_key(*u)]
                gens.append(
                    Generation(
                        task=p.task,
                        prompt_id=p.prompt_id,
                        prompt=p.text,
                        arm=arm,
                        text=s.text,
                        token_ids=s.token_ids,
                        meta={**meta, "finish_reason": s.finish_reason},
                        sample=u.sample,
                        seed=u.seed,
                        target_scores=_target_scores(audit, settings, p.text, s.token_ids, arm, arms),
                        **_scoring(p, task_metrics),
                    )
                )
    return gens


def _target_scores(
    audit: AuditRun | None, settings: EngineSettings, prompt: str, token_ids: Any, arm: str, arms: Sequence[str]
) -> dict[str, Any] | None:
    """The audit's scores of a served speculative answer (a null rerun's: of its target-only answer)."""
    if audit is None or arm != (SPECULATIVE if SPECULATIVE in arms else TARGET):
        return None
    claim = verifier_claim(settings) if SPECULATIVE in arms else "target-only rerun"
    return audit.scores_of(prompt, token_ids, claim)
