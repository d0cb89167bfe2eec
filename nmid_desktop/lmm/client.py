"""The OpenAI-compatible client: endpoint, retries, cache, and errors that never carry the key.

One :class:`LmmClient` wraps the official ``openai`` package pointed at any
OpenAI-compatible base URL (OpenAI, Azure OpenAI's v1 API, Ollama, vLLM,
LM Studio). The ``openai`` client's own retries are switched off
(``max_retries=0``) so that the policy here is explicit and tested:

* 429, 408, 409, 5xx, timeouts and dropped connections are retried with
  exponential backoff (``backoff_s * 2**attempt``, plus up to 10 % jitter),
  but a ``Retry-After`` / ``retry-after-ms`` header from the server wins;
* a 429 with code ``insufficient_quota`` is not retried (waiting does not help);
* every wait is cut into short slices that check the :class:`CancelToken`;
* every attempt has a *total* deadline (``lmm.timeout_s``), not only a per-read
  one: the HTTP call runs in a helper thread on its own connection pool, and the
  caller's thread closes that pool when the deadline passes or the token is
  cancelled, so a server dripping one byte every few seconds is cut off;
* one request with all its retries and waits has a total deadline too (``lmm.deadline_s``);
* bodies are parsed here, not by the ``openai`` package (which hands back the raw
  text of an HTML page from a proxy): anything but a JSON object is a
  :class:`MalformedResponseError` with a clear message.

Successful responses go to a :class:`~nmid_desktop.lmm.cache.ResponseCache`
keyed by (endpoint, kind, full request), so the same request is never paid twice.

Errors become :class:`LmmError` subclasses whose text has passed through
:func:`~nmid_desktop.lmm.secrets.redact`; the ``openai`` exception (whose message
may quote a server that echoed the Authorization header) is not chained.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

from nmid_desktop.core.config import LmmSettings
from nmid_desktop.core.errors import Cancelled, NmidError
from nmid_desktop.core.jobs import CancelToken
from nmid_desktop.lmm.cache import ResponseCache, request_key
from nmid_desktop.lmm.secrets import get_api_key, key_source, redact

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
# Local servers ignore the key, but the openai package insists on one. LM Studio and
# llama.cpp document the same trick.
NO_KEY = "no-key"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
# How much of an unexpected body (an HTML page) an error message quotes.
_SNIPPET_CHARS = 120

NO_ENDPOINT_MESSAGE = (
    "no endpoint configured: set lmm.base_url in the settings (or OPENAI_BASE_URL) for a local or "
    "OpenAI-compatible server, and/or an API key (OPENAI_API_KEY or `nmid api-key set`). "
    "Without them nmid works offline with the local predictor."
)


# ----------------------------------------------------------------------------- errors

class LmmError(NmidError):
    """A call to the model endpoint failed. The message is already free of secrets.

    Attributes:
        fatal: True when retrying other items of a batch cannot help (no endpoint,
            bad key, missing model, unreachable server); a batch stops at such an error.
    """

    fatal = False


class NoEndpointError(LmmError):
    """Neither a base URL nor an API key is configured: the app is offline."""

    fatal = True

    def __init__(self, message: str = NO_ENDPOINT_MESSAGE) -> None:
        super().__init__(message)


class EndpointAuthError(LmmError):
    """The endpoint refused the key (401/403) or the quota is used up."""

    fatal = True


class ModelUnavailableError(LmmError):
    """A configured model is retired or unknown at the endpoint; the message names the setting."""

    fatal = True


class EndpointUnreachableError(LmmError):
    """The server could not be reached at all (refused connection, bad host)."""

    fatal = True


class RequestRejectedError(LmmError):
    """The endpoint rejected the request as invalid (400/422)."""


class MalformedResponseError(LmmError):
    """The endpoint answered 200 with a body that is not the expected JSON."""


class InsecureEndpointError(LmmError):
    """Plain ``http://`` to a host that is not this machine, without the user's consent."""

    fatal = True


class DeadlineExceededError(LmmError):
    """One request with its retries took longer than ``lmm.deadline_s``."""


# ----------------------------------------------------------------------------- endpoint

@dataclass(frozen=True)
class Endpoint:
    """Where requests go. ``api_key`` is left out of ``repr`` so it cannot leak into logs.

    Attributes:
        base_url: The ``.../v1`` URL.
        api_key: The key, or :data:`NO_KEY` for local servers without one.
        organization: OpenAI organisation id, or "".
        timeout_s: Seconds one HTTP attempt may take in all (connect, headers and body).
        max_retries: Retries after the first try.
        key_source: ``environment``, ``keyring``, ``file`` or ``none``.
        deadline_s: Seconds one request may take with all its retries and waits.
        allow_insecure_http: The user's consent (``lmm.allow_insecure_http``) to send the
            key and images over plain http to a host that is not this machine.
    """

    base_url: str
    api_key: str = field(default=NO_KEY, repr=False)
    organization: str = ""
    timeout_s: float = 60.0
    max_retries: int = 4
    key_source: str = "none"
    deadline_s: float = 300.0
    allow_insecure_http: bool = False

    @property
    def is_local(self) -> bool:
        """True for a server on this machine (images do not leave it)."""
        return is_loopback_host(urlparse(self.base_url).hostname or "")

    def check_transport(self) -> None:
        """Refuse plain http to another host unless the user consented in the settings.

        Raises:
            InsecureEndpointError: Naming the setting ``lmm.allow_insecure_http``.
        """
        parsed = urlparse(self.base_url)
        scheme = (parsed.scheme or "").lower()
        if scheme not in ("http", "https"):
            raise InsecureEndpointError(
                f"setting lmm.base_url must be an http:// or https:// URL, not {redact(self.base_url, self.api_key)!r}"
            )
        if scheme == "http" and not self.is_local and not self.allow_insecure_http:
            host = parsed.hostname or "?"
            raise InsecureEndpointError(
                f"refusing to send the API key and images unencrypted over plain http:// to {host}, "
                "which is not this machine: use https://, or, for a server you trust on your own network, "
                "set lmm.allow_insecure_http = true in the settings"
            )


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    import ipaddress

    host = host.strip("[]").lower()
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_endpoint(lmm: LmmSettings) -> Endpoint | None:
    """The endpoint the settings and environment describe, or None when offline.

    Base URL: ``lmm.base_url``, else ``OPENAI_BASE_URL``, else OpenAI itself when a
    key exists. Key: ``OPENAI_API_KEY``, the OS keyring, or the private key file.
    A base URL without a key is fine (local servers need none).
    """
    base_url = (lmm.base_url or os.environ.get("OPENAI_BASE_URL", "")).strip()
    key = get_api_key()
    if not base_url and not key:
        return None
    return Endpoint(
        base_url=(base_url or OPENAI_URL).rstrip("/"),
        api_key=key or NO_KEY,
        organization=lmm.organization,
        timeout_s=float(lmm.timeout_s),
        max_retries=max(0, int(lmm.max_retries)),
        key_source=key_source() if key else "none",
        deadline_s=float(lmm.deadline_s),
        allow_insecure_http=bool(lmm.allow_insecure_http),
    )


def require_endpoint(lmm: LmmSettings) -> Endpoint:
    """Like :func:`resolve_endpoint`, but raise :class:`NoEndpointError` when offline."""
    endpoint = resolve_endpoint(lmm)
    if endpoint is None:
        raise NoEndpointError()
    return endpoint


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class ChatResult:
    """One chat completion, reduced to what the app uses.

    Attributes:
        text: The assistant's message text ("" when none).
        refusal: The model's refusal text, if it refused.
        finish_reason: ``stop``, ``length``, ``content_filter``, ...
        tokens_in: Prompt tokens reported by the server (0 if not reported).
        tokens_out: Completion tokens reported by the server.
        model: The model that answered.
        cached: True when served from the disk cache (nothing paid).
    """

    text: str
    refusal: str | None
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    model: str
    cached: bool = False

    @property
    def refused(self) -> bool:
        """True when the model declined or a content filter stopped it."""
        return bool(self.refusal) or self.finish_reason == "content_filter"


@dataclass(frozen=True)
class ImagesResult:
    """Images from ``/v1/images/generations``: decoded bytes (PNG, JPEG or WebP)."""

    images: list[bytes]
    tokens_in: int
    tokens_out: int
    model: str
    cached: bool = False


def chat_result(response: dict[str, Any], cached: bool = False) -> ChatResult:
    """Reduce a chat-completion JSON body to a :class:`ChatResult`.

    Raises:
        MalformedResponseError: If the body has no choices or no message.
    """
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponseError("the endpoint's chat answer has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise MalformedResponseError("the endpoint's chat answer has no message")
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    usage = response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    refusal = message.get("refusal")
    finish_reason = choices[0].get("finish_reason")
    return ChatResult(
        text=content if isinstance(content, str) else "",
        refusal=str(refusal) if refusal else None,
        finish_reason=str(finish_reason) if finish_reason is not None else None,
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        model=str(response.get("model") or ""),
        cached=cached,
    )


def _count(value: object) -> int:
    """A token count from a server: a non-negative int, 0 for anything odd."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    try:
        return max(0, int(value))
    except (OverflowError, ValueError):  # inf, nan
        return 0


def usable_chat(response: dict[str, Any]) -> bool:
    """True when a chat answer is worth caching: a message with text, and no refusal or filter."""
    try:
        result = chat_result(response)
    except MalformedResponseError:
        return False
    return bool(result.text.strip()) and not result.refused


def usable_images(response: dict[str, Any]) -> bool:
    """True when an images answer holds at least one b64 image."""
    data = response.get("data")
    return isinstance(data, list) and bool(data) and all(isinstance(i, dict) and i.get("b64_json") for i in data)


def json_object_body(http_response: Any, where: str) -> dict[str, Any]:
    """The body of a 2xx answer as a JSON object.

    A proxy or captive portal answers 200 with an HTML page; a broken server with
    a JSON string or list. Each gets one clear message that quotes the start of the
    body (never the key: error bodies pass through :func:`redact` later).

    Raises:
        MalformedResponseError: If the body is not a JSON object.
    """
    content_type = str(http_response.headers.get("content-type", "") or "").split(";")[0].strip() or "none"
    raw: bytes = http_response.content
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        data = None
        text = raw[:_SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
        snippet = " ".join(text.split())[:_SNIPPET_CHARS]
        hint = (
            "; a proxy or captive portal may be answering instead of the model server"
            if "html" in content_type or snippet.lstrip().startswith("<")
            else ""
        )
        raise MalformedResponseError(
            f"{where} answered {http_response.status_code} with a body that is not JSON "
            f"(content-type {content_type}: {snippet!r}){hint}; check setting lmm.base_url"
        ) from None
    if not isinstance(data, dict):
        raise MalformedResponseError(
            f"{where} answered {http_response.status_code} with JSON that is not an object "
            f"({type(data).__name__}); check setting lmm.base_url"
        )
    return data


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asks us to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or body.get("error") or body
        return str(message)[:300]
    if body:
        return str(body)[:300]
    return str(getattr(exc, "message", "") or type(exc).__name__)[:300]


def _sleep(seconds: float, token: CancelToken | None) -> None:
    """Sleep in short slices so a cancel request ends the wait at once."""
    end = time.monotonic() + max(0.0, seconds)
    while True:
        if token is not None:
            token.raise_if_cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.05, left))


class _AttemptTimeout(Exception):
    """One HTTP attempt ran past its total time (internal; becomes an :class:`LmmError`)."""


def _ssl_context() -> Any:
    """The HTTP stack's default TLS context (certifi or the system store, as the openai client uses)."""
    try:
        import httpx2

        return httpx2.create_ssl_context()
    except (ImportError, AttributeError):  # pragma: no cover - older openai on httpx
        import ssl

        return ssl.create_default_context()


def httpx_errors() -> tuple[type[BaseException], ...]:
    """The HTTP stack's own base error, for the catch-all around one attempt."""
    try:
        import httpx2

        return (httpx2.HTTPError, httpx2.InvalidURL)
    except ImportError:  # pragma: no cover - older openai on httpx
        import httpx

        return (httpx.HTTPError, httpx.InvalidURL)


# ----------------------------------------------------------------------------- client

class LmmClient:
    """Calls to one endpoint, with retries, a response cache and secret-free errors.

    Thread-safe: one client may serve every worker of a batch.

    Args:
        endpoint: Where to send requests.
        cache: The response cache; None disables caching.
        backoff_s: First backoff wait; doubled for every further retry.
        backoff_max_s: Longest wait; a server asking for more is reported, not obeyed.
        http_client: Optional ``httpx2.Client`` (proxies, custom TLS).
        refresh: Never serve answers from the cache: ask again, and replace the cached
            answer with the new one (a paid command's ``--refresh``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        cache: ResponseCache | None = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        http_client: Any = None,
        refresh: bool = False,
    ) -> None:
        import openai

        endpoint.check_transport()
        self.endpoint = endpoint
        self.cache = cache
        self.refresh = refresh
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.structured_outputs_ok: bool | None = None  # learned from the first rejection
        self._models: list[Any] | None = None
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        # Without a caller's own HTTP client, each attempt gets a fresh connection pool that the
        # deadline or a cancel can close under a blocked read; a caller's client is shared as is.
        self._own_pools = http_client is None
        self._ssl_context: Any = None
        if http_client is not None:
            kwargs["http_client"] = http_client
        self._openai = openai.OpenAI(
            api_key=endpoint.api_key,
            base_url=endpoint.base_url,
            organization=endpoint.organization or None,
            timeout=endpoint.timeout_s,
            max_retries=0,
            **kwargs,
        )

    @classmethod
    def from_settings(
        cls,
        lmm: LmmSettings,
        *,
        cache: ResponseCache | None | bool = True,
        backoff_s: float = 1.0,
        refresh: bool = False,
    ) -> LmmClient:
        """A client for the configured endpoint, with the default disk cache.

        Args:
            lmm: The endpoint settings.
            cache: True for the default disk cache, False/None for none, or a cache.
            backoff_s: First wait between retries.
            refresh: Ask again instead of serving cached answers (see :class:`LmmClient`).

        Raises:
            NoEndpointError: When neither base URL nor key is configured.
            InsecureEndpointError: For plain http to another host without consent.
        """
        if cache is True:
            cache = ResponseCache()
        elif cache is False:
            cache = None
        return cls(require_endpoint(lmm), cache=cache, backoff_s=backoff_s, refresh=refresh)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._openai.close()

    def __enter__(self) -> LmmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public calls --------------------------------------------------------------------
    def list_models(self, *, token: CancelToken | None = None, refresh: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/models`` as plain dicts (``id``, ``owned_by``, ``created``, ``shutdown_date``...).

        Fetched once per client unless ``refresh``; never cached on disk (it changes).
        """
        with self._lock:
            if self._models is not None and not refresh:
                return list(self._models)

        def send(api: Any) -> list[dict[str, Any]]:
            body = json_object_body(api.models.with_raw_response.list().http_response, self.endpoint.base_url)
            data = body.get("data")
            if not isinstance(data, list):
                raise MalformedResponseError(
                    f"{self.endpoint.base_url} answered /models without a 'data' list; check setting lmm.base_url"
                )
            entries = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]
            if len(entries) < len(data):
                log.warning("%s: ignored %d odd /models entries", self.endpoint.base_url, len(data) - len(entries))
            return entries

        models = self._with_retries(send, setting="lmm.base_url", model="", token=token)
        with self._lock:
            self._models = models
        return list(models)

    def chat(
        self,
        request: dict[str, Any],
        *,
        setting: str = "lmm.vision_model",
        token: CancelToken | None = None,
        refresh: bool = False,
    ) -> ChatResult:
        """``POST /v1/chat/completions`` with the given JSON body (cached when usable).

        Args:
            request: The full request (``model``, ``messages``, optional ``response_format``).
            setting: The setting that chose the model, named in errors about it.
            token: Cancels the request, and waits between retries.
            refresh: Ask the endpoint again even when the cache holds an answer (the new
                answer replaces it).
        """
        response, cached = self._cached_call(
            "chat", request,
            lambda api: json_object_body(
                api.chat.completions.with_raw_response.create(**request).http_response, self.endpoint.base_url
            ),
            setting=setting, token=token, usable=usable_chat, refresh=refresh,
        )
        try:
            return chat_result(response, cached)
        except MalformedResponseError:
            raise MalformedResponseError(f"{self.endpoint.base_url} answered without a chat message") from None

    def chat_structured(
        self,
        request: dict[str, Any],
        schema_name: str,
        schema: dict[str, Any],
        *,
        enabled: bool = True,
        setting: str = "lmm.vision_model",
        token: CancelToken | None = None,
        refresh: bool = False,
    ) -> ChatResult:
        """A chat call asking for JSON through ``response_format: json_schema`` when possible.

        Servers without structured outputs reject ``response_format`` (400/422); then the
        request is sent again without it (the prompt itself asks for JSON, parsed from
        text) and the client remembers not to try again.
        """
        if not enabled or self.structured_outputs_ok is False:
            return self.chat(request, setting=setting, token=token, refresh=refresh)
        structured = dict(request)
        structured["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        try:
            result = self.chat(structured, setting=setting, token=token, refresh=refresh)
        except RequestRejectedError as exc:
            log.info("endpoint rejected structured outputs (%s); falling back to text", exc)
            result = self.chat(request, setting=setting, token=token, refresh=refresh)
            self.structured_outputs_ok = False
            return result
        self.structured_outputs_ok = True
        return result

    def generate_images(
        self,
        request: dict[str, Any],
        *,
        cache_salt: str = "",
        setting: str = "lmm.image_model",
        token: CancelToken | None = None,
        refresh: bool = False,
    ) -> ImagesResult:
        """``POST /v1/images/generations``; images come back as ``b64_json``.

        Args:
            request: ``model``, ``prompt``, ``n``, ``size`` and optional fields.
            cache_salt: Part of the cache key only: asking for *more* images with the same
                prompt needs a new key, a rerun after a crash must hit the old one.
            setting: The setting that chose the model, named in errors about it.
            token: Cancels the request, and waits between retries.
            refresh: Ask again even when the cache holds an answer.
        """
        import base64
        import binascii

        response, cached = self._cached_call(
            f"images{cache_salt}", request,
            lambda api: json_object_body(
                api.images.with_raw_response.generate(**request).http_response, self.endpoint.base_url
            ),
            setting=setting, token=token, usable=usable_images, refresh=refresh,
        )
        data = response.get("data")
        if not isinstance(data, list) or not data:
            raise MalformedResponseError(f"{self.endpoint.base_url} answered without any image data")
        images: list[bytes] = []
        for item in data:
            b64 = item.get("b64_json") if isinstance(item, dict) else None
            if b64 is not None and not isinstance(b64, str):
                raise MalformedResponseError(f"{self.endpoint.base_url} returned an image that is not base64")
            if not b64:
                raise MalformedResponseError(
                    f"{self.endpoint.base_url} returned image URLs instead of b64_json data; "
                    "nmid does not download from URLs: use a server that returns b64_json"
                )
            try:
                images.append(base64.b64decode(b64, validate=True))
            except (binascii.Error, ValueError):
                raise MalformedResponseError(f"{self.endpoint.base_url} returned an image that is not base64") from None
        usage = response.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return ImagesResult(
            images=images,
            tokens_in=_count(usage.get("input_tokens")),
            tokens_out=_count(usage.get("output_tokens")),
            model=str(request.get("model") or ""),
            cached=cached,
        )

    # -- machinery -----------------------------------------------------------------------
    def _cached_call(
        self,
        kind: str,
        request: dict[str, Any],
        send: Callable[[Any], dict[str, Any]],
        *,
        setting: str,
        token: CancelToken | None,
        usable: Callable[[dict[str, Any]], bool],
        refresh: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Serve a usable cached answer, or send the request and cache the answer if usable.

        A refusal, an empty or cut-off answer is returned to the caller but not cached,
        so a rerun asks again; an unusable entry left by an older version is ignored.
        """
        key = request_key(self.endpoint.base_url, kind, request) if self.cache is not None else ""
        if self.cache is not None and not (refresh or self.refresh):
            hit = self.cache.get(key)
            if hit is not None and usable(hit):
                log.debug("cache hit for %s %s", kind, request.get("model"))
                return hit, True
        response = self._with_retries(send, setting=setting, model=str(request.get("model") or ""), token=token)
        if self.cache is not None:
            if usable(response):
                self.cache.put(key, response)
            else:
                self.cache.discard(key)
        return response, False

    def _backoff(self, attempt: int) -> float:
        wait_s = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        return wait_s * (1.0 + 0.1 * random.random())

    def _attempt(self, send: Callable[[Any], Any], budget_s: float, token: CancelToken | None) -> Any:
        """Run one HTTP attempt in a helper thread; give up when ``budget_s`` passes or on cancel.

        The caller's thread waits in short slices. On a deadline or a cancel it closes
        the attempt's own connection pool, which makes the helper's blocked read fail
        (it is abandoned; nothing it returns is used).

        Raises:
            Cancelled: If the token was cancelled during the attempt.
            _AttemptTimeout: If the attempt took longer than ``budget_s``.
        """
        import openai

        api = self._openai
        pool = None
        if self._own_pools:
            # One TLS context for all pools: building one loads the CA bundle (150-200 ms of
            # CPU, holding the GIL), a fresh pool on a shared context takes half a millisecond.
            with self._lock:
                if self._ssl_context is None:
                    self._ssl_context = _ssl_context()
            pool = openai.DefaultHttpxClient(timeout=self._openai.timeout, verify=self._ssl_context)
            api = self._openai.with_options(http_client=pool)
        box: dict[str, Any] = {}
        finished = threading.Event()

        def run() -> None:
            try:
                box["value"] = send(api)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc
            finally:
                finished.set()

        helper = threading.Thread(target=run, name="nmid-http", daemon=True)
        end = time.monotonic() + budget_s
        helper.start()
        try:
            while not finished.wait(min(0.05, max(0.0, end - time.monotonic()))):
                if token is not None and token.cancelled:
                    raise Cancelled()
                if time.monotonic() >= end:
                    raise _AttemptTimeout()
        finally:
            if pool is not None:
                pool.close()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _with_retries(self, send: Callable[[Any], Any], *, setting: str, model: str, token: CancelToken | None) -> Any:
        import openai

        tries = self.endpoint.max_retries + 1
        deadline = time.monotonic() + self.endpoint.deadline_s
        for attempt in range(tries):
            if token is not None:
                token.raise_if_cancelled()
            last = attempt == tries - 1
            failure: LmmError | None = None
            wait_s: float | None = None
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._deadline_error(attempt)
            try:
                log.debug("request to %s (model %s), try %d/%d", self.endpoint.base_url, model or "-", attempt + 1, tries)
                return self._attempt(send, min(self.endpoint.timeout_s, left), token)
            except openai.APIStatusError as exc:
                status = exc.status_code
                code = str(getattr(exc, "code", "") or "")
                retryable = (status in (408, 409, 429) or status >= 500) and code != "insufficient_quota"
                if not retryable or last:
                    failure = self._translate(exc, setting=setting, model=model, tries=attempt + 1)
                else:
                    wait_s = retry_after_s(exc.response.headers)
                    if wait_s is not None and wait_s > self.backoff_max_s:
                        failure = LmmError(
                            f"{self.endpoint.base_url} asks to wait {wait_s:.0f} s before the next request "
                            f"({status}); try again later"
                        )
                    else:
                        wait_s = self._backoff(attempt) if wait_s is None else wait_s
                        log.info("%s answered %d; retrying in %.2f s", self.endpoint.base_url, status, wait_s)
            except (openai.APIConnectionError, _AttemptTimeout) as exc:  # includes APITimeoutError
                if last:
                    failure = self._translate(exc, setting=setting, model=model, tries=attempt + 1)
                else:
                    wait_s = self._backoff(attempt)
                    log.info("%s: %s; retrying in %.2f s", self.endpoint.base_url, type(exc).__name__, wait_s)
            except MalformedResponseError as exc:
                # Not retried: the server may already have charged for the call.
                failure = exc
            except (json.JSONDecodeError, UnicodeDecodeError):
                failure = MalformedResponseError(f"{self.endpoint.base_url} answered with a body that is not JSON")
            except openai.OpenAIError as exc:
                failure = LmmError(f"{self.endpoint.base_url}: {type(exc).__name__}: {_error_detail(exc)}")
            except (httpx_errors() + (OSError, ValueError, TypeError, AttributeError)) as exc:
                # Whatever else the HTTP stack raises (a bad header value, a closed pool) is one clear line.
                failure = EndpointUnreachableError(
                    f"request to {self.endpoint.base_url} failed ({type(exc).__name__}: {str(exc)[:200]})"
                )
            if failure is not None:
                # Raised outside the except clause so the openai exception (whose text may quote a
                # server that echoed our Authorization header) is not even the implicit context.
                raise type(failure)(redact(str(failure), self.endpoint.api_key))
            if wait_s and time.monotonic() + wait_s >= deadline:
                raise self._deadline_error(attempt + 1)
            _sleep(wait_s or 0.0, token)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def _deadline_error(self, tries: int) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"{self.endpoint.base_url} did not give a usable answer within {self.endpoint.deadline_s:g} s "
            f"({tries} {'try' if tries == 1 else 'tries'}; setting lmm.deadline_s)"
        )

    def _translate(self, exc: Exception, *, setting: str, model: str, tries: int) -> LmmError:
        import openai

        where = self.endpoint.base_url
        key = self.endpoint.api_key
        if isinstance(exc, (openai.APITimeoutError, _AttemptTimeout)):
            return LmmError(
                redact(
                    f"{where} did not answer within {self.endpoint.timeout_s:g} s "
                    f"({tries} {'try' if tries == 1 else 'tries'}; setting lmm.timeout_s)",
                    key,
                )
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            reason = f": {cause}" if cause else ""
            return EndpointUnreachableError(
                redact(f"cannot reach {where}{reason} (setting lmm.base_url or OPENAI_BASE_URL)", key)
            )
        if not isinstance(exc, openai.APIStatusError):  # pragma: no cover - callers pass only these
            return LmmError(redact(f"{where}: {exc}", key))
        status = exc.status_code
        detail = _error_detail(exc)
        code = str(getattr(exc, "code", "") or "")
        if status == 401:
            return EndpointAuthError(
                redact(f"{where} refused the API key (401: {detail}); set it with `nmid api-key set` or OPENAI_API_KEY", key)
            )
        if status == 429 and code == "insufficient_quota":
            return EndpointAuthError(redact(f"{where}: the account's quota is used up ({detail})", key))
        if status in (403, 404) and model and (code == "model_not_found" or "model" in detail.lower()):
            return ModelUnavailableError(
                redact(
                    f"setting {setting}: model '{model}' is not available at {where} ({status}: {detail}); "
                    "choose another with `nmid models`",
                    key,
                )
            )
        if status == 403:
            return EndpointAuthError(redact(f"{where} denied access (403: {detail})", key))
        if status in (400, 413, 415, 422):
            return RequestRejectedError(redact(f"{where} rejected the request ({status}: {detail})", key))
        if status == 404:
            return RequestRejectedError(redact(f"{where} has no such API route (404: {detail})", key))
        return LmmError(
            redact(f"{where} failed with {status} after {tries} {'try' if tries == 1 else 'tries'}: {detail}", key)
        )


# ----------------------------------------------------------------------------- batches

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The end of one batch item: its index in the input, and its value or its error."""

    index: int
    value: R | None
    error: BaseException | None


def run_batch(
    items: Sequence[T],
    work: Callable[[T], R],
    *,
    max_workers: int,
    token: CancelToken | None = None,
    admit: Callable[[int], bool] | None = None,
) -> Iterator[Outcome[R]]:
    """Run ``work`` over ``items`` on up to ``max_workers`` threads; yield outcomes as they finish.

    The consumer (the job's own thread) writes results to the store, so the store is
    only ever touched from one thread. At most ``max_workers`` calls are in flight:
    a cancel or a refusal by ``admit`` (the budget guard) stops new submissions at
    once, and the calls already running still finish and are yielded. Closing this
    generator early abandons the running calls; their responses still reach the
    disk cache, so a rerun does not pay for them again.

    Args:
        items: The inputs, in order.
        work: Called in a worker thread with one item.
        max_workers: Concurrency limit (``lmm.max_concurrency``).
        token: Stops new submissions when cancelled.
        admit: Called (in the consumer's thread) before each submission with the
            item's index; returning False stops new submissions.

    Yields:
        One :class:`Outcome` per submitted item, in completion order.
    """
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="nmid-lmm")
    pending: dict[Future[R], int] = {}
    next_index = 0
    stopped = False
    try:
        while True:
            while not stopped and len(pending) < max_workers and next_index < len(items):
                if (token is not None and token.cancelled) or (admit is not None and not admit(next_index)):
                    stopped = True
                    break
                pending[executor.submit(work, items[next_index])] = next_index
                next_index += 1
            if not pending:
                return
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                error = future.exception()
                yield Outcome(index, None if error is not None else future.result(), error)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
