"""Privacy deletions: data gone, the request recorded, dataset builds exclude it forever."""

from sqlmodel import select

from tests.feedback.conftest import chat, thumbs_down


def test_delete_conversation_and_end_user(clients):
    service, r1, admin = clients["service"], clients["r1"], clients["admin"]
    kept = chat(service, "keep me", user="bob")
    gone = chat(service, "forget me", user="alice")
    alice_2 = chat(service, "me again", user="alice")
    thumbs_down(service, gone["message_id"])
    assert r1.post("/api/review/claim").json()["message_id"] == gone["message_id"]
    assert r1.post(f"/api/review/items/{gone['message_id']}/rating", json={"scores": {"tone": 2}}).status_code == 201

    response = admin.delete(f"/api/conversations/{gone['conversation_id']}")
    assert response.status_code == 200
    deletion = response.json()
    assert deletion["conversation_id"] == gone["conversation_id"]
    assert deletion["conversation_ids"] == [gone["conversation_id"]]
    assert admin.get(f"/api/conversations/{gone['conversation_id']}").status_code == 404
    assert admin.delete(f"/api/conversations/{gone['conversation_id']}").status_code == 404
    stats = admin.get("/api/review/stats").json()
    assert stats["feedback"]["ratings"] == 0 and stats["feedback"]["thumbs_down"] == 0 and stats["deletions"] == 1
    # the audit trail keeps who/when but not the deleted content
    events = admin.get("/api/audit", params={"message_id": gone["message_id"]}).json()["data"]
    assert events and all(e["before"] is None and e["after"] == {"redacted": "privacy deletion"} for e in events)
    assert r1.post(f"/api/review/items/{gone['message_id']}/comment", json={"text": "x"}).status_code == 404

    by_user = admin.delete("/api/end-users/alice")
    assert by_user.status_code == 200 and by_user.json()["conversation_ids"] == [alice_2["conversation_id"]]
    assert admin.get(f"/api/conversations/{alice_2['conversation_id']}").status_code == 404
    assert admin.get(f"/api/conversations/{kept['conversation_id']}").status_code == 200
    later = chat(service, "I am back", user="alice")  # a later conversation of a deleted end user

    from core.db import session_scope
    from feedback.models import Deletion
    from feedback.service import deleted_conversation_ids

    with session_scope() as session:
        excluded = deleted_conversation_ids(session)
        assert {gone["conversation_id"], alice_2["conversation_id"], later["conversation_id"]} <= excluded
        assert kept["conversation_id"] not in excluded
        assert len(session.exec(select(Deletion)).all()) == 2
    actions = [e["action"] for e in admin.get("/api/audit", params={"action": "deletion.create"}).json()["data"]]
    assert actions == ["deletion.create", "deletion.create"]
    assert r1.delete("/api/end-users/bob").status_code == 403
