"""Tiny random-weight Llama models for the engine tests, built on the fly (no model hub).

``build_tiny_models(dir)`` writes ``dir/target`` (2 layers) and ``dir/draft`` (1 layer): the same
trained byte-level BPE tokenizer (512 tokens), float32, tied embeddings, seeded. The chat template
uses plain-text role markers: special role tokens would be dropped from decoded outputs.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

VOCAB_SIZE = 512
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_WORDS = (
    "the a model answer question safety refuse request help please explain how why what when "
    "write code story poem list steps make build cook bake plant water light sound number count "
    "i am sorry cannot can will not assist with that this is harmful illegal fine sure here are "
    "some ideas first second third finally because therefore however also and or but if then"
).split()


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        out.append(" ".join(rng.choice(_WORDS) for _ in range(n)) + rng.choice([".", "?", "!", ""]))
    return out


def _build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(1234), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def _build_model(path: Path, *, layers: int, seed: int, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.05,
    )
    config.dtype = "float32"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_tiny_models(dir: str | Path) -> tuple[Path, Path]:
    """Write a 2-layer target and a 1-layer draft under ``dir``; return their folders."""
    root = Path(dir)
    target, draft = root / "target", root / "draft"
    tok_dir = root / "tokenizer"
    tokenizer = _build_tokenizer(tok_dir)
    _build_model(target, layers=2, seed=11, tokenizer=tokenizer)
    _build_model(draft, layers=1, seed=22, tokenizer=tokenizer)
    return target, draft


def engine_settings_from_config(config):
    """As the plugin wires it: the options' raw values -> engine settings; bad input is a usage error."""
    from pytest_tais.setup import options
    from pytest_tais.engines import SettingsError, engine_settings

    try:
        return engine_settings(options.read(config), Path(str(config.rootpath)))
    except (SettingsError, options.OptionError) as exc:
        raise pytest.UsageError(str(exc)) from None


def require(module: str) -> None:
    """Skip unless ``module`` is installed, without importing it: a pytester test drops the modules it
    imported when it ends, and torch (under vLLM) cannot be imported twice in one process."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


#: What vLLM's own logging looks like: "INFO 12-01 12:24:18 [core.py:93] ...", and lines its engine
# process prefixes with "(EngineCore pid=...)".
VLLM_LINE = re.compile(
    r"(^|\s)(DEBUG|INFO|WARNING|ERROR)\s+\d\d-\d\d \d\d:\d\d:\d\d|\(EngineCore|\bvllm\.|\[\w+\.py:\d+\]"
)
