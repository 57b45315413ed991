"""Idempotency-Key: a retry returns the first response and stores nothing twice."""

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import make_key
from tests.feedback.conftest import chat


def test_replayed_key_stores_one_row(clients):
    service, r1, admin = clients["service"], clients["r1"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    headers = {"Idempotency-Key": "thumbs-1"}
    first = service.post("/v1/feedback", json={"message_id": mid, "thumbs": "down"}, headers=headers)
    again = service.post("/v1/feedback", json={"message_id": mid, "thumbs": "down"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["Idempotent-Replayed"] == "true"
    assert admin.get("/api/review/stats").json()["feedback"]["thumbs_down"] == 1
    changed = service.post("/v1/feedback", json={"message_id": mid, "thumbs": "up"}, headers=headers)
    assert changed.status_code == 422  # same key, different request

    claim = r1.post("/api/review/claim", headers={"Idempotency-Key": "c1"}).json()
    assert r1.post("/api/review/claim", headers={"Idempotency-Key": "c1"}).json() == claim
    body = {"scores": {"correctness": 3}}
    rating = r1.post(f"/api/review/items/{mid}/rating", json=body, headers={"Idempotency-Key": "r1"}).json()
    assert r1.post(f"/api/review/items/{mid}/rating", json=body, headers={"Idempotency-Key": "r1"}).json() == rating
    pair = r1.post(f"/api/review/items/{mid}/candidates", headers={"Idempotency-Key": "cand"}).json()
    assert r1.post(f"/api/review/items/{mid}/candidates", headers={"Idempotency-Key": "cand"}).json() == pair
    stats = admin.get("/api/review/stats").json()["feedback"]
    assert stats["ratings"] == 1 and stats["candidates"] == 2
    # keys are per user: another user's identical key is a different request
    other = admin.post(f"/api/review/items/{mid}/rating", json=body, headers={"Idempotency-Key": "r1"})
    assert other.status_code == 201 and other.json()["id"] != rating["id"]
    assert len(admin.get("/api/audit", params={"action": "rating.create"}).json()["data"]) == 2


def test_concurrent_retries_store_one_row(clients, server):
    service, admin = clients["service"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    key = service.headers["Authorization"]

    def post(_):
        with server.client() as c:
            return c.post("/v1/feedback", json={"message_id": mid, "thumbs": "up", "comment": "same"},
                          headers={"Authorization": key, "Idempotency-Key": "concurrent"})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(16)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert admin.get("/api/review/stats").json()["feedback"]["thumbs_up"] == 1


def test_empty_key_is_refused_alone(clients, server):
    """An empty Idempotency-Key is a 422 for its sender only; another client's writes meanwhile all succeed."""
    service, r1, admin = clients["service"], clients["r1"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    keys = {"empty": service.headers["Authorization"], "valid": f"Bearer {make_key('service')}"}

    def post(job):
        kind, i = job
        headers = {"Authorization": keys[kind], "Idempotency-Key": "" if kind == "empty" else f"k{i}"}
        with server.client() as c:
            body = {"message_id": mid, "thumbs": "up" if kind == "valid" else "down"}
            return kind, c.post("/v1/feedback", json=body, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, [("empty" if i % 2 else "valid", i) for i in range(40)]))
    assert {(kind, r.status_code) for kind, r in responses} == {("empty", 422), ("valid", 201)}
    assert all("Idempotency-Key" in r.text for kind, r in responses if kind == "empty")
    assert r1.post("/api/review/claim", headers={"Idempotency-Key": ""}).status_code == 422
    feedback = admin.get("/api/review/stats").json()["feedback"]
    assert (feedback["thumbs_up"], feedback["thumbs_down"]) == (20, 0)
