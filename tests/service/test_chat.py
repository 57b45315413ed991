"""The chat API through the official openai client against a real server."""

import openai
import pytest


@pytest.fixture
def client(live_server, service_key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=service_key, max_retries=0)


def test_completion_is_logged_with_version(client, api):
    reply = client.chat.completions.create(
        model="hitl", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0,
    )
    hitl = reply.model_extra["hitl"]
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage.completion_tokens <= 8
    conversation = api.get(f"/api/conversations/{hitl['conversation_id']}").json()
    roles = [m["role"] for m in conversation["messages"]]
    assert roles == ["user", "assistant"]
    answer = conversation["messages"][1]
    assert answer["id"] == hitl["message_id"]
    assert answer["model_version"] == hitl["model_version"] == "base"
    assert answer["content"] == reply.choices[0].message.content
    assert answer["latency_ms"] > 0 and answer["prompt_tokens"] == reply.usage.prompt_tokens
    assert answer["params"]["temperature"] == 0


def test_streaming_first_chunk_carries_hitl(client, api):
    chunks = list(client.chat.completions.create(
        model="hitl", messages=[{"role": "user", "content": "Hello!"}], max_tokens=6, temperature=0, stream=True,
    ))
    hitl = chunks[0].model_extra["hitl"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    stored = api.get(f"/api/conversations/{hitl['conversation_id']}").json()["messages"][-1]
    assert stored["id"] == hitl["message_id"] and stored["content"] == text


def test_greedy_stream_matches_non_stream(client):
    messages = [{"role": "user", "content": "The quick brown fox"}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0)
    parts = client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == whole.choices[0].message.content


def test_seed_makes_sampling_repeatable(client):
    kwargs = dict(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=1.0, seed=7)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


def test_conversation_continues(client, api):
    first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    conversation_id = first.model_extra["hitl"]["conversation_id"]
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first.choices[0].message.content},
               {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="m", messages=history, max_tokens=4,
                                            extra_body={"conversation_id": conversation_id})
    assert second.model_extra["hitl"]["conversation_id"] == conversation_id
    messages = api.get(f"/api/conversations/{conversation_id}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["position"] for m in messages] == [0, 1, 2, 3]


def test_unknown_conversation_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"conversation_id": "conv_missing"})


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000},
    {"messages": [{"role": "user", "content": "x"}], "temperature": 9},
    {"messages": [{"role": "user", "content": "x"}], "n": 3},
    {"messages": "not a list"},
])
def test_bad_requests_are_4xx(live_server, service_key, body):
    with live_server.client(service_key) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert 400 <= response.status_code < 500 and "detail" in response.json()


def test_auth_required_and_roles_enforced(live_server, service_key):
    with live_server.client() as anonymous:
        assert anonymous.get("/v1/models").status_code == 401
    with live_server.client("wrong") as wrong:
        assert wrong.get("/v1/models").status_code == 401
    with live_server.client(service_key) as service:
        assert service.get("/api/conversations/conv_x").status_code == 403


def test_models_and_ops(client, api):
    assert [m.id for m in client.models.list()] == ["base"]
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["checks"] == {"database": True, "model": True}
    assert "hitl_chat_requests_total" in api.get("/metrics").text
