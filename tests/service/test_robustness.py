"""Failure paths over real HTTP: client disconnects, backend faults, oversized prompts, a remote upstream."""

import asyncio
import json
import time

import openai
import pytest

from service.backends import Backend, BackendError, BadRequest, Delta, Generation, SamplingParams, Started, Unavailable
from service.backends.remote import RemoteBackend
from tests.conftest import LiveServer

HI = [{"role": "user", "content": "Hi"}]


def wait_for_message(api, conversation_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/api/conversations/{conversation_id}")
        if response.status_code == 200 and len(response.json()["messages"]) == 2:
            return response.json()["messages"][1]
        assert time.monotonic() < deadline, "the partial reply was never logged"
        time.sleep(0.2)


def test_client_disconnect_keeps_partial_reply(live_server, service_key, api):
    body = {"messages": HI, "max_tokens": 900, "temperature": 0, "stream": True}
    with live_server.client(service_key) as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        for _ in range(3):  # a few deltas, then hang up
            next(lines)
    hitl = first["hitl"]
    logged = wait_for_message(api, hitl["conversation_id"])
    assert logged["id"] == hitl["message_id"] and logged["finish_reason"] == "cancelled"
    assert 0 < logged["completion_tokens"] < 900 and logged["model_version"] == "base"
    # the decoder is still healthy
    with live_server.client(service_key) as http:
        reply = http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 3})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3


def test_prompt_longer_than_context_is_422(live_server, service_key, api):
    with live_server.client(service_key) as http:
        for stream in (False, True):
            body = {"messages": [{"role": "user", "content": "hello " * 3000}], "stream": stream}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 422 and "context window" in response.json()["detail"]


class FaultyBackend(Backend):
    """Raises `error` before the first event, or after one delta when `mid_stream`."""

    def __init__(self, error: Exception, mid_stream: bool = False):
        self.error, self.mid_stream = error, mid_stream

    version = "faulty"

    async def stream(self, messages, params):
        if self.mid_stream:
            yield Started("faulty", 3)
            yield "Hel"
        raise self.error

    async def swap(self, base_path, version, adapter_path=None):
        pass


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the database plays no part here
@pytest.mark.parametrize(("error", "code"), [
    (RuntimeError("CUDA out of memory"), 500), (BadRequest("prompt too long"), 422), (Unavailable("loading"), 503),
])
def test_backend_errors_are_json(settings, service_key, error, code):
    from hitl.app import create_app

    with LiveServer(create_app(backend=FaultyBackend(error))) as server, \
            server.client(service_key) as http:
        for stream in (False, True):
            response = http.post("/v1/chat/completions", json={"messages": HI, "stream": stream})
            assert response.status_code == code and response.json()["detail"]
            assert "CUDA" not in response.json()["detail"]  # internals stay in the server log


def test_error_mid_stream_ends_with_error_event_and_is_logged(settings, service_key, admin_key):
    from hitl.app import create_app

    with LiveServer(create_app(backend=FaultyBackend(RuntimeError("boom"), mid_stream=True))) as server, \
            server.client(service_key) as http, server.client(admin_key) as api:
        response = http.post("/v1/chat/completions", json={"messages": HI, "stream": True})
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == 500
        logged = wait_for_message(api, events[0]["hitl"]["conversation_id"])
        assert logged["finish_reason"] == "error" and logged["content"] == "Hel"


def test_remote_backend_against_our_own_server(live_server, service_key, monkeypatch, api):
    """A live hitl server with the tiny model is the OpenAI-compatible upstream."""
    upstream = f"{live_server.url}/v1"
    params = SamplingParams(temperature=0, max_tokens=8)

    async def main():
        backend = RemoteBackend(upstream, "base", api_key=service_key)
        try:
            whole = await backend.complete(HI, params)
            events = [e async for e in backend.stream(HI, params)]
            errors = []
            for remote, messages in [
                (backend, [{"role": "user", "content": "hello " * 3000}]),
                (RemoteBackend(upstream, "base", api_key="wrong"), HI),
                (RemoteBackend("http://127.0.0.1:9/v1", "base"), HI),
            ]:
                with pytest.raises(BackendError) as caught:
                    await remote.complete(messages, params)
                errors.append(caught.value)
            return whole, events, errors
        finally:
            await backend.close()

    whole, events, (too_long, bad_key, unreachable) = asyncio.run(main())
    assert whole.model_version == "base" and whole.prompt_tokens > 0 and 0 < whole.completion_tokens <= 8
    assert isinstance(events[0], Started) and isinstance(events[-1], Generation)
    streamed = "".join(e.delta.get("content", "") for e in events if isinstance(e, Delta))  # the upstream's deltas
    assert streamed == events[-1].text == whole.text
    assert isinstance(too_long, BadRequest) and too_long.status_code == 422
    assert bad_key.status_code == 502 and isinstance(unreachable, Unavailable)

    # and a whole hitl app serving from that upstream
    from core.settings import get_settings
    from hitl.app import create_app

    for name, value in {"BACKEND": "openai", "REMOTE_BASE_URL": upstream, "REMOTE_API_KEY": service_key,
                        "REMOTE_MODEL": "base"}.items():
        monkeypatch.setenv(f"HITL_{name}", value)
    get_settings.cache_clear()
    with LiveServer(create_app()) as front:
        client = openai.OpenAI(base_url=f"{front.url}/v1", api_key=service_key, max_retries=0)
        reply = client.chat.completions.create(model="m", messages=HI, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content == whole.text and reply.model_extra["hitl"]["model_version"] == "base"
        logged = api.get(f"/api/conversations/{reply.model_extra['hitl']['conversation_id']}").json()["messages"]
        assert logged[-1]["content"] == whole.text and logged[-1]["model_version"] == "base"


class NulBackend(FaultyBackend):
    """Replies with a NUL character, which PostgreSQL text columns refuse."""

    def __init__(self):
        pass

    async def stream(self, messages, params):
        yield Started("faulty", 3)
        yield "a\x00b"
        yield Generation(text="a\x00b", model_version="faulty", prompt_tokens=3, completion_tokens=2,
                         finish_reason="stop")


def test_nul_characters_are_stored(settings, service_key, admin_key):
    from hitl.app import create_app

    with LiveServer(create_app(backend=NulBackend())) as server, \
            server.client(service_key) as http, server.client(admin_key) as api:
        for stream in (False, True):
            response = http.post("/v1/chat/completions",
                                 json={"messages": [{"role": "user", "content": "x\u0000y"}], "stream": stream})
            assert response.status_code == 200
            first = response.json() if not stream else json.loads(response.text.split("data: ", 2)[1])
            logged = api.get(f"/api/conversations/{first['hitl']['conversation_id']}").json()["messages"]
            assert [m["content"] for m in logged] == ["x\ufffdy", "a\ufffdb"]
