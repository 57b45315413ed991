"""Canary routing over HTTP: a share of new conversations goes to the challenger, conversations stick."""

import time

import openai
import pytest

from service.models import ModelAlias, ModelVersion, VersionStatus
from tests.conftest import LiveServer


@pytest.fixture
def canary_server(settings, monkeypatch):
    from core.settings import get_settings
    from hitl.app import create_app

    monkeypatch.setenv("HITL_CANARY_SHARE", "1.0")  # every new conversation, so the test is exact
    get_settings.cache_clear()
    with LiveServer(create_app()) as server:
        yield server


def set_challenger(version: str | None, base_path: str | None = None) -> None:
    from core.db import session_scope

    with session_scope() as s:
        if version and s.get(ModelVersion, version) is None:
            s.add(ModelVersion(version=version, base_path=base_path, status=VersionStatus.candidate))
            s.flush()
        alias = s.get(ModelAlias, "challenger")
        if version is None:
            if alias:
                s.delete(alias)
        elif alias:
            alias.version = version
        else:
            s.add(ModelAlias(alias="challenger", version=version))


def move_champion(version: str) -> None:
    from core.db import session_scope

    with session_scope() as s:
        s.get(ModelAlias, "champion").version = version


def wait_until_serving(api, expected: list[str], timeout: float = 60) -> None:
    """The server follows the aliases every 2 s; /readyz lists the versions loaded and served."""
    deadline = time.monotonic() + timeout
    while api.get("/readyz").json()["serving"] != expected:
        assert time.monotonic() < deadline, f"served versions never became {expected}"
        time.sleep(0.3)


def ask(client, text, conversation_id=None, messages=None):
    extra = {"conversation_id": conversation_id} if conversation_id else {}
    reply = client.chat.completions.create(model="m", messages=messages or [{"role": "user", "content": text}],
                                           max_tokens=4, extra_body=extra)
    return reply.model_extra["hitl"], reply.choices[0].message.content


def test_canary_routes_new_conversations_and_sticks(canary_server, service_key, tiny_model_dir, api):
    client = openai.OpenAI(base_url=f"{canary_server.url}/v1", api_key=service_key, max_retries=0)
    old, old_reply = ask(client, "Hi")
    assert old["model_version"] == "base"  # no challenger yet: the champion answers

    set_challenger("v2", str(tiny_model_dir))
    wait_until_serving(api, ["base", "v2"])
    assert {m.id for m in client.models.list()} == {"base", "v2"}
    new, new_reply = ask(client, "Hello")
    assert new["model_version"] == "v2"
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": old_reply},
               {"role": "user", "content": "More?"}]
    assert ask(client, "", old["conversation_id"], history)[0]["model_version"] == "base"  # sticks
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": new_reply},
               {"role": "user", "content": "More?"}]
    assert ask(client, "", new["conversation_id"], history)[0]["model_version"] == "v2"

    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=3,
                                            stream=True)
    assert [c.model_extra.get("hitl") for c in stream][0]["model_version"] == "v2"

    logged = api.get(f"/api/conversations/{new['conversation_id']}").json()["messages"]
    assert [m["model_version"] for m in logged] == [None, "v2", None, "v2"]
    logged = api.get(f"/api/conversations/{old['conversation_id']}").json()["messages"]
    assert [m["model_version"] for m in logged] == [None, "base", None, "base"]

    set_challenger(None)  # canary over: everything goes back to the champion
    wait_until_serving(api, ["base"])
    history[-1]["content"] = "And now?"
    assert ask(client, "", new["conversation_id"], history)[0]["model_version"] == "base"
    assert ask(client, "Hey")[0]["model_version"] == "base"

    move_champion("v2")  # promotion elsewhere: the server hot-swaps to it
    wait_until_serving(api, ["v2"])
    assert ask(client, "Hey")[0]["model_version"] == "v2"
