"""Request limits applied before any parsing or authentication: body size (413), body read time (408), a
per-key rate (429 with Retry-After) and JSON values no route can hold (422); a per-key cap on concurrent
expensive work (429 with Retry-After); and, below the app, the server's bounds on connections: how many stay
open, how long one may take to send a request head, how long one may idle (`server_options`)."""

import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException, status

from core.settings import Settings, get_settings

UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics")  # probes and scrapers are never rate limited
IMPORT_PATHS = ("/api/import",)  # bodies bounded by `max_import_bytes` instead of `max_body_bytes`
# what any JSON body that holds NaN, Infinity, a lone surrogate (escaped, or raw bytes that json.loads lets pass)
# or a number beyond 64 bits contains
SUSPECT = re.compile(rb"NaN|Infinity|\\u|\xed|\d{19}|[eE][+-]?\d{3}")


class BodyTooLarge(Exception):
    pass


class TokenBuckets:
    """One token bucket per caller: `rate` tokens a second up to `burst`; forgets full buckets as it grows."""

    def __init__(self):
        self.buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self.lock = threading.Lock()

    def take(self, caller: str, rate: float, burst: int) -> float:
        """0 when the request may pass, else the seconds until it may."""
        now = time.monotonic()
        with self.lock:
            tokens, at = self.buckets.get(caller, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < 1:
                self.buckets[caller] = (tokens, now)
                return (1 - tokens) / rate
            self.buckets[caller] = (tokens - 1, now)
            if len(self.buckets) > 10_000:
                self.buckets = {c: (t, a) for c, (t, a) in self.buckets.items() if t + (now - a) * rate < burst}
            return 0.0


class Limits:
    """Plain ASGI middleware: the limits every request meets before the app reads its body or its key."""

    def __init__(self, app):
        self.app = app
        self.rates = TokenBuckets()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = get_settings()
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        largest = settings.max_import_bytes if scope["path"] in IMPORT_PATHS else settings.max_body_bytes
        if length is not None and (not length.isdigit() or int(length) > largest):
            return await _answer(send, status.HTTP_413_CONTENT_TOO_LARGE, f"the request body exceeds {largest} bytes")
        if settings.rate_limit_per_s and not scope["path"].startswith(UNLIMITED_PATHS):
            wait = self.rates.take(_caller(scope, headers), settings.rate_limit_per_s, settings.rate_limit_burst)
            if wait:
                return await _answer(send, status.HTTP_429_TOO_MANY_REQUESTS, "too many requests; retry later",
                                     math.ceil(wait))
        if length is not None or b"transfer-encoding" in headers:
            try:
                body = await asyncio.wait_for(_read_body(receive, largest), settings.body_timeout_s)
            except BodyTooLarge:
                return await _answer(send, status.HTTP_413_CONTENT_TOO_LARGE, f"the request body exceeds {largest} bytes")
            except TimeoutError:
                return await _answer(send, status.HTTP_408_REQUEST_TIMEOUT,
                                     f"the request body was not received within {settings.body_timeout_s:g} s")
            if (b"json" in headers.get(b"content-type", b"") and scope["path"] not in IMPORT_PATHS  # checked per line
                    and (problem := json_problem(body))):
                return await _answer(send, status.HTTP_422_UNPROCESSABLE_CONTENT, f"the JSON body holds {problem}")
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


def json_problem(body: bytes) -> str | None:
    """What no route could store or answer (NaN or Infinity, a lone surrogate, an integer beyond 64 bits) and
    where, or None; invalid JSON is left to the app's own 4xx."""
    if not SUSPECT.search(body):
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    try:
        return _unrepresentable(value, "body")
    except RecursionError:
        return "values nested too deeply"


def _unrepresentable(value, at: str) -> str | None:
    if isinstance(value, str):
        return None if _utf8(value) else f"text that is not valid UTF-8 (a lone surrogate) at {at}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} at {at}, which is not a JSON number"
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return f"an integer beyond 64 bits at {at}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not _utf8(key):
            return f"a key that is not valid UTF-8 (a lone surrogate) in {at}"
        if problem := _unrepresentable(item, f"{at}.{key}" if isinstance(key, str) else f"{at}[{key}]"):
            return problem
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def _caller(scope, headers: dict[bytes, bytes]) -> str:
    """The API key, else the web session cookie, else the client's address."""
    credential = headers.get(b"authorization") or _session_cookie(headers.get(b"cookie", b""))
    if credential:
        return hashlib.sha256(credential).hexdigest()
    return "anonymous:" + (scope.get("client") or ("", 0))[0]


def _session_cookie(cookie: bytes) -> bytes | None:
    for part in cookie.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == b"hitl_session":
            return value
    return None


async def _read_body(receive, limit: int) -> bytes:
    """The whole body, counting streamed bytes (chunked bodies declare no length)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()  # what follows the body, e.g. the client disconnecting
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer(send, code: int, detail: str, retry_after: int | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


class Concurrency:
    """At most `limit` calls in flight per key; one more is a 429 with Retry-After."""

    def __init__(self, what: str, retry_after_s: int = 5):
        self.what, self.retry_after_s = what, retry_after_s
        self.running: dict[object, int] = {}
        self.lock = threading.Lock()

    @contextmanager
    def slot(self, key: object, limit: int) -> Iterator[None]:
        with self.lock:
            if self.running.get(key, 0) >= limit:
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                    f"at most {limit} {self.what} at once; retry later",
                                    {"Retry-After": str(self.retry_after_s)})
            self.running[key] = self.running.get(key, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                self.running[key] -= 1
                if not self.running[key]:
                    del self.running[key]


# ---------------------------------------------------------------------------------------------- connections


async def _too_many_connections(_scope, _receive, send) -> None:
    await send({"type": "http.response.start", "status": status.HTTP_503_SERVICE_UNAVAILABLE, "headers": [
        (b"content-type", b"application/json"), (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b'{"detail":"too many open connections; retry later"}'})


def server_options(settings: Settings) -> dict:
    """uvicorn options of `hitl serve`: its HTTP protocol bounded against slow and excess clients (a connection
    beyond `max_connections` gets a 503 with Retry-After and is closed; one that has not sent a whole request
    head within `header_timeout_s` of opening, or of its previous response, is closed: slow bodies are the
    `Limits` middleware's 408) and the keep-alive idle time."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Bounded(HttpToolsProtocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > settings.max_connections:
                self.app = _too_many_connections  # this connection's requests only
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.deadline = self.loop.call_later(settings.header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _expire(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return {"http": Bounded, "timeout_keep_alive": settings.keep_alive_s}
