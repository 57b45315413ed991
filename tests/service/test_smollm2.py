"""The real SmolLM2-135M-Instruct behind the API, through the official openai client (slow)."""

import openai
import pytest

from tests.conftest import LiveServer


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_smollm2_answers_through_openai_client(settings, smollm2_dir, monkeypatch, admin_key, service_key):
    from core.settings import get_settings
    from hitl.app import create_app

    monkeypatch.setenv("HITL_BASE_MODEL", str(smollm2_dir))
    monkeypatch.setenv("HITL_TORCH_THREADS", "1")
    get_settings.cache_clear()
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with LiveServer(create_app()) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=service_key, max_retries=0)
        reply = client.chat.completions.create(model="hitl", messages=question, max_tokens=24, temperature=0)
        assert "Paris" in reply.choices[0].message.content
        chunks = list(client.chat.completions.create(model="hitl", messages=question, max_tokens=24,
                                                     temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == reply.choices[0].message.content
        hitl = reply.model_extra["hitl"]
        with server.client(admin_key) as admin:
            stored = admin.get(f"/api/conversations/{hitl['conversation_id']}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["model_version"] == hitl["model_version"] == "base"
    assert stored[1]["content"] == reply.choices[0].message.content and stored[1]["completion_tokens"] > 0
