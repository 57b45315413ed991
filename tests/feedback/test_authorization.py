"""Roles, object-level ownership and mass assignment, through the HTTP API."""

from tests.feedback.conftest import chat

ADMIN_ROUTES = [("get", "/api/review/agreement"), ("get", "/api/review/adjudication"), ("get", "/api/audit"),
                ("get", "/api/review/stats"), ("post", "/api/review/gold"),
                ("post", "/api/review/adjudication/msg_x"), ("delete", "/api/conversations/conv_x"),
                ("delete", "/api/end-users/someone")]


def test_reviewer_gets_403_on_admin_routes(clients):
    for method, path in ADMIN_ROUTES:
        kwargs = {"json": {}} if method == "post" else {}
        assert getattr(clients["r1"], method)(path, **kwargs).status_code == 403, path


def test_service_key_cannot_review_and_reviewer_cannot_post_thumbs(clients):
    mid = chat(clients["service"], "hi")["message_id"]
    assert clients["service"].post("/api/review/claim").status_code == 403
    assert clients["r1"].post("/v1/feedback", json={"message_id": mid, "thumbs": "up"}).status_code == 403


def test_missing_key_is_401(server):
    with server.client() as anonymous:
        assert anonymous.post("/api/review/claim").status_code == 401
        assert anonymous.post("/v1/feedback", json={"message_id": "m", "thumbs": "up"}).status_code == 401


def test_reviewer_cannot_touch_another_reviewers_item(clients):
    service, r1, r2, admin = clients["service"], clients["r1"], clients["r2"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    assert r1.post("/api/review/claim").json()["message_id"] == mid
    item = f"/api/review/items/{mid}"
    assert r2.get(item).status_code == 404  # cannot read another reviewer's pending item
    for suffix, body in [("rating", {"scores": {"tone": 1}}), ("correction", {"content": "x"}),
                         ("flag", {"tags": ["unsafe"]}), ("comment", {"text": "x"}), ("candidates", None),
                         ("comparison", {"candidate_a": 1, "candidate_b": 2, "choice": "a"}),
                         ("release", None), ("skip", None), ("submit", None)]:
        response = r2.post(f"{item}/{suffix}", json=body) if body else r2.post(f"{item}/{suffix}")
        assert response.status_code in (403, 404), (suffix, response.status_code)
    assert r1.get(item).status_code == 200
    # nothing was stored for r2, and r1 still holds the item
    assert admin.get("/api/review/stats").json()["feedback"]["ratings"] == 0
    assert r1.post(f"{item}/rating", json={"scores": {"tone": 4}}).status_code == 201
    # an admin may write on any reply without holding it
    assert admin.post(f"{item}/comment", json={"text": "admin note"}).status_code == 201


def test_reviewer_id_comes_from_key_and_protected_fields_are_refused(clients):
    service, r1, admin = clients["service"], clients["r1"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    r1.post("/api/review/claim")
    item = f"/api/review/items/{mid}"
    for extra in ({"reviewer_id": 1}, {"id": 99}, {"created_at": "2020-01-01T00:00:00Z"}, {"adjudicated": True},
                  {"message_id": "msg_other"}):
        response = r1.post(f"{item}/rating", json={"scores": {"tone": 4}, **extra})
        assert response.status_code == 422, extra
    for extra in ({"original": "x"}, {"diff": "x"}, {"reviewer_id": 1}):
        assert r1.post(f"{item}/correction", json={"content": "c", **extra}).status_code == 422
    assert service.post("/v1/feedback", json={"message_id": mid, "thumbs": "up", "source": "reviewer"}
                        ).status_code == 422
    rating = r1.post(f"{item}/rating", json={"scores": {"tone": 4}}).json()
    me = admin.get("/api/audit", params={"action": "rating.create"}).json()["data"][0]["actor_id"]
    assert rating["reviewer_id"] == me and rating["adjudicated"] is False


def test_end_user_feedback(clients):
    service, admin = clients["service"], clients["admin"]
    mid = chat(service, "hi")["message_id"]
    response = service.post("/v1/feedback", json={"message_id": mid, "thumbs": "up", "comment": "nice"})
    assert response.status_code == 201
    assert response.json() | {"id": 0, "created_at": 0} == {"id": 0, "created_at": 0, "message_id": mid,
                                                              "thumbs": "up", "comment": "nice", "source": "end_user"}
    assert service.post("/v1/feedback", json={"message_id": "msg_unknown", "thumbs": "up"}).status_code == 404
    assert service.post("/v1/feedback", json={"message_id": mid, "thumbs": "meh"}).status_code == 422
    assert admin.post("/v1/feedback", json={"message_id": mid, "thumbs": "down"}).status_code == 201
    assert admin.get("/api/review/stats").json()["feedback"]["thumbs_down"] == 1


def test_openapi_documents_write_bodies_with_examples():
    from hitl.app import create_app

    spec = create_app().openapi()
    paths = ["/v1/feedback", "/api/review/items/{message_id}/rating", "/api/review/items/{message_id}/correction",
             "/api/review/items/{message_id}/comparison", "/api/review/items/{message_id}/flag",
             "/api/review/items/{message_id}/comment", "/api/review/gold"]
    for path in paths:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        schema = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
        assert schema["examples"] and schema["additionalProperties"] is False, path
    claim = spec["paths"]["/api/review/claim"]["post"]
    assert "204" in claim["responses"] and any(p["name"] == "Idempotency-Key" for p in claim["parameters"])
