"""Concurrent claims never hand one item to two reviewers (overlap 1), on SQLite and PostgreSQL."""

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

from tests.conftest import make_key
from tests.feedback.conftest import chat


def test_concurrent_claims_are_distinct(server, settings, service_key, admin_key):
    with server.client(service_key) as service:
        items = {chat(service, f"question {i}")["message_id"] for i in range(6)}
    keys = [make_key("reviewer") for _ in range(10)]
    barrier = Barrier(len(keys))

    def claim(key):
        with server.client(key) as c:
            barrier.wait()
            response = c.post("/api/review/claim")
            return response.status_code, response.json()["message_id"] if response.status_code == 200 else None

    with ThreadPoolExecutor(len(keys)) as pool:
        results = list(pool.map(claim, keys))
    claimed = [mid for code, mid in results if code == 200]
    assert sorted(code for code, _ in results) == [200] * 6 + [204] * 4
    assert len(claimed) == len(set(claimed)) == 6 and set(claimed) == items
    with server.client(admin_key) as admin:
        assert admin.get("/api/review/stats").json()["queue"]["held"] == 6
        assert len(admin.get("/api/audit", params={"action": "claim.create"}).json()["data"]) == 6


def test_thumbs_down_jumps_the_queue(clients):
    service, r1 = clients["service"], clients["r1"]
    replies = [chat(service, f"q{i}")["message_id"] for i in range(3)]
    clients["service"].post("/v1/feedback", json={"message_id": replies[1], "thumbs": "down"})
    claim = r1.post("/api/review/claim").json()
    assert claim["message_id"] == replies[1] and claim["reason"] == "thumbs_down"


def test_gold_item_is_mixed_in(clients):
    service, r1, admin = clients["service"], clients["r1"], clients["admin"]
    mid = chat(service, "gold question")["message_id"]
    gold = admin.post("/api/review/gold", json={"message_id": mid, "scores": {"correctness": 2}})
    assert gold.status_code == 201 and gold.json()["gold_scores"] == {"correctness": 2}
    assert admin.post("/api/review/gold", json={"message_id": mid, "scores": {"nope": 2}}).status_code == 422
    assert admin.post("/api/review/gold", json={"message_id": "msg_x", "scores": {"tone": 2}}).status_code == 404
    claim = r1.post("/api/review/claim").json()
    assert claim["message_id"] == mid and claim["reason"] == "gold"


def test_interleaved_claims_take_different_items(settings):
    """Claimer A holds its transaction open; claimer B, running meanwhile, must not get A's item
    (PostgreSQL: row lock + SKIP LOCKED; SQLite: B waits for the writer lock, then sees A's claim)."""
    import threading
    import time

    from sqlmodel import Session

    from core.auth import create_user
    from core.db import get_engine, session_scope
    from core.models import Role
    from feedback import service
    from service.models import Conversation, Message

    with session_scope() as s:
        reviewers = [create_user(s, name=f"r{i}", role=Role.reviewer)[0] for i in range(2)]
        s.add(Conversation(id="conv_race"))
        s.flush()
        for i in range(2):
            s.add(Message(id=f"msg_race{i}", conversation_id="conv_race", position=i, role="assistant",
                          content=f"reply {i}", mean_logprob=-5.0 + i))
        s.flush()
        service.sync_queue(s, settings)  # queued beforehand: the claims themselves must not race
    a_session = Session(get_engine(), expire_on_commit=False)
    a_claim = service.claim(a_session, reviewers[0], settings)
    result = {}

    def claim_b():
        with session_scope() as b_session:
            result["b"] = service.claim(b_session, reviewers[1], settings).message_id

    thread = threading.Thread(target=claim_b)
    thread.start()
    time.sleep(0.5)  # B runs (PostgreSQL) or waits for the lock (SQLite) while A is uncommitted
    a_session.commit()
    a_session.close()
    thread.join(30)
    assert a_claim.message_id == "msg_race0"  # least confident first
    assert result["b"] == "msg_race1"


def test_client_written_assistant_turns_are_not_model_output(server_with, admin_key, service_key):
    server = server_with(REVIEW_CALIBRATION_RATE="1")  # every served reply is queued
    with server.client(service_key) as service, server.client(admin_key) as admin, \
            server.client(make_key("reviewer")) as r1:
        history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "written by the client"},
                   {"role": "user", "content": "q2"}]
        hitl = service.post("/v1/chat/completions", json={"messages": history, "max_tokens": 2}).json()["hitl"]
        messages = admin.get(f"/api/conversations/{hitl['conversation_id']}").json()["messages"]
        assert [m["from_client"] for m in messages] == [True, True, True, False]
        assert service.post("/v1/feedback", json={"message_id": messages[1]["id"], "thumbs": "up"}).status_code == 422
        assert r1.post("/api/review/claim").json()["message_id"] == hitl["message_id"]
        assert r1.post(f"/api/review/items/{hitl['message_id']}/submit").status_code == 200
        assert r1.post("/api/review/claim").status_code == 204
