"""200 concurrent chats while a promotion happens (fault suite): none fails, and every reply (and its log row)
names the version that wrote it: its text is that version's greedy reply (the live server follows the `champion`
alias and hot-swaps in the background)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlmodel import col, select

from core.db import session_scope
from service.models import Message
from tests.evaluators.conftest import register
from tests.evaluators.test_gates import wait_for_version

N = 200
# Requests in flight at once: all of them (auth releases its DB connection before the model generates).
IN_FLIGHT = 200
PROMPTS = ["Hello!", "What is the capital of France?", "Tell me a joke.", "How do I bake bread?"]


@pytest.mark.fault
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_200_concurrent_chats_during_promotion(live_server, api, service_key, settings, tiny_model_dir, good_adapter):
    with session_scope() as s:
        register(s, "hot-1", good_adapter, tiny_model_dir)
    gates = [threading.Event() for _ in range(N)]
    done, lock = [0], threading.Lock()

    def chat(http: httpx.Client, i: int, wait: bool = True) -> tuple[int, dict]:
        if wait:
            gates[i].wait(180)
        response = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": 6, "temperature": 0})
        with lock:
            done[0] += 1
        return response.status_code, response.json()

    def replies(http: httpx.Client) -> list[str]:
        """Each prompt's greedy reply from the version served now, one request at a time."""
        return [chat(http, i, wait=False)[1]["choices"][0]["message"]["content"] for i in range(len(PROMPTS))]

    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    with live_server.client(service_key, limits=limits) as http, ThreadPoolExecutor(IN_FLIGHT) as pool:
        reference = {"base": replies(http)}
        done[0] = 0
        futures = [pool.submit(chat, http, i) for i in range(N)]
        for gate in gates[:100]:
            gate.set()
        while done[0] < 20:
            time.sleep(0.01)
        promoted = api.post("/api/models/hot-1/promote", json={"reason": "hot swap under load"})
        assert promoted.status_code == 200
        for gate in gates[100:180]:  # keep traffic flowing while serving loads and switches
            gate.set()
            time.sleep(0.02)
        wait_for_version(api, "hot-1")
        for gate in gates[180:]:
            gate.set()
        results = [f.result() for f in futures]
        reference["hot-1"] = replies(http)

    stamps = [body.get("hitl", {}).get("model_version") for _, body in results]
    # a reply's text is the greedy reply of the version it names (the two versions answer these prompts apart)
    wrong = [i for i, (_, body) in enumerate(results) if body.get("hitl") and body["choices"][0]["message"]["content"]
             != reference[body["hitl"]["model_version"]][i % len(PROMPTS)]]
    print(f"FIGURE promotion under {N} concurrent chats: {sum(code != 200 for code, _ in results)} failed, "
          f"{stamps.count('base')} answered by base and {stamps.count('hot-1')} by hot-1, {len(wrong)} stamped with "
          f"the wrong version")
    assert reference["base"] != reference["hot-1"]
    assert wrong == []
    assert [code for code, _ in results] == [200] * N
    answered = {body["hitl"]["message_id"]: body["hitl"]["model_version"] for _, body in results}
    assert len(answered) == N
    assert set(answered.values()) == {"base", "hot-1"}  # the swap happened inside the burst
    assert all(body["model"] == body["hitl"]["model_version"] for _, body in results)
    assert [body["hitl"]["model_version"] for _, body in results[180:]] == ["hot-1"] * 20
    with session_scope() as s:
        logged = {m.id: m.model_version for m in s.exec(select(Message).where(col(Message.id).in_(list(answered))))}
    assert logged == answered
