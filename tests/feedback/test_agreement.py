"""Agreement figures against a hand-computed fixture, through the HTTP API.

Two reviewers (A, B) rate three replies with overlap k=2:
               correctness   tone       gold (item 3): correctness 3, tone 1
    item 1       1 / 1       5 / 5
    item 2       2 / 2       4 / 4
    item 3       3 / 4       1 / 4

Ordinal Krippendorff's alpha, by hand (coincidence matrix, value domain 1..5,
delta^2(c,k) = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2):
- correctness: pairs (1,1) (2,2) (3,4); n1=2 n2=2 n3=1 n4=1, n=6.
  D_o = (1/6)(1*1 + 1*1) = 1/3 with delta^2(3,4) = (2 - 1)^2 = 1.
  delta^2: (1,2)=4 (1,3)=12.25 (1,4)=20.25 (2,3)=2.25 (2,4)=6.25 (3,4)=1;
  D_e = 2*(4*4 + 2*12.25 + 2*20.25 + 2*2.25 + 2*6.25 + 1*1) / (6*5) = 198/30 = 6.6.
  alpha = 1 - (1/3)/6.6 = 94/99.
- tone: pairs (5,5) (4,4) (1,4); n1=1 n4=3 n5=2, n=6.
  delta^2(1,4) = (4 - 2)^2 = 4, so D_o = (1/6)(4 + 4) = 4/3.
  delta^2(1,5) = (6 - 1.5)^2 = 20.25, delta^2(4,5) = (5 - 2.5)^2 = 6.25;
  D_e = 2*(3*4 + 2*20.25 + 6*6.25) / 30 = 180/30 = 6; alpha = 1 - (4/3)/6 = 7/9.
- helpfulness: never rated -> null.
Agreement with consensus (1 - |score - median of others| / 4), per reviewer over 6 scores:
  1 + 1 + 0.75 (correctness) + 1 + 1 + 0.25 (tone) = 5 -> 5/6 for both.
Gold answers (tolerance 1: within one point is a hit): A matches 3 and 1 -> accuracy 1.0; B gives
4 (hit, |4-3| = 1) and 4 (miss) -> 0.5. Chance of a random hit: gold 3 -> 3/5, gold 1 -> 2/5.
Reliability = posterior mean of r under P(hit) = r + (1 - r)·chance, prior Beta(2, 1) (density 2r):
  A: ∝ r (0.6 + 0.4r)(0.4 + 0.6r) = 0.24r + 0.52r² + 0.24r³; ∫ = 0.12 + 0.52/3 + 0.06 = 1.06/3,
     ∫ r· = 0.08 + 0.13 + 0.048 = 0.258 -> 0.774/1.06 = 387/530 ≈ 0.730.
  B: ∝ r (0.6 + 0.4r)(1 - r)·0.6 ∝ 0.6r - 0.2r² - 0.4r³; ∫ = 0.4/3, ∫ r· = 0.07 -> 21/40 = 0.525.
Both above the floor 0.5: neither is flagged.
Adjudication (threshold 1): item 3 (tone spread 3); items 1 and 2 agree.
"""

import pytest

from tests.conftest import make_key
from tests.feedback.conftest import chat

SCORES = {
    0: ({"correctness": 1, "tone": 5}, {"correctness": 1, "tone": 5}),
    1: ({"correctness": 2, "tone": 4}, {"correctness": 2, "tone": 4}),
    2: ({"correctness": 3, "tone": 1}, {"correctness": 4, "tone": 4}),
}


def test_agreement_matches_hand_computation(server_with, settings, admin_key, service_key):
    server = server_with(REVIEW_K="2")
    key_a, key_b = make_key("reviewer", "A"), make_key("reviewer", "B")
    with server.client(service_key) as service, server.client(admin_key) as admin, \
            server.client(key_a) as a, server.client(key_b) as b:
        replies = [chat(service, f"question {i}")["message_id"] for i in range(3)]
        index = {mid: i for i, mid in enumerate(replies)}
        assert admin.post("/api/review/gold", json={"message_id": replies[2],
                                                    "scores": {"correctness": 3, "tone": 1}}).status_code == 201
        for _ in range(3):
            for reviewer, client in enumerate((a, b)):
                mid = client.post("/api/review/claim").json()["message_id"]
                scores = SCORES[index[mid]][reviewer]
                assert client.post(f"/api/review/items/{mid}/rating", json={"scores": scores}).status_code == 201
                assert client.post(f"/api/review/items/{mid}/submit").status_code == 200
        assert a.post("/api/review/claim").status_code == b.post("/api/review/claim").status_code == 204

        report = admin.get("/api/review/agreement").json()
        ids = {row["actor_id"] for row in admin.get("/api/audit", params={"action": "rating.create"}).json()["data"]}
        audit = admin.get("/api/audit", params={"action": "rating.create"}).json()["data"]
        id_a = next(e["actor_id"] for e in audit if e["after"]["scores"] == SCORES[2][0])
        id_b = (ids - {id_a}).pop()

        assert report["dimensions"]["correctness"] == {"alpha": pytest.approx(94 / 99), "n_items": 3}
        assert report["dimensions"]["tone"] == {"alpha": pytest.approx(7 / 9), "n_items": 3}
        assert report["dimensions"]["helpfulness"]["alpha"] is None
        ra, rb = report["reviewers"][str(id_a)], report["reviewers"][str(id_b)]
        assert ra["agreement"] == pytest.approx(5 / 6) and rb["agreement"] == pytest.approx(5 / 6)
        assert ra["gold_accuracy"] == 1.0 and rb["gold_accuracy"] == 0.5
        assert ra["n_gold"] == rb["n_gold"] == 2 and ra["gold_items"] == 1
        assert ra["reliability"] == pytest.approx(387 / 530, abs=1e-3)
        assert rb["reliability"] == pytest.approx(21 / 40, abs=1e-3)
        assert not ra["flagged"] and not rb["flagged"] and report["flagged"] == []
        assert [d["message_id"] for d in report["adjudication"]] == [replies[2]]
        assert report["adjudication"][0]["spread"] == {"correctness": 1, "tone": 3}

        from core.db import session_scope
        from feedback.quality import reviewer_reliability

        with session_scope() as session:
            assert reviewer_reliability(session) == {id_a: pytest.approx(387 / 530, abs=1e-3),
                                                     id_b: pytest.approx(21 / 40, abs=1e-3)}

        final = admin.post(f"/api/review/adjudication/{replies[2]}", json={"scores": {"correctness": 3, "tone": 2}})
        assert final.status_code == 201 and final.json()["adjudicated"] is True
        assert admin.get("/api/review/adjudication").json() == []
        # the adjudication does not count as a third reviewer
        assert admin.get("/api/review/agreement").json()["dimensions"]["tone"]["alpha"] == pytest.approx(7 / 9)


def test_adjudicating_an_unqueued_reply_leaves_it_without_gold(server_with, admin_key, service_key):
    """An item created by an adjudication has no gold scores (on PostgreSQL it held JSON null, which `IS NOT NULL`
    counted as gold: the agreement report and the adjudication queue answered 500)."""
    server = server_with(REVIEW_LOW_CONFIDENCE="-1000", REVIEW_CALIBRATION_RATE="0")  # the reply is not queued
    with server.client(service_key) as service, server.client(admin_key) as api:
        message_id = chat(service, "Hi")["message_id"]
        adjudicated = api.post(f"/api/review/adjudication/{message_id}",
                               json={"scores": {"correctness": 3, "helpfulness": 3, "tone": 3}})
        assert adjudicated.status_code == 201, adjudicated.text
        assert api.get("/api/review/agreement").status_code == 200
        assert api.get("/api/review/adjudication").status_code == 200
        assert api.get("/api/review/stats").json()["queue"]["gold"] == 0
