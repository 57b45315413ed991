"""Values no route can store or answer are the client's 4xx on SQLite and PostgreSQL: lone surrogates, NaN and
Infinity in any JSON body, integers beyond 64 bits in bodies, paths and queries."""

import json

from tests.conftest import make_key
from tests.feedback.conftest import chat

HUGE = 2**70


def post(http, path: str, body: dict):
    """JSON with \\ud800-style escapes and NaN, as a client may send (httpx's own encoder refuses them)."""
    return http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def test_unstorable_values_are_4xx(live_server, api, service_key):
    reviewer = make_key("reviewer")
    with live_server.client(service_key) as service, live_server.client(reviewer) as review:
        message_id = chat(service, "Hi")["message_id"]
        assert review.post("/api/review/claim").json()["message_id"] == message_id
        item = f"/api/review/items/{message_id}"
        bodies = [
            ("/v1/feedback", {"message_id": message_id, "thumbs": "down", "comment": "bad \ud800"}, "comment"),
            ("/v1/feedback", {"message_id": "msg_\udfff", "thumbs": "up"}, "message_id"),
            ("/v1/feedback", {"message_id": message_id, "thumbs": "up", "comment": float("nan")}, "comment"),
            (f"{item}/rating", {"scores": {"correctness": 3, "helpfulness": 3, "tone": 3}, "comment": "\udc80"},
             "comment"),
            (f"{item}/rating", {"scores": {"correctness": float("inf"), "helpfulness": 3, "tone": 3}}, "correctness"),
            (f"{item}/correction", {"content": "Paris \ud83d"}, "content"),
            (f"{item}/comment", {"text": "\ud800\ud800"}, "text"),
            (f"{item}/flag", {"tags": ["pii\udfff"]}, "tags"),
            (f"{item}/comparison", {"candidate_a": HUGE, "candidate_b": 1, "choice": "a"}, "candidate_a"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "top_p": float("nan")},
             "top_p"),
        ]
        for path, body, field in bodies:
            client = service if path.startswith("/v1/") else review
            response = post(client, path, body)
            assert response.status_code == 422 and field in response.text, (path, response.status_code, response.text)
        # within 64 bits for JSON, beyond what SQLite's INTEGER holds
        comparison = post(review, f"{item}/comparison", {"candidate_a": 2**63 + 5, "candidate_b": 1, "choice": "a"})
        assert comparison.status_code == 422, comparison.text

    for path in (f"/api/audit?after_id={HUGE}", f"/api/audit?actor_id={2**63}", f"/api/retrain/runs/{HUGE}",
                 f"/api/retrain/runs?offset={HUGE}", f"/api/datasets/{2**63}", f"/api/datasets/-{HUGE}"):
        response = api.get(path)
        assert response.status_code in (404, 422), (path, response.status_code, response.text)
        assert response.json()["detail"]
    assert api.get("/api/review/stats").json()["feedback"]["thumbs_down"] == 0  # nothing was stored
