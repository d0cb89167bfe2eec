"""A real HTTP server on 127.0.0.1 that speaks the OpenAI wire format, for tests.

It answers ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/images/generations`` like an OpenAI-compatible endpoint, records every
request (headers and JSON body), and can be scripted per path with replies and
faults: any status with any headers (429 with Retry-After, 500), a hang longer
than the client's timeout, a body that is not JSON, a refusal, an unknown model,
an HTML page with ``200 OK`` (a proxy or captive portal, see :func:`html_reply`)
and a body dripped one byte at a time (``Reply.drip_s``).

The project's code talks to it through the real ``openai`` client, so the tests
exercise the same HTTP the users' endpoints see.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None

    def image_urls(self) -> list[str]:
        """Every ``image_url.url`` in the chat messages, in order."""
        urls: list[str] = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        urls.append(part["image_url"]["url"])
        return urls

    def text(self) -> str:
        """All text parts of all messages, joined (for asserting on prompts)."""
        chunks: list[str] = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                chunks.append(content)
            elif isinstance(content, list):
                chunks.extend(part.get("text", "") for part in content if part.get("type") == "text")
        return "\n".join(chunks)


@dataclass
class Reply:
    """A scripted answer: status, headers and a body (dict -> JSON, str/bytes -> sent as is)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering: a hang past the client's timeout
    content_type: str = "application/json"
    drip_s: float = 0.0  # send the body one byte per drip_s seconds (a server that never ends)


def html_reply(status: int = 200) -> Reply:
    """What a captive portal or a corporate proxy answers: an HTML page, often with 200 OK."""
    page = "<!DOCTYPE html><html><head><title>Sign in to the network</title></head><body><h1>Welcome</h1></body></html>"
    return Reply(status=status, body=page, content_type="text/html; charset=utf-8")


def drip_reply(body: Any, every_s: float = 2.0) -> Reply:
    """A 200 whose body arrives one byte every ``every_s`` seconds: each read is quick, the whole never is."""
    return Reply(body=body, drip_s=every_s)


Script = Reply | Callable[[Recorded], Reply]


def chat_reply(
    content: str | None,
    *,
    model: str = "vision-1",
    prompt_tokens: int = 1000,
    completion_tokens: int = 100,
    refusal: str | None = None,
    finish_reason: str = "stop",
) -> Reply:
    """A 200 chat completion with one choice."""
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error_reply(status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """An OpenAI-style error body."""
    return Reply(
        status=status,
        body={"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        headers=headers or {},
    )


def png_b64(size: int = 32, value: int = 128) -> str:
    """A small grey PNG, base64-encoded, as ``b64_json`` carries it."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(value)
    array = np.clip(rng.normal(value, 30, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


DEFAULT_MODELS: list[dict[str, Any]] = [
    {"id": "vision-1", "object": "model", "created": 1_700_000_000, "owned_by": "test"},
    {"id": "text-1", "object": "model", "created": 1_700_000_000, "owned_by": "test"},
    {"id": "image-1", "object": "model", "created": 1_700_000_000, "owned_by": "test"},
    {
        "id": "gpt-4-vision-preview",
        "object": "model",
        "created": 1_699_000_000,
        "owned_by": "system",
        "shutdown_date": "2024-12-06",
    },
    {
        "id": "sunset-later",
        "object": "model",
        "created": 1_699_000_000,
        "owned_by": "system",
        "shutdown_date": "2999-01-01",
    },
]


class FakeOpenAIServer:
    """A threaded OpenAI-compatible server on 127.0.0.1 with scripted replies.

    Attributes:
        requests: Every request received, in order.
        models: What ``/v1/models`` lists; chat and image calls for other models get a 404.
        supports_json_schema: When False, chat requests with ``response_format`` get a 400,
            like servers without structured outputs.
        chat_default: Answers chat requests when nothing is scripted.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.models: list[dict[str, Any]] = [dict(m) for m in DEFAULT_MODELS]
        self.supports_json_schema = True
        self.chat_default: Callable[[Recorded], Reply] = lambda req: chat_reply("ok", model=req.body.get("model", ""))
        self._scripts: dict[str, deque[Script]] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let hanging handlers finish
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- scripting ------------------------------------------------------------------
    def script(self, path: str, *replies: Script) -> None:
        """Queue replies for ``path`` (e.g. ``/v1/chat/completions``); each is used once, in order."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(replies)

    def pending(self, path: str) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._scripts.get(path, ()))

    def calls(self, path: str) -> list[Recorded]:
        """The requests received on one path."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # -- answering --------------------------------------------------------------------
    def _next(self, path: str) -> Script | None:
        with self._lock:
            queue = self._scripts.get(path)
            return queue.popleft() if queue else None

    def _known_model(self, name: str) -> bool:
        return any(m["id"] == name for m in self.models)

    def _answer(self, req: Recorded) -> Reply:
        scripted = self._next(req.path)
        if scripted is not None:
            return scripted(req) if callable(scripted) else scripted
        if req.path == "/v1/models" and req.method == "GET":
            return Reply(body={"object": "list", "data": self.models})
        if req.method != "POST" or not isinstance(req.body, dict):
            return error_reply(404, f"no route {req.method} {req.path}")
        model = req.body.get("model", "")
        if not self._known_model(model):
            return error_reply(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")
        if req.path == "/v1/chat/completions":
            for url in req.image_urls():
                if not url.startswith("data:image/"):
                    return error_reply(400, "image_url must be a data URL in this test server")
            if "response_format" in req.body and not self.supports_json_schema:
                return error_reply(400, "response_format json_schema is not supported by this server", code="unsupported_parameter")
            return self.chat_default(req)
        if req.path == "/v1/images/generations":
            n = int(req.body.get("n") or 1)
            return Reply(
                body={
                    "created": int(time.time()),
                    "data": [{"b64_json": png_b64(32, 60 + 40 * i)} for i in range(n)],
                    "usage": {"input_tokens": 50, "output_tokens": 0, "total_tokens": 50},
                }
            )
        return error_reply(404, f"no route {req.path}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
                return

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = None
                path = self.path.split("?", 1)[0]
                req = Recorded(method, path, {k.lower(): v for k, v in self.headers.items()}, body)
                with server._lock:
                    server.requests.append(req)
                reply = server._answer(req)
                if reply.delay_s:
                    server._release.wait(reply.delay_s)
                content_type = reply.content_type
                if isinstance(reply.body, (dict, list)):
                    payload = json.dumps(reply.body).encode()
                elif isinstance(reply.body, bytes):
                    payload = reply.body
                else:
                    payload = str(reply.body or "").encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if reply.drip_s:
                        for i in range(len(payload)):
                            self.wfile.write(payload[i : i + 1])
                            self.wfile.flush()
                            if server._release.wait(reply.drip_s):
                                break
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up (timeout): nothing to do

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

        return Handler
