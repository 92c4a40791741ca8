"""The openai backend: each arm is a running OpenAI-compatible server (``vllm serve``).

Requests carry what the local backends send (the same chat messages or raw prompt, temperature 0,
max tokens, seed) and go out from a bounded thread pool, stdlib only. Transient failures (HTTP
408/429/5xx, refused or reset connections, timeouts) are retried with exponential backoff; a
request that still fails fails the run, after the answers that did come back are handed over for
storing. The servers show their model and version; their speculative config is not observable,
so the fingerprint carries it as the user states it. The API key is read from the environment
variable named by ``--tais-api-key-env`` and goes into the Authorization header only.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import ipaddress
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from ..records.generation import SPECULATIVE, TARGET
from .base import FINISH_REASONS, JUDGE, ArmSpec, Backend, BatchResult, EngineError, Output, Progress
from .fingerprint import HashMemo, model_identity
from ..setup.engine import DRAFT_FOLDER_METHODS, redact

#: First retry delay in seconds; doubled per retry, capped at BACKOFF_CAP.
BACKOFF_SECONDS = 0.5
BACKOFF_CAP = 8.0
#: A server's Retry-After is honoured up to this many seconds.
RETRY_AFTER_CAP = 60.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_BODY_SNIPPET = 300


class PartialBatchError(EngineError):
    """Some requests of a batch failed for good; ``done`` holds the answers that came back, by index."""

    def __init__(self, message: str, done: dict[int, Output]) -> None:
        super().__init__(message)
        self.done = done


class _Failed(Exception):
    """One HTTP exchange failed; ``transient`` says whether a retry may help."""

    def __init__(self, message: str, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class _Stopped(Exception):
    """The batch was given up (another request failed for good) before this request finished."""


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def stated_model(path: Path | None, memo: HashMemo) -> dict[str, Any] | None:
    """A model as the user states it: a local folder's identity (hashed), or just its name."""
    if path is None:
        return None
    if (Path(path) / "config.json").is_file():
        return {**model_identity(Path(path), memo), "stated": True}
    return {"name": str(path), "stated": True}


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, settings: Any, spec: ArmSpec, memo: HashMemo) -> None:
        super().__init__(settings, spec)
        if spec.arm == TARGET:
            self.url, self._url_option = settings.target_url, "--tais-target-url"
        elif spec.arm == SPECULATIVE:
            self.url, self._url_option = settings.speculative_url, "--tais-speculative-url"
        elif spec.arm == JUDGE:
            self.url, self._url_option = settings.target_url, "--tais-judge"
        else:
            raise EngineError(
                f"{spec.arm} arm: the openai backend serves the target-only, speculative and judge arms only"
            )
        self._memo = memo
        self._key: str | None = None
        if settings.api_key_env:
            self._key = os.environ.get(settings.api_key_env) or None
            if self._key is None:
                raise EngineError(
                    f"--tais-api-key-env={settings.api_key_env}: that environment variable is not set (or empty)"
                )
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)
        self._server: dict[str, Any] | None = None
        self._lock = threading.Lock()
        #: HTTP requests sent to the server, retries included.
        self.requests = 0
        self._usage: dict[str, int] = {}

    # -- HTTP ------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "<redacted>") if self._key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "pytest-tais"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _exchange(self, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        """One HTTP exchange: (status, parsed JSON); 404 comes back as (404, None)."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, headers=self._headers(), method="POST" if data else "GET"
        )
        with self._lock:
            self.requests += 1
        try:
            with self._opener.open(req, timeout=self.settings.request_timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            try:
                snippet = exc.read()[:_BODY_SNIPPET].decode("utf-8", "replace")
            except Exception:  # the body is only for the message
                snippet = ""
            finally:
                exc.close()
            if exc.code == 404:
                return 404, None
            message = f"HTTP {exc.code} {exc.reason}" + (f": {snippet.strip()}" if snippet.strip() else "")
            raise _Failed(message, exc.code in TRANSIENT_STATUS, _retry_after(exc.headers)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            transient = isinstance(reason, OSError)
            raise _Failed(f"cannot reach the server ({type(reason).__name__}: {reason})", transient) from None
        except (http.client.HTTPException, OSError) as exc:  # resets, timeouts, a connection closed mid-response
            raise _Failed(f"the connection failed ({type(exc).__name__}: {exc})", True) from None
        try:
            return status, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Failed(f"the response is not JSON ({len(raw)} bytes)", True) from None

    def _request(self, path: str, body: dict[str, Any] | None, stop: threading.Event | None = None) -> tuple[int, Any]:
        """An exchange with retries on transient failures; raises _Failed when it gives up."""
        attempts = self.settings.request_retries + 1
        for attempt in range(attempts):
            if stop is not None and stop.is_set():
                raise _Stopped()
            try:
                return self._exchange(path, body)
            except _Failed as exc:
                if not exc.transient or attempt == attempts - 1:
                    tries = f" after {attempt + 1} attempt(s)" if exc.transient else ""
                    raise _Failed(self._scrub(f"{exc}{tries}"), exc.transient) from None
                delay = min(BACKOFF_SECONDS * 2**attempt, BACKOFF_CAP)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if stop is not None:
                    if stop.wait(delay):
                        raise _Stopped() from None
                else:
                    time.sleep(delay)
        raise AssertionError("unreachable")

    # -- the server ------------------------------------------------------------------------
    def server_info(self) -> dict[str, Any]:
        """The served model (from /v1/models) and the vLLM version (from /version, where there is one)."""
        if self._server is not None:
            return self._server
        where = f"{self.spec.arm} arm ({self._url_option}={self.url})"
        try:
            status, models = self._request("/v1/models", None)
            if status == 404:
                raise EngineError(f"{where}: no /v1/models here; is this the base URL of an OpenAI-compatible server?")
            _, version = self._request("/version", None)
        except _Failed as exc:
            raise EngineError(f"{where}: {exc}") from None
        data = models.get("data") if isinstance(models, dict) else None
        entries = (
            [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(data, list) else []
        )
        if not entries:
            raise EngineError(f"{where}: /v1/models lists no model")
        wanted = self.settings.served_model
        if wanted is not None:
            chosen = next((m for m in entries if m["id"] == wanted), None)
            if chosen is None:
                ids = ", ".join(repr(m["id"]) for m in entries[:10])
                raise EngineError(f"{where}: --tais-served-model={wanted!r} is not served there; it serves {ids}")
        else:
            chosen = entries[0]
        version_text = version.get("version") if isinstance(version, dict) else None
        self._server = {
            "url": self.url,
            "model": chosen["id"],
            "root": chosen.get("root"),
            "max_model_len": chosen.get("max_model_len"),
            "vllm_version": version_text if isinstance(version_text, str) else None,
        }
        return self._server

    def fingerprint(self) -> dict[str, Any]:
        s, spec = self.settings, self.spec
        server = self.server_info()
        fp: dict[str, Any] = {
            "schema": 1,
            "backend": "openai",
            "server": server,
            "versions": {"vllm (server)": server["vllm_version"]} if server["vllm_version"] else {},
            "seed": s.seed,
            "sampling": {"temperature": 0.0, "max_tokens": s.max_tokens},
            # The server applies the chat template: it is part of the served stack, not read here.
            "prompt": {"mode": "chat" if s.prompt_mode == "chat" else "raw", "system_prompt": s.system_prompt},
            "stated_model": stated_model(spec.model, self._memo),
            "speculation": None,
        }
        if spec.method is not None:
            spec_fp: dict[str, Any] = {
                "stated": True,
                "observed": False,
                "method": spec.method,
                "num_speculative_tokens": s.num_speculative_tokens,
            }
            if spec.method in DRAFT_FOLDER_METHODS:
                spec_fp["draft"] = stated_model(spec.draft, self._memo)
            if spec.method == "ngram":
                spec_fp["prompt_lookup"] = [s.prompt_lookup_min, s.prompt_lookup_max]
            if s.speculative_config_extra:
                spec_fp["speculative_config"] = redact(s.speculative_config_extra)
            fp["speculation"] = spec_fp
        return fp

    # -- generation ------------------------------------------------------------------------
    def _body(self, text: str) -> tuple[str, dict[str, Any]]:
        s = self.settings
        server = self.server_info()
        body: dict[str, Any] = {
            "model": server["model"],
            "temperature": 0.0,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
            "n": 1,
            "stream": False,
        }
        if server["vllm_version"]:  # vLLM's extra field; other servers may refuse unknown fields
            body["return_token_ids"] = True
        if s.prompt_mode == "chat":
            system = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
            body["messages"] = system + [{"role": "user", "content": text}]
            return "/v1/chat/completions", body
        prefix = f"{s.system_prompt}\n\n" if s.system_prompt else ""
        body["prompt"] = prefix + text
        return "/v1/completions", body

    def _one(self, text: str, stop: threading.Event) -> tuple[Output, int, dict[str, Any] | None]:
        path, body = self._body(text)
        _, data = self._request(path, body, stop)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            raise _Failed("the response has no single choice", False)
        choice = choices[0]
        if path.endswith("/chat/completions"):
            message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            content = message.get("content")
        else:
            content = choice.get("text")
        if content is not None and not isinstance(content, str):
            raise _Failed("the response's text is not a string", False)
        finish = choice.get("finish_reason")
        if finish not in FINISH_REASONS:
            raise _Failed(
                f"the server ended it with finish reason {finish!r}, not a stop token or the token limit", False
            )
        raw_ids = choice.get("token_ids")
        if raw_ids is not None and (not isinstance(raw_ids, list) or not all(isinstance(t, int) for t in raw_ids)):
            raise _Failed("the response's token_ids is not a list of integers", False)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        completion_tokens = usage.get("completion_tokens")
        token_ids = tuple(raw_ids or ())
        if not isinstance(completion_tokens, int):
            completion_tokens = len(token_ids)
        text_out = content or ""
        if not token_ids and not (text_out or completion_tokens > 0):
            raise _Failed(
                "no output: no text and no generated tokens; check --tais-max-tokens and the server's --max-model-len",
                False,
            )
        metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
        spec_metrics = (
            metrics.get("speculative_decoding") if isinstance(metrics.get("speculative_decoding"), dict) else None
        )
        self._check_speculation(spec_metrics)
        return Output(text=text_out, token_ids=token_ids, finish_reason=finish), completion_tokens, spec_metrics

    def _check_speculation(self, spec_metrics: dict[str, Any] | None) -> None:
        """Where the server reports per-request speculation, it must match the arm."""
        if spec_metrics is None or self.spec.arm == JUDGE:  # how a judge is served does not matter
            return
        k = spec_metrics.get("num_spec_tokens")
        if self.spec.method is None:
            raise _Failed(
                f"the target-only server reports speculative decoding (K={k}); point {self._url_option} at a server "
                "started without --speculative-config",
                False,
            )
        if isinstance(k, int) and k != self.settings.num_speculative_tokens:
            raise _Failed(
                f"the server reports K={k} speculative tokens but --tais-num-speculative-tokens states "
                f"{self.settings.num_speculative_tokens}; state what the server runs",
                False,
            )

    def generate(self, texts: Sequence[str], *, progress: Progress | None = None) -> BatchResult:
        if not self.started:
            t0 = time.perf_counter()
            self._count_start()
            self.server_info()
            self.startup_seconds = time.perf_counter() - t0
        texts = list(texts)
        done: dict[int, tuple[Output, int, dict[str, Any] | None]] = {}
        failures: dict[int, str] = {}
        stop = threading.Event()
        bar = progress.bar() if progress is not None else None
        t0 = time.perf_counter()
        workers = max(1, min(self.settings.max_concurrency, len(texts)))
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tais-openai") as pool:
                futures = {pool.submit(self._one, t, stop): i for i, t in enumerate(texts)}
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    try:
                        done[i] = fut.result()
                    except _Stopped:
                        continue
                    except _Failed as exc:
                        failures[i] = self._scrub(str(exc))
                        stop.set()  # queued requests stop; those in flight finish and are kept
                        for other in futures:
                            other.cancel()
                    except concurrent.futures.CancelledError:
                        continue
                    except Exception as exc:  # a bug or an unexpected response shape: fail closed
                        failures[i] = self._scrub(f"{type(exc).__name__}: {exc}")
                        stop.set()
                        for other in futures:
                            other.cancel()
                    if bar is not None and i in done:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        for i, (_, tokens, _) in done.items():
            self._usage[texts[i]] = tokens
        if failures:
            first = min(failures)
            unsent = len(texts) - len(done) - len(failures)
            message = (
                f"{self.spec.arm} arm ({self._url_option}={self.url}): {len(failures)} of {len(texts)} request(s) failed; "
                f"the prompt {texts[first][:80]!r}: {failures[first]}. {len(done)} answer(s) came back and are kept"
                + (f", {unsent} not sent" if unsent else "")
                + "; a rerun asks only for the missing prompts"
            )
            raise PartialBatchError(message, {i: out for i, (out, _, _) in done.items()})
        outputs = [done[i][0] for i in range(len(texts))]
        metrics = self._metrics(
            seconds, [done[i][1] for i in range(len(texts))], [done[i][2] for i in range(len(texts))]
        )
        return BatchResult(outputs=outputs, metrics=metrics)

    def _metrics(self, seconds: float, tokens: Sequence[int], spec: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """The batch's numbers; the speculative counters where every response reported them."""
        metrics: dict[str, Any] = {"seconds": seconds, "generated_tokens": sum(tokens)}
        if self.spec.speculative and spec and all(m is not None for m in spec):
            metrics["num_drafts"] = sum(int(m.get("num_spec_steps", 0)) for m in spec)  # type: ignore[union-attr]
            metrics["num_draft_tokens"] = sum(int(m.get("num_draft_tokens", 0)) for m in spec)  # type: ignore[union-attr]
            metrics["num_accepted_tokens"] = sum(int(m.get("num_accepted_draft_tokens", 0)) for m in spec)  # type: ignore[union-attr]
            ks = {m.get("num_spec_tokens") for m in spec}  # type: ignore[union-attr]
            if len(ks) == 1 and isinstance(next(iter(ks)), int):
                metrics["observed_num_speculative_tokens"] = next(iter(ks))
        return metrics

    def check_outputs(self, arm: str, texts: Sequence[str], outputs: Sequence[Output]) -> None:
        """As ``base.check_outputs``, but a server that returns no token ids may vouch by usage counts."""
        if len(outputs) != len(texts):
            raise EngineError(f"{arm} arm: the server returned {len(outputs)} outputs for {len(texts)} prompts")
        for text, out in zip(texts, outputs):
            if out.finish_reason not in FINISH_REASONS:
                raise EngineError(
                    f"{arm} arm: the server ended the prompt {text[:80]!r} with finish reason {out.finish_reason!r}"
                )
            if not isinstance(out.text, str) or not (out.token_ids or out.text or self._usage.get(text, 0) > 0):
                raise EngineError(
                    f"{arm} arm: no output for the prompt {text[:80]!r}; check --tais-max-tokens and the server's --max-model-len"
                )

    def close(self) -> None:
        """Nothing to free: the servers keep running."""
