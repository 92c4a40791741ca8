"""A small OpenAI-compatible stub server for the openai backend's fault tests (stdlib only).

It answers on 127.0.0.1 in a thread. ``plan(prompt, attempt)`` decides each chat/completion
request: ``"ok"``, ``("status", code)``, ``"close"`` (the connection drops mid-response) or
``("sleep", seconds)`` before answering, ``"empty"`` (no text, no tokens) or ``("echo", code)``
(an error whose body repeats the Authorization header). Answers are deterministic functions of the prompt.
Every request is logged (path, Authorization header, body) for the tests to count and inspect.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Plan = Callable[[str, int], Any]


def answer(prompt: str) -> str:
    """The stub's answer: deterministic, distinct per prompt."""
    return "echo: " + prompt[::-1]


class FakeOpenAIServer:
    def __init__(
        self,
        plan: Plan | None = None,
        *,
        vllm_version: str | None = "0.0-stub",
        model: str = "stub-model",
        token_ids: bool = True,
        spec_tokens: int | None = None,
        answer_fn: Callable[[str], str] | None = None,
    ) -> None:
        self.plan: Plan = plan or (lambda prompt, attempt: "ok")
        self.answer_fn = answer_fn or answer  # what an "ok" request gets back
        self.vllm_version = vllm_version
        self.model = model
        self.token_ids = token_ids
        self.spec_tokens = spec_tokens  # per-request speculative metrics with this K, as vLLM reports them
        self.log: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def generation_requests(self, prompt: str | None = None) -> list[dict[str, Any]]:
        reqs = [r for r in self.log if r["path"].endswith("completions")]
        return reqs if prompt is None else [r for r in reqs if r["prompt"] == prompt]

    def _reply(self, prompt: str, chat: bool) -> dict[str, Any]:
        text = self.answer_fn(prompt)
        ids = [b for b in text.encode("utf-8")][:64]
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if self.token_ids:
            choice["token_ids"] = ids
        out: dict[str, Any] = {"choices": [choice], "usage": {"completion_tokens": len(ids)}}
        if self.spec_tokens is not None:
            out["metrics"] = {
                "speculative_decoding": {
                    "num_spec_tokens": self.spec_tokens,
                    "num_spec_steps": 2,
                    "num_draft_tokens": 2 * self.spec_tokens,
                    "num_accepted_draft_tokens": 3,
                }
            }
        return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _leave(self) -> None:
                # A request stops counting before its answer goes out: the client may send the next
                # one the moment it has read this answer.
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, obj: Any) -> None:
                self._leave()
                data = json.dumps(obj).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                server.log.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "prompt": None, "body": None}
                )
                if self.path == "/v1/models":
                    self._send(
                        200,
                        {"object": "list", "data": [{"id": server.model, "root": server.model, "max_model_len": 2048}]},
                    )
                elif self.path == "/version" and server.vllm_version is not None:
                    self._send(200, {"version": server.vllm_version})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode("utf-8"))
                chat = self.path == "/v1/chat/completions"
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                with server._lock:
                    attempt = server._attempts.get(prompt, 0)
                    server._attempts[prompt] = attempt + 1
                    server.log.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "prompt": prompt, "body": body}
                    )
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    self._counted = True
                try:
                    self._act(server.plan(prompt, attempt), prompt, chat)
                finally:
                    self._leave()

            def _act(self, action: Any, prompt: str, chat: bool) -> None:
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if isinstance(action, tuple) and action[0] == "status":
                    self._send(action[1], {"error": {"message": f"stub error {action[1]}"}})
                elif isinstance(action, tuple) and action[0] == "echo":  # an error body that repeats the credentials
                    self._send(
                        action[1], {"error": {"message": f"bad credentials: {self.headers.get('Authorization')}"}}
                    )
                elif action == "close":
                    data = json.dumps(server._reply(prompt, chat)).encode("utf-8")
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])  # then the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif action == "ok":
                    self._send(200, server._reply(prompt, chat))
                elif action == "empty":
                    reply = server._reply(prompt, chat)
                    choice = reply["choices"][0]
                    choice.pop("token_ids", None)
                    choice["message" if chat else "text"] = {"role": "assistant", "content": ""} if chat else ""
                    reply["usage"] = {"completion_tokens": 0}
                    self._send(200, reply)
                else:
                    raise AssertionError(f"unknown plan action {action!r}")

        return Handler
