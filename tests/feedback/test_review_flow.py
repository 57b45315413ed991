"""The reviewer workflow end to end through the HTTP API."""

from tests.feedback.conftest import chat, thumbs_down


def test_two_reviewers_claim_rate_correct_compare(clients):
    admin, service, r1, r2 = clients["admin"], clients["service"], clients["r1"], clients["r2"]
    replies = [chat(service, f"question {i}") for i in range(3)]
    thumbs_down(service, replies[2]["message_id"])

    first, second = r1.post("/api/review/claim"), r2.post("/api/review/claim")
    assert first.status_code == second.status_code == 200
    a, b = first.json(), second.json()
    assert a["message_id"] != b["message_id"]  # overlap 1: never the same item
    assert a["message_id"] == replies[2]["message_id"] and a["reason"] == "thumbs_down"  # thumbs-down first
    assert a["conversation"][-1]["id"] == a["message_id"] and a["conversation"][-1]["role"] == "assistant"
    assert a["rubric"] == ["correctness", "helpfulness", "tone"] and a["lease_expires_at"]
    assert r1.post("/api/review/claim").json()["message_id"] == a["message_id"]  # claiming again: same item

    for client, item in ((r1, a), (r2, b)):
        mid = item["message_id"]
        rating = client.post(f"/api/review/items/{mid}/rating",
                             json={"scores": {"correctness": 2, "helpfulness": 3, "tone": 5}, "comment": "meh"})
        assert rating.status_code == 201, rating.text
        original = item["conversation"][-1]["content"]
        correction = client.post(f"/api/review/items/{mid}/correction", json={"content": "A better answer."})
        assert correction.status_code == 201
        body = correction.json()
        assert body["original"] == original and body["content"] == "A better answer."
        assert "+A better answer." in body["diff"] and body["diff"].startswith("---")
        candidates = client.post(f"/api/review/items/{mid}/candidates")
        assert candidates.status_code == 201, candidates.text
        pair = candidates.json()
        assert len(pair) == 2 and pair[0]["candidate_id"] != pair[1]["candidate_id"]
        assert pair[0]["seed"] != pair[1]["seed"] and all(isinstance(c["content"], str) for c in pair)
        comparison = client.post(f"/api/review/items/{mid}/comparison", json={
            "candidate_a": pair[0]["candidate_id"], "candidate_b": pair[1]["candidate_id"], "choice": "b"})
        assert comparison.status_code == 201 and comparison.json()["choice"] == "b"
        flag = client.post(f"/api/review/items/{mid}/flag", json={"tags": ["PII", "unsafe"]})
        assert flag.status_code == 201 and flag.json()["tags"] == ["pii", "unsafe"]
        assert client.post(f"/api/review/items/{mid}/comment", json={"text": "note"}).status_code == 201
        done = client.post(f"/api/review/items/{mid}/submit")
        assert done.status_code == 200 and done.json() == {"message_id": mid, "status": "submitted",
                                                            "item_status": "done"}
        # submitted: no longer held, so no more writes
        assert client.post(f"/api/review/items/{mid}/comment", json={"text": "late"}).status_code == 404

    third = r1.post("/api/review/claim").json()["message_id"]
    assert third not in {a["message_id"], b["message_id"]}
    assert r2.post("/api/review/claim").status_code == 204  # every item is held or done

    stats = admin.get("/api/review/stats").json()
    assert stats["feedback"] | {"thumbs_up": 0} == {"thumbs_up": 0, "thumbs_down": 1, "ratings": 2, "corrections": 2,
                                                    "candidates": 4, "comparisons": 2, "flags": 2, "comments": 2}
    assert stats["queue"]["done"] == 2 and stats["queue"]["held"] == 1

    log = admin.get("/api/audit", params={"limit": 1000}).json()["data"]
    actions = [e["action"] for e in log]
    for action in ("thumbs.create", "claim.create", "rating.create", "correction.create", "candidate.create",
                   "comparison.create", "flag.create", "comment.create", "claim.submitted", "item.done"):
        assert action in actions
    rating_event = next(e for e in log if e["action"] == "rating.create")
    assert rating_event["after"]["scores"] == {"correctness": 2, "helpfulness": 3, "tone": 5}
    assert rating_event["actor_id"] == rating_event["after"]["reviewer_id"]
    submit_event = next(e for e in log if e["action"] == "claim.submitted")
    assert submit_event["before"]["status"] == "active" and submit_event["after"]["status"] == "submitted"


def test_release_and_skip_return_item(clients):
    service, r1, r2 = clients["service"], clients["r1"], clients["r2"]
    mid = chat(service, "hello")["message_id"]
    assert r1.post("/api/review/claim").json()["message_id"] == mid
    assert r2.post("/api/review/claim").status_code == 204
    assert r1.post(f"/api/review/items/{mid}/release").json()["status"] == "released"
    assert r2.post("/api/review/claim").json()["message_id"] == mid
    skipped = r2.post(f"/api/review/items/{mid}/skip", json={"reason": "not my field"})
    assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
    assert r2.post("/api/review/claim").status_code == 204  # a skipper does not get it back
    assert r1.post("/api/review/claim").json()["message_id"] == mid


def test_expired_lease_returns_item_to_queue(server_with, settings, admin_key, service_key):
    import time

    from tests.conftest import make_key

    server = server_with(REVIEW_LEASE_MINUTES="0.02")  # 1.2 s
    with server.client(service_key) as service, server.client(make_key("reviewer")) as r1, \
            server.client(make_key("reviewer")) as r2:
        mid = chat(service, "hi")["message_id"]
        assert r1.post("/api/review/claim").json()["message_id"] == mid
        assert r2.post("/api/review/claim").status_code == 204
        time.sleep(1.5)
        assert r2.post("/api/review/claim").json()["message_id"] == mid
        late = r1.post(f"/api/review/items/{mid}/rating", json={"scores": {"tone": 3}})
        assert late.status_code == 409  # r1's lease expired; r2 holds it now


def test_overlap_k2_gives_item_to_two_reviewers(server_with, settings, service_key):
    from tests.conftest import make_key

    server = server_with(REVIEW_K="2")
    keys = [make_key("reviewer") for _ in range(3)]
    with server.client(service_key) as service:
        mid = chat(service, "hi")["message_id"]
    clients = [server.client(k) for k in keys]
    try:
        claims = [c.post("/api/review/claim") for c in clients]
        assert [c.status_code for c in claims] == [200, 200, 204]
        assert claims[0].json()["message_id"] == claims[1].json()["message_id"] == mid
        assert clients[0].post(f"/api/review/items/{mid}/submit").json()["item_status"] == "open"
        assert clients[1].post(f"/api/review/items/{mid}/submit").json()["item_status"] == "done"
    finally:
        for c in clients:
            c.close()


def test_bad_input_is_4xx(clients):
    service, r1, admin = clients["service"], clients["r1"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    assert r1.post("/api/review/claim").status_code == 200
    item = f"/api/review/items/{mid}"
    assert r1.post(f"{item}/rating", json={"scores": {"correctness": 6}}).status_code == 422
    assert r1.post(f"{item}/rating", json={"scores": {"correctness": "4"}}).status_code == 422
    assert r1.post(f"{item}/rating", json={"scores": {"wit": 4}}).status_code == 422
    assert r1.post(f"{item}/rating", json={"scores": {}}).status_code == 422
    assert r1.post(f"{item}/correction", json={"content": ""}).status_code == 422
    assert r1.post(f"{item}/comparison", json={"candidate_a": 1, "candidate_b": 2, "choice": "a"}).status_code == 422
    assert r1.post(f"{item}/flag", json={"tags": []}).status_code == 422
    assert r1.post(f"{item}/rating", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    user_message = admin.get(f"/api/conversations/{chat(service, 'x')['conversation_id']}").json()["messages"][0]
    assert admin.post(f"/api/review/items/{user_message['id']}/rating",
                      json={"scores": {"tone": 3}}).status_code == 422  # not an assistant reply
    assert admin.post("/api/review/items/msg_nope/rating", json={"scores": {"tone": 3}}).status_code == 404
