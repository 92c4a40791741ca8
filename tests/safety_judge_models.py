"""Tiny models of the named safety judges' architectures, built on the fly (never fetched weights).

``build_judge_model(folder, arch, ...)`` writes a model folder of the architecture a judge ships in
(Llama for Llama Guard 3 and the HarmBench classifier, Mistral for WildGuard, Gemma 2 for
ShieldGemma) with a byte-level BPE tokenizer that has the judge's special tokens and adds its BOS
token, as the real tokenizers do.

``answer=TEXT`` rigs the weights so that greedy decoding answers TEXT (one added token) and then
stops, whatever the prompt: the layers' output projections are zero, so the last hidden state is
the last token's embedding; every token but the answer embeds to one direction, which the LM head
maps to the answer, and the answer embeds to another, which it maps to EOS. ``answer=None`` keeps
the random weights (an answer no parser reads).
"""

from __future__ import annotations

from pathlib import Path

HIDDEN = 8
_CORPUS = (
    "the a user agent human question response answer request safe unsafe harmful refusal yes no task "
    "check content policy categories conversation classifier behavior generation rules instances "
    "chatbot violate principle safety assessment line must read if second list violated"
)


def _tokenizer(folder: Path, *, bos: str, eos: str, specials: tuple[str, ...], answer: str | None, corpus: list[str]):
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", bos, eos, *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus + [_CORPUS] * 20, trainer)
    if answer is not None:
        tok.add_tokens([AddedToken(answer, special=False, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def build_judge_model(
    folder: Path,
    arch: str,
    *,
    bos: str,
    eos: str,
    specials: tuple[str, ...] = (),
    answer: str | None,
    corpus: list[str],
    seed: int = 0,
    hidden: int = HIDDEN,
) -> Path:
    import torch
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    folder = Path(folder)
    tokenizer = _tokenizer(folder, bos=bos, eos=eos, specials=specials, answer=answer, corpus=corpus)
    kinds = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    }
    config_cls, model_cls = kinds[arch]
    extra = {"query_pre_attn_scalar": hidden} if arch == "gemma2" else {}
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=hidden,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    if answer is not None:
        answer_id = tokenizer.convert_tokens_to_ids(answer)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            emb = model.model.embed_tokens.weight
            emb.zero_()
            emb[:, 0] = 1.0
            emb[answer_id, 0] = 0.0
            emb[answer_id, 1] = 1.0
            head = model.lm_head.weight
            head.zero_()
            head[answer_id, 0] = 10.0
            head[tokenizer.eos_token_id, 1] = 10.0
    model.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    return folder
