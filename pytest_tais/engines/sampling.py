"""The sampled screen's engine side: K samples per prompt per arm, each with its own seed.

A unit of generation is (prompt text, sample index, seed); greedy units are (text, None, None) and
keep their store keys. The seed of sample i is derived from the run's seed and the prompt text, so
both arms draw sample i of a prompt with the same seed, a rerun with another ``--tais-seed`` draws
fresh samples, and an interrupted run regenerates exactly the samples it lacks.

The hf backend's own sampled speculative loop lives here too (:func:`speculative_sample_batch`): the
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


#: A batch's cache is repacked (holes dropped) once it is this many times as wide as its longest
#: row's tokens, so that many rounds of rejections cannot grow it without bound (tests set 0: always).
REPACK_WIDTH = 2.0


class _RowCache:
    """One model's KV cache over a batch of rows that advance by different amounts.

    Each forward appends one block of slots to every row: a row's new tokens sit at the block's
    right end (so its last token's logits are the block's last column), the slots left of them are
    padding, masked. A rejected token is never cropped (the cache is shared by the batch): its slot
    is masked from then on, so it is a hole, as padding is. Position ids count a row's own tokens
    only, so a row's keys, queries and positions are those it has alone; only the masked slots
    around them differ with the batch. When the holes make the cache much wider than its longest
    row (:data:`REPACK_WIDTH`), each row's slots are moved to the right end of a narrower cache.
    """

    def __init__(self, model: Any, rows: int, pad: int) -> None:
        import torch
        from transformers import DynamicCache

        self.model, self.pad, self.cache = model, pad, DynamicCache()
        self.mask = torch.zeros((rows, 0), dtype=torch.long, device=model.device)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]  # each row's tokens in the cache, in order
        self.slots: list[list[int]] = [[] for _ in range(rows)]  # and their slots

    def feed(self, seqs: dict[int, list[int]], keep: int) -> Any:
        """Feed each row of ``seqs`` the part of its sequence the cache lacks (at least one token);
        the logits of the block's last ``keep`` columns, one row per batch row (rows not in ``seqs``
        feed padding and their logits mean nothing)."""
        import torch

        if self.mask.shape[1] > REPACK_WIDTH * max(len(t) for t in self.tokens):
            self._repack()
        rows, base = len(self.tokens), self.mask.shape[1]
        todo = {r: seq[len(self.tokens[r]) :] for r, seq in seqs.items()}
        width = max(len(t) for t in todo.values())
        ids = [[self.pad] * width for _ in range(rows)]
        block = [[0] * width for _ in range(rows)]
        positions = [[0] * width for _ in range(rows)]
        for r, fed in todo.items():
            first = width - len(fed)
            ids[r][first:] = fed
            block[r][first:] = [1] * len(fed)
            positions[r][first:] = range(len(self.tokens[r]), len(self.tokens[r]) + len(fed))
            self.tokens[r].extend(fed)
            self.slots[r].extend(range(base + first, base + width))
        device = self.model.device
        self.mask = torch.cat([self.mask, torch.tensor(block, device=device)], dim=1)
        return self.model(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=self.mask,
            position_ids=torch.tensor(positions, device=device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        ).logits

    def _repack(self) -> None:
        """Drop the holes: each row's cached slots, in order, at the right end of a cache as wide as
        its longest row (the keys keep their rotary positions; the padding slots are masked)."""
        import torch

        width = max(len(slots) for slots in self.slots)
        device = self.model.device
        index = torch.tensor([[0] * (width - len(slots)) + slots for slots in self.slots], device=device)
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", True) or layer.keys.numel() == 0:
                continue
            at = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys, layer.values = layer.keys.gather(2, at), layer.values.gather(2, at)
        self.mask = torch.tensor([[0] * (width - len(slots)) + [1] * len(slots) for slots in self.slots], device=device)
        self.slots = [list(range(width - len(slots), width)) for slots in self.slots]

    def rewind(self, row: int, seq: list[int]) -> None:
        """Keep the longest prefix of ``row``'s cached tokens that ``seq`` starts with, less its last
        token (so the next feed has one at least); mask the slots after it."""
        cached = self.tokens[row]
        n = 0
        limit = min(len(cached), len(seq) - 1)
        while n < limit and cached[n] == seq[n]:
            n += 1
        if n < len(cached):
            self.mask[row, self.slots[row][n:]] = 0
            del cached[n:], self.slots[row][n:]

    def select(self, rows: list[int]) -> None:
        """Keep only these batch rows (finished rows leave the batch)."""
        import torch

        index = torch.tensor(rows, device=self.model.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.tokens = [self.tokens[r] for r in rows]
        self.slots = [self.slots[r] for r in rows]


def speculative_sample_batch(
    model: Any,
    draft: Any,
    batch: Sequence[Sequence[int]],
    settings: Any,
    seeds: Sequence[int],
    rule: str,
    eos: set[int],
    counters: dict[str, int],
    pad: int = 0,
) -> list[list[int]]:
    """Sampled answers, one per (prompt ids, seed): the draft proposes up to K tokens from its
    tempered q, the target verifies under ``rule``; the rows' rounds run together.

    ``rule``: exact, synthetic, typical or wrong-q (module docstring). Each row draws from its own
    ``torch.Generator`` seeded with its seed, in the order a row alone draws: its proposal's tokens,
    then the verification's uniforms, then the correction or bonus token. Draft and target keep a KV
    cache per batch (:class:`_RowCache`), so a round reads the new tokens only, and a row's answer is
    the one it gets alone or in another batch (tests/test_engines.py).
    """
    import torch

    t, top_p, top_k = float(settings.temperature), float(settings.top_p), settings.top_k
    k_max, max_new = settings.num_speculative_tokens, settings.max_tokens
    gens = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    seqs = [list(ids) for ids in batch]
    news: list[list[int]] = [[] for _ in batch]
    live = list(range(len(batch)))  # the unfinished rows; batch row b of the caches is live[b]
    target_cache, draft_cache = _RowCache(model, len(batch), pad), _RowCache(draft, len(batch), pad)
    with torch.inference_mode():
        while live:
            ks = [min(k_max, max_new - len(news[r])) for r in live]
            proposals, qs, greedy = _propose_batch(draft_cache, seqs, live, ks, settings, gens, eos)
            keep = max(len(p) for p in proposals) + 1
            logits = target_cache.feed({b: seqs[r] + proposals[b] for b, r in enumerate(live)}, keep)
            for b, r in enumerate(live):
                ps = warp(logits[b, keep - len(proposals[b]) - 1 :], t, top_p, top_k).cpu()
                accepted = _verify_row(rule, proposals[b], ps, qs[b], greedy[b], gens[r], eos, counters)
                new = news[r]
                for tok in accepted:
                    if len(new) >= max_new:
                        break
                    new.append(tok)
                    seqs[r].append(tok)
                    if tok in eos:
                        break
                target_cache.rewind(b, seqs[r])
                draft_cache.rewind(b, seqs[r])
            going = [b for b, r in enumerate(live) if len(news[r]) < max_new and not (news[r] and news[r][-1] in eos)]
            if len(going) < len(live):
                live = [live[b] for b in going]
                if live:
                    target_cache.select(going)
                    draft_cache.select(going)
    return news


def _propose_batch(
    draft_cache: _RowCache,
    seqs: list[list[int]],
    live: list[int],
    ks: list[int],
    settings: Any,
    gens: list[Any],
    eos: set[int],
) -> tuple[list[list[int]], list[list[Any]], list[list[int]]]:
    """Each live row's proposal, up to ``ks[b]`` tokens (fewer after a stop token), each drawn from
    the draft's tempered q with the row's generator: (tokens, their q, the draft's argmax) per row."""
    import torch

    t, top_p, top_k = float(settings.temperature), float(settings.top_p), settings.top_k
    proposals: list[list[int]] = [[] for _ in live]
    qs: list[list[Any]] = [[] for _ in live]
    greedy: list[list[int]] = [[] for _ in live]
    proposing = [b for b in range(len(live)) if ks[b] > 0]
    while proposing:
        logits = draft_cache.feed({b: seqs[live[b]] + proposals[b] for b in proposing}, 1)[:, -1]
        q_all = warp(logits[proposing], t, top_p, top_k).cpu()
        argmax = torch.argmax(logits[proposing], dim=-1).tolist()
        still = []
        for i, b in enumerate(proposing):
            tok = int(torch.multinomial(q_all[i], 1, generator=gens[live[b]]))
            proposals[b].append(tok)
            qs[b].append(q_all[i])
            greedy[b].append(int(argmax[i]))
            if tok not in eos and len(proposals[b]) < ks[b]:
                still.append(b)
        proposing = still
    return proposals, qs, greedy


def _verify_row(
    rule: str,
    proposal: list[int],
    ps: Any,
    qs: list[Any],
    greedy: list[int],
    gen: Any,
    eos: set[int],
    counters: dict[str, int],
) -> list[int]:
    """One row's round: the proposal's accepted prefix under ``rule`` (:func:`verify`, ``ps`` the
    target's tempered p at each position and one after), then the correction after a rejection or
    the bonus token after K acceptances, drawn with the row's generator; the counters count it."""
    import torch

    uniform = lambda: float(torch.rand((), generator=gen))  # noqa: E731
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
        probs = correction if correction is not None else ps[len(accepted)]
        accepted.append(int(torch.multinomial(probs, 1, generator=gen)))
    return accepted
