"""Fixtures for the feedback tests: a live server with review settings, reviewer keys and chat replies."""

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import LiveServer, make_key


@pytest.fixture
def server_with(settings, monkeypatch) -> Iterator:
    """Start the app with extra `HITL_*` settings: `server_with(REVIEW_K="2")`."""
    from core.settings import get_settings
    from hitl.app import create_app

    stack = ExitStack()

    def start(**env) -> LiveServer:
        env.setdefault("MAX_TOKENS", "6")
        for name, value in env.items():
            monkeypatch.setenv(f"HITL_{name}", str(value))
        get_settings.cache_clear()
        return stack.enter_context(LiveServer(create_app()))

    with stack:
        yield start


@pytest.fixture
def server(server_with) -> LiveServer:
    return server_with(MAX_TOKENS="6")  # short generated candidates


@pytest.fixture
def clients(server, admin_key, service_key) -> Iterator[dict[str, httpx.Client]]:
    """admin, service and two reviewer clients (r1, r2) against the live server."""
    keys = {"admin": admin_key, "service": service_key, "r1": make_key("reviewer", "r1"),
            "r2": make_key("reviewer", "r2")}
    with ExitStack() as stack:
        yield {name: stack.enter_context(server.client(key)) for name, key in keys.items()}


def chat(client: httpx.Client, text: str, user: str | None = None) -> dict:
    """One chat exchange through the API; returns its `hitl` block (conversation and reply ids)."""
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 3, "temperature": 0}
    if user:
        body["user"] = user
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["hitl"]


def thumbs_down(client: httpx.Client, message_id: str) -> None:
    response = client.post("/v1/feedback", json={"message_id": message_id, "thumbs": "down"})
    assert response.status_code == 201, response.text
