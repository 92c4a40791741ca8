"""The sampled screen's engine side: K samples per prompt per arm, each with its own seed.

A unit of generation is (prompt text, sample index, seed); greedy units are (text, None, None) and
keep their store keys. The seed of sample i is derived from the run's seed and the prompt text, so
both arms draw sample i of a prompt with the same seed, a rerun with another ``--tais-seed`` draws
fresh samples, and an interrupted run regenerates exactly the samples it lacks.

The hf backend's own sampled speculative loop lives here too (:func:`speculative_sample`): the
lossless rejection sampler (Leviathan et al. 2023, Chen et al. 2023) and its lossy controls, which
differ from it in one line each:
- ``synthetic``: each drafted token is kept with a fixed probability, whatever p and q say;
- ``typical``: Medusa's rule, p(x) > min(epsilon, delta exp(-H(p))), then a correction from p;
- ``wrong-q``: the acceptance ratio min(1, p(x) / q'(x)) and the residual max(0, p - q') use q', the
  draft's greedy (one-hot) distribution, while x was sampled from the draft's tempered q: the bug
  class of transformers issue 47932 (a candidate generator returning a q it did not sample from).
  Every drafted token other than the draft's argmax then has q'(x) = 0 and is accepted outright.
The reference lossless path of the hf backend is transformers' assisted generation with
``do_sample=True``; ``exact`` here (used by the tests as a second lossless sampler) is the same
rule written out.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, NamedTuple, Sequence


class Unit(NamedTuple):
    """One answer to generate: the prompt, and for a sampled screen its sample index and seed."""

    text: str
    sample: int | None = None
    seed: int | None = None


def sample_seed(run_seed: int, text: str, index: int) -> int:
    """The seed of sample ``index`` of a prompt: SHA-256 of (run seed, index, prompt), 31 bits."""
    digest = hashlib.sha256(f"{run_seed}\0{index}\0{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def units(texts: Sequence[str], settings: Any) -> list[Unit]:
    """Every answer an arm owes: one per text (greedy), or K per text with their seeds (sampled)."""
    if not getattr(settings, "sampled", False):
        return [Unit(t) for t in texts]
    return [Unit(t, i, sample_seed(settings.seed, t, i)) for t in texts for i in range(settings.samples)]


def as_unit(item: Any) -> Unit:
    return item if isinstance(item, Unit) else Unit(str(item))


def sampler_name(settings: Any, speculative: bool = True) -> str:
    """Which sampler made a sampled arm's answers, in words (for scope notes and headers)."""
    if not speculative:
        return f"{settings.backend} plain sampling"
    if settings.backend == "vllm":
        return f"vLLM rejection sampler ({settings.rejection_sample_method})"
    if settings.spec_method != "draft_model":
        return "transformers prompt-lookup sampling (hf)"
    return {
        "exact": "transformers assisted generation with do_sample (hf, exact speculative sampling)",
        "synthetic": "synthetic acceptance at T > 0 (hf, lossy control)",
        "typical": "typical acceptance at T > 0 (hf, lossy control)",
        "wrong-q": "rejection sampler with the wrong q (hf, lossy control: q' = the draft's greedy distribution)",
    }.get(settings.hf_acceptance, settings.hf_acceptance)


def describe(settings: Any) -> str:
    top = f", top-p {settings.top_p:g}" + (f", top-k {settings.top_k}" if settings.top_k else "")
    return f"temperature {settings.temperature:g}{top}, K = {settings.samples} samples per prompt per arm"


# -- hf: tempered distributions and the speculative sampling loop ------------------------------------
def warp(logits: Any, temperature: float, top_p: float, top_k: int | None) -> Any:
    """Next-token probabilities after temperature, top-k and top-p (the same warpers in every rule)."""
    import torch

    scores = logits.float() / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, idx = torch.sort(scores, descending=True, dim=-1)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_scores, dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, idx, sorted_scores)
    return torch.softmax(scores, dim=-1)


def verify(rule: str, p: Any, q: Any, draft_argmax: int, tok: int, uniform: Any) -> tuple[bool, Any]:
    """One drafted token under ``rule``: (accepted, the distribution to draw a correction from)."""
    import torch

    from ..setup.engine import SYNTHETIC_ACCEPTANCE_RATE, TYPICAL_DELTA, TYPICAL_EPSILON

    if rule == "synthetic":
        return uniform() < SYNTHETIC_ACCEPTANCE_RATE, p
    if rule == "typical":
        entropy = float(-(p * torch.log(p.clamp_min(1e-30))).sum())
        return float(p[tok]) > min(TYPICAL_EPSILON, TYPICAL_DELTA * math.exp(-entropy)), p
    if rule == "wrong-q":  # the bug: the draft's greedy (one-hot) q, not the tempered q it sampled from
        q = torch.zeros_like(q)
        q[draft_argmax] = 1.0
    qx = float(q[tok])
    if qx <= 0.0 or uniform() < min(1.0, float(p[tok]) / qx):
        return True, None
    residual = (p - q).clamp_min(0.0)
    return False, residual / residual.sum() if float(residual.sum()) > 0 else p


def _propose(
    draft: Any, seq: list[int], k: int, settings: Any, draw: Any, eos: set[int]
) -> tuple[list[int], list[Any], list[int]]:
    """Up to k draft tokens, each drawn from the draft's tempered q: (tokens, their q, the draft's argmax)."""
    import torch

    proposal: list[int] = []
    qs: list[Any] = []
    greedy: list[int] = []
    for _ in range(k):
        logits = draft(torch.tensor([seq + proposal], device=draft.device)).logits[0, -1]
        q = warp(logits, float(settings.temperature), float(settings.top_p), settings.top_k)
        tok = draw(q)
        proposal.append(tok)
        qs.append(q)
        greedy.append(int(torch.argmax(logits)))
        if tok in eos:
            break
    return proposal, qs, greedy


def speculative_sample(
    model: Any,
    draft: Any,
    ids: Sequence[int],
    settings: Any,
    seed: int,
    rule: str,
    eos: set[int],
    counters: dict[str, int],
) -> list[int]:
    """One sampled answer: the draft proposes up to K tokens from its tempered q, the target verifies.

    ``rule``: exact, synthetic, typical or wrong-q (module docstring). All randomness comes from one
    ``torch.Generator`` seeded with ``seed``.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    t, top_p, top_k = float(settings.temperature), float(settings.top_p), settings.top_k
    k_max, max_new = settings.num_speculative_tokens, settings.max_tokens
    device = model.device

    def draw(probs: Any) -> int:
        return int(torch.multinomial(probs.cpu(), 1, generator=gen))

    def uniform() -> float:
        return float(torch.rand((), generator=gen))

    seq = list(ids)
    new: list[int] = []
    with torch.inference_mode():
        while len(new) < max_new and not (new and new[-1] in eos):
            k = min(k_max, max_new - len(new))
            proposal, qs, greedy = _propose(draft, seq, k, settings, draw, eos)
            logits = model(torch.tensor([seq + proposal], device=device)).logits[0, len(seq) - 1 :]
            ps = warp(logits, t, top_p, top_k)
            accepted: list[int] = []
            correction: Any = None
            for i, tok in enumerate(proposal):
                ok, correction = verify(rule, ps[i], qs[i], greedy[i], tok, uniform)
                if not ok:
                    break
                accepted.append(tok)
                correction = None
            counters["num_drafts"] += 1
            counters["num_draft_tokens"] += len(proposal)
            counters["num_accepted_tokens"] += len(accepted)
            if not (accepted and accepted[-1] in eos):
                # A correction after a rejection, or the bonus token from p after K acceptances.
                accepted.append(draw(correction if correction is not None else ps[len(accepted)]))
            for tok in accepted:
                if len(new) >= max_new:
                    break
                new.append(tok)
                seq.append(tok)
                if tok in eos:
                    break
    return new
