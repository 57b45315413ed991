"""The OpenAI surface with the real `openai` client: requests that set no sampling use the model's
generation_config; `response_format` (JSON schema), tools, tool turns, logprobs and `n` pass through
`HITL_BACKEND=openai` to the upstream as given; `stream_options.include_usage`; and the fields a backend cannot
honour are a 422 naming them. Against a real vLLM: test_vllm_openai.py."""

import json
from collections.abc import Iterator

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from tests.conftest import LiveServer

CITY = {"city": "Paris", "country": "France"}


class City(BaseModel):
    city: str
    country: str


def recording_upstream(seen: list[dict]) -> FastAPI:
    """An OpenAI-compatible upstream that records every request and streams a reply: JSON matching the schema
    when asked for `response_format`, else a sentence (with usage, as OpenAI streams it)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        seen.append(body)
        text = json.dumps(CITY) if body.get("response_format", {}).get("type") in ("json_schema", "json_object") \
            else "Hello there, traveller."
        pieces = [text[i:i + 7] for i in range(0, len(text), 7)]

        def events() -> Iterator[str]:
            base = {"id": "up-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
            for i, piece in enumerate(pieces):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            usage = {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)}
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def proxied(settings, monkeypatch, service_key) -> Iterator[tuple[openai.OpenAI, list[dict]]]:
    """hitl with HITL_BACKEND=openai in front of the recording upstream; the real openai client against hitl."""
    from core.settings import get_settings
    from hitl.app import create_app

    seen: list[dict] = []
    with LiveServer(recording_upstream(seen)) as upstream:
        for name, value in {"BACKEND": "openai", "REMOTE_BASE_URL": f"{upstream.url}/v1", "REMOTE_MODEL": "up-model"}.items():
            monkeypatch.setenv(f"HITL_{name}", value)
        get_settings.cache_clear()
        with LiveServer(create_app()) as server:
            yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=service_key, max_retries=0), seen, server
    get_settings.cache_clear()


def test_json_schema_through_an_openai_compatible_upstream(proxied, admin_key):
    client, seen, server = proxied
    parsed = client.chat.completions.parse(model="any", response_format=City,
                                           messages=[{"role": "user", "content": "Where is the Louvre?"}])
    assert parsed.choices[0].message.parsed == City(**CITY)  # the client's own JSON-schema example
    sent = seen[-1]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["city", "country"]
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert "temperature" not in sent and "top_p" not in sent  # unset: the upstream applies the model's defaults
    assert sent["model"] == "up-model" and sent["messages"] == [{"role": "user", "content": "Where is the Louvre?"}]

    hitl = parsed.model_extra["hitl"]
    with server.client(admin_key) as api:
        logged = api.get(f"/api/conversations/{hitl['conversation_id']}").json()["messages"]
    assert json.loads(logged[-1]["content"]) == CITY and logged[-1]["model_version"] == "up-model"
    assert logged[-1]["params"]["temperature"] is None  # logged as sent: the upstream's default

    # streamed, with include_usage: the last chunk has no choices and the usage
    chunks = list(client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Again"}], stream=True, temperature=0.3,
        response_format={"type": "json_object"}, stream_options={"include_usage": True}))
    assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)) == CITY
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 11
    assert seen[-1]["temperature"] == 0.3 and seen[-1]["response_format"] == {"type": "json_object"}


def test_the_upstream_gets_the_openai_fields_as_given(proxied):
    """What goes upstream (a real vLLM answers them in test_vllm_openai.py); deprecated `functions` are a 422."""
    client, seen, _ = proxied
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    client.chat.completions.create(model="any", messages=history, tools=[tool], tool_choice="auto",
                                   parallel_tool_calls=False, logprobs=True, top_logprobs=2, n=2)
    sent = seen[-1]
    assert sent["tools"] == [tool] and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2 and sent["n"] == 2
    assert sent["messages"][1] == {"role": "assistant", "content": "", "tool_calls": history[1]["tool_calls"]}
    assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}

    before = len(seen)
    for extra, detail in (({"functions": [tool["function"]]}, "functions: not supported with HITL_BACKEND=openai; "
                                                                 "deprecated by OpenAI: use tools"),
                          ({"top_logprobs": 2}, "top_logprobs needs logprobs: true")):
        with pytest.raises(openai.UnprocessableEntityError) as err:
            client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}], **extra)
        assert detail in str(err.value.body["detail"])
    for bad in ({"role": "tool", "content": "sunny"}, {"role": "user", "content": "x", "tool_call_id": "c"},
                {"role": "assistant", "content": None}, {"role": "user", "content": "x", "tool_calls": []}):
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="any", messages=[bad])
    assert len(seen) == before  # nothing went upstream


def test_the_local_backend_uses_generation_config_and_names_what_it_cannot_do(live_server, service_key, api):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=service_key, max_retries=0)
    ask = {"model": "any", "messages": [{"role": "user", "content": "What is the capital of France?"}],
           "max_tokens": 8}
    first, second = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    # the tiny model's generation_config does not sample (like SmolLM2's): greedy, so the same reply twice
    assert first.choices[0].message.content == second.choices[0].message.content
    logged = api.get(f"/api/conversations/{first.model_extra['hitl']['conversation_id']}").json()["messages"]
    assert logged[-1]["params"]["temperature"] == 0.0 and logged[-1]["params"]["top_p"] == 1.0
    sampled = client.chat.completions.create(**ask, temperature=0.9, seed=1)
    logged = api.get(f"/api/conversations/{sampled.model_extra['hitl']['conversation_id']}").json()["messages"]
    assert logged[-1]["params"]["temperature"] == 0.9

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    for extra, field in (({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
                         ({"tool_choice": "none"}, "tool_choice"),
                         ({"logprobs": True}, "logprobs"), ({"n": 2}, "n"),
                         ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [call]},
                                        {"role": "tool", "tool_call_id": "c1", "content": "1"}]},
                          "messages.tool_calls, messages.tool_call_id")):
        with pytest.raises(openai.UnprocessableEntityError) as err:
            client.chat.completions.create(**{**ask, **extra})
        assert err.value.body["detail"].startswith(f"{field}: not supported with HITL_BACKEND=local")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(**ask, n=9)
    assert err.value.body["detail"][0]["loc"] == ["body", "n"]
    for harmless in ({"logprobs": False}, {"response_format": {"type": "text"}}):  # asks for nothing extra
        assert client.chat.completions.create(**ask, **harmless).choices[0].message.content is not None


def test_generation_defaults_follow_the_checkpoint():
    from transformers import GenerationConfig

    from service.backends.base import generation_defaults

    assert generation_defaults(GenerationConfig()) == {"temperature": 0.0, "top_p": 1.0}
    assert generation_defaults(GenerationConfig(do_sample=True, temperature=0.2, top_p=0.9)) == \
        {"temperature": 0.2, "top_p": 0.9}
    assert generation_defaults(None) == {"temperature": 0.0, "top_p": 1.0}
