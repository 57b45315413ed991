"""Limits over real HTTP: body size before parsing and authentication (413), a body too slow to arrive
(408), messages, parts and characters per chat request (422), per-key rate limits and a bounded model queue
(429 / 503 with Retry-After)."""

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from tests.conftest import LiveServer

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
