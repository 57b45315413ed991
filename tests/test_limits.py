"""Limits over real HTTP: body size before parsing and authentication (413), a body too slow to arrive
(408), messages, parts and characters per chat request (422), per-key rate limits and a bounded model queue
(429 / 503 with Retry-After); slow and excess connections (closed, 503); no database connection held while
the model works."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import BACKENDS, LiveServer

HI = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


@pytest.fixture
def server_with(settings, monkeypatch) -> Iterator:
    """Start the app with extra `HITL_*` settings: `server_with(MAX_BODY_BYTES="1000")`."""
    from core.settings import get_settings
    from hitl.app import create_app

    with ExitStack() as stack:
        def start(**env) -> LiveServer:
            for name, value in env.items():
                monkeypatch.setenv(f"HITL_{name}", str(value))
            get_settings.cache_clear()
            return stack.enter_context(LiveServer(create_app()))

        yield start


def raw(server: LiveServer, head: str, body: bytes) -> tuple[str, float]:
    """Send a request by hand (a body shorter than its Content-Length); the status line and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        answer = s.recv(65536).decode(errors="replace")
    return answer.split("\r\n", 1)[0], time.monotonic() - started


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_body_size_is_checked_before_parsing_and_auth(server_with):
    server = server_with(MAX_BODY_BYTES="10000", BODY_TIMEOUT_S="1")
    declared = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {90 * 2**20}\r\n")
    status, took = raw(server, declared, b"{" * 1000)  # no key, and 90 MB announced: refused at once
    assert " 413 " in status and took < 5

    def chunks():
        for _ in range(20):
            yield b" " * 1000

    with server.client() as anonymous:  # chunked: no Content-Length, the streamed bytes are counted
        response = anonymous.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "10000 bytes" in response.json()["detail"]
        assert response.headers["x-frame-options"] == "DENY"
        assert anonymous.post("/v1/chat/completions", json=HI).status_code == 401  # small bodies reach auth

    slow = "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n"
    status, took = raw(server, slow, b'{"message_id"')  # the rest never comes
    assert " 408 " in status and took < 5


def test_chat_request_limits(server_with, service_key):
    server = server_with(MAX_MESSAGES="4", MAX_PARTS="6", MAX_REQUEST_CHARS="100")
    cases = {
        "messages": [{"role": "user", "content": "a"}] * 5,
        "content parts": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 7}],
        "characters": [{"role": "user", "content": "a" * 60}, {"role": "user", "content": "b" * 60}],
    }
    with server.client(service_key) as http:
        for what, messages in cases.items():
            response = http.post("/v1/chat/completions", json={**HI, "messages": messages})
            assert response.status_code == 422 and what in response.json()["detail"], response.text
        assert http.post("/v1/chat/completions", json=HI).status_code == 200


def test_rate_limit_per_key(server_with, service_key, admin_key):
    server = server_with(RATE_LIMIT_PER_S="1", RATE_LIMIT_BURST="10")
    with server.client(service_key) as busy, server.client(admin_key) as other:
        codes = [busy.get("/v1/models") for _ in range(30)]
        limited = [r for r in codes if r.status_code == 429]
        assert len(limited) >= 10 and [r.status_code for r in codes[:10]] == [200] * 10
        assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
        assert other.get("/v1/models").status_code == 200  # another key has its own budget
        assert all(busy.get("/healthz").status_code == 200 for _ in range(20))  # probes are not limited
        time.sleep(1.2)  # the bucket refills
        assert busy.get("/v1/models").status_code == 200


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_full_model_queue_is_503_with_retry_after(server_with, service_key):
    server = server_with(MAX_QUEUED_REQUESTS="2", MAX_BATCH_SIZE="1")

    def chat(i):
        with server.client(service_key) as http:
            return http.post("/v1/chat/completions", json={**HI, "max_tokens": 200, "temperature": 0,
                                                           "stream": i % 2 == 1})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(chat, range(16)))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503} and codes.count(200) >= 3, codes
    busy = [r for r in responses if r.status_code == 503]
    assert all(r.headers["Retry-After"] == "1" and "waiting for the model" in r.json()["detail"] for r in busy)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes `sock` within `timeout` seconds (reading whatever it sent before)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_slow_and_excess_connections_are_bounded(settings, monkeypatch):
    """200 slowloris connections (a request head never finished) against `hitl serve`'s server options with
    HITL_MAX_CONNECTIONS=50: a request on a connection beyond 50 is a 503 with Retry-After, every slow one is
    closed after HITL_HEADER_TIMEOUT_S, then the server answers again; an idle keep-alive connection is closed
    after HITL_KEEP_ALIVE_S."""
    from core.limits import server_options
    from core.settings import get_settings
    from hitl.app import create_app

    for name, value in {"MAX_CONNECTIONS": "50", "HEADER_TIMEOUT_S": "1.5", "KEEP_ALIVE_S": "1"}.items():
        monkeypatch.setenv(f"HITL_{name}", value)
    get_settings.cache_clear()
    with LiveServer(create_app(), **server_options(get_settings())) as server:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
        opened = time.monotonic()
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        with httpx.Client(base_url=server.url, timeout=10) as http:
            refused = http.get("/healthz")
        closed = [closed_by_server(sock, 10) for sock in slow]
        all_closed_after = time.monotonic() - opened
        with httpx.Client(base_url=server.url, timeout=10) as http:
            again = http.get("/healthz")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.recv(65536).startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            idle_closed = closed_by_server(idle, 10)
            idle_after = time.monotonic() - answered
    for sock in slow:
        sock.close()
    print(f"FIGURE slow clients: a request beyond 50 open connections: {refused.status_code}; {sum(closed)} of "
          f"{len(slow)} slowloris connections closed by the server, the last {all_closed_after:.1f} s after they "
          f"opened; then {again.status_code}; idle keep-alive closed after {idle_after:.1f} s")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1" and "connections" in refused.text
    assert all(closed) and all_closed_after < 8
    assert again.status_code == 200
    assert idle_closed and 0.5 < idle_after < 5


@pytest.mark.parametrize("settings", BACKENDS, indirect=True)
def test_no_database_connection_is_held_while_the_model_works(settings, service_key):
    """40 chats (half streamed) all held inside the model at once, more than either database's pool: none
    holds a connection meanwhile, and all are stored once the model answers."""
    from core.db import get_engine
    from hitl.app import create_app
    from service.backends.base import Backend, Generation, Started

    inside, release = [], threading.Event()

    class Held(Backend):
        version = "held"

        async def stream(self, messages, params):
            yield Started(model_version=self.version, prompt_tokens=1)
            inside.append(1)
            while not release.is_set():
                await asyncio.sleep(0.01)
            yield "ok"
            yield Generation(text="ok", model_version=self.version, prompt_tokens=1, completion_tokens=1,
                             finish_reason="stop")

        async def swap(self, *args, **kwargs) -> None:
            pass

    n, pool = 40, get_engine().pool

    def chat(i):
        with server.client(service_key) as http:
            if i % 2:
                with http.stream("POST", "/v1/chat/completions", json={**HI, "stream": True}) as response:
                    return response.status_code, "".join(response.iter_lines())
            response = http.post("/v1/chat/completions", json=HI)
            return response.status_code, response.text

    with LiveServer(create_app(backend=Held())) as server, ThreadPoolExecutor(n) as threads:
        futures = [threads.submit(chat, i) for i in range(n)]
        deadline = time.monotonic() + 60
        while len(inside) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        held = pool.checkedout()
        reached = len(inside)
        release.set()
        results = [f.result() for f in futures]
    print(f"FIGURE model work: {reached} of {n} chats inside the model at once, {held} database connections "
          f"checked out meanwhile")
    assert reached == n and held == 0
    assert [code for code, _ in results] == [200] * n and all("error" not in text for _, text in results)
