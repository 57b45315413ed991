"""Import of existing logs over real HTTP (`POST /api/import`) and from the CLI: OpenAI chat records and Langfuse
traces, idempotency, bad lines by number, the review queue, privacy, roles."""

import json

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from core.db import session_scope
from feedback.models import ImportedConversation, Rating, ReviewItem, Thumbs
from service.models import Conversation, Message
from tests.conftest import make_key

NDJSON = {"Content-Type": "application/x-ndjson"}


def openai_line(i: int, **extra) -> str:
    return json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": f"What is {i} + {i}?"},
                                    {"role": "assistant", "content": f"It is {2 * i}."}],
                       "model": "gpt-old", "user": f"customer-{i % 3}", "created": 1_700_000_000 + i, **extra})


LANGFUSE = {
    "id": "trace-7f3a", "timestamp": "2024-05-01T12:00:00.250+02:00", "name": "support-chat", "userId": "lf-user",
    "sessionId": "sess-1", "tags": ["prod"], "metadata": {"region": "eu"},
    "input": [{"role": "user", "content": [{"type": "text", "text": "Where is my "}, {"type": "text", "text": "parcel?"}]}],
    "output": {"role": "assistant", "content": "It ships tomorrow."},
    "observations": [{"type": "SPAN", "name": "retrieval"}, {"type": "GENERATION", "model": "gpt-4o-mini"}],
    "scores": [{"name": "user-feedback", "value": 0, "dataType": "NUMERIC", "comment": "Wrong parcel"},
               {"name": "correctness", "value": 2, "dataType": "NUMERIC"},
               {"name": "toxicity", "value": 0.01, "dataType": "NUMERIC"}],
}


def body(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_openai_and_langfuse_lines_import_once_and_report_bad_lines(api):
    lines = [openai_line(1, thumbs="down", comment="wrong sum"), openai_line(2, scores={"correctness": 5}),
             "{not json", json.dumps(LANGFUSE), json.dumps({"messages": [{"role": "tool", "content": "x"}]}),
             "", json.dumps({"prompt": "no format"}), openai_line(3, scores={"bogus": 3}), openai_line(4)]
    first = api.post("/api/import", content=body(*lines), headers=NDJSON)
    assert first.status_code == 200, first.text
    report = first.json()
    assert report["lines"] == 8 and report["conversations"] == 4 and report["replies"] == 4
    assert report["by_source"] == {"openai": 3, "langfuse": 1}
    assert report["thumbs"] == 2 and report["ratings"] == 2 and report["duplicates"] == 0
    errors = {e["line"]: e["error"] for e in report["errors"]}
    assert sorted(errors) == [3, 5, 7, 8] and report["error_count"] == 4
    assert "not valid JSON" in errors[3] and "role 'tool'" in errors[5] and "neither" in errors[7]
    assert "bogus" in errors[8]

    again = api.post("/api/import", content=body(*lines), headers=NDJSON).json()
    assert again["conversations"] == 0 and again["duplicates"] == 4 and again["error_count"] == 4

    with session_scope() as s:
        ledger = {r.source: r for r in s.exec(select(ImportedConversation))}
        assert len(s.exec(select(ImportedConversation)).all()) == 4 and set(ledger) == {"openai", "langfuse"}
        conv = s.get(Conversation, ledger["langfuse"].conversation_id)
        turns = s.exec(select(Message).where(Message.conversation_id == conv.id).order_by(Message.position)).all()
        assert conv.end_user == "lf-user"
        assert [(m.role, m.content, m.from_client) for m in turns] == [
            ("user", "Where is my parcel?", True), ("assistant", "It ships tomorrow.", False)]
        reply = turns[-1]
        assert reply.model_version == "gpt-4o-mini" and reply.created_at.isoformat() == "2024-05-01T10:00:00.250000+00:00"
        assert reply.params["metadata"]["region"] == "eu" and reply.params["metadata"]["sessionId"] == "sess-1"
        assert reply.params["metadata"]["scores"] == [{"name": "toxicity", "value": 0.01, "dataType": "NUMERIC"}]
        thumbs = s.exec(select(Thumbs).where(Thumbs.message_id == reply.id)).one()
        assert (thumbs.thumbs, thumbs.comment, thumbs.source) == ("down", "Wrong parcel", "end_user")
        rating = s.exec(select(Rating).where(Rating.message_id == reply.id)).one()
        assert rating.scores == {"correctness": 2}
        # thumbs-down replies are first in the queue, like served ones
        down = s.exec(select(ReviewItem).where(ReviewItem.reason == "thumbs_down")).all()
        assert len(down) == 2 and all(item.priority == 0.5 for item in down)


def test_imported_replies_are_reviewed_like_served_ones(live_server, api):
    api.post("/api/import", content=body(openai_line(5, thumbs="down")), headers=NDJSON).raise_for_status()
    with live_server.client(make_key("reviewer")) as reviewer:
        claim = reviewer.post("/api/review/claim")
        assert claim.status_code == 200, claim.text
        item = claim.json()
        assert item["reason"] == "thumbs_down" and item["conversation"][-1]["content"] == "It is 10."
        assert [m["role"] for m in item["conversation"]] == ["system", "user", "assistant"]
        mid = item["message_id"]
        assert reviewer.post(f"/api/review/items/{mid}/correction", json={"content": "5 + 5 = 10."}).status_code == 201
        assert reviewer.post(f"/api/review/items/{mid}/submit").status_code == 200


def test_multipart_upload_and_bad_requests(live_server, api):
    files = {"file": ("logs.jsonl", body(openai_line(6), json.dumps(LANGFUSE)), "application/octet-stream")}
    uploaded = api.post("/api/import", files=files)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["conversations"] == 2
    forced = api.post("/api/import?format=langfuse", content=body(openai_line(7)), headers=NDJSON)
    assert forced.status_code == 422 and "line 1" in forced.json()["detail"]  # every line bad: nothing imported
    assert api.post("/api/import?format=csv", content=body(openai_line(7)), headers=NDJSON).status_code == 422
    assert api.post("/api/import", content=b"\n\n", headers=NDJSON).status_code == 422
    assert api.post("/api/import", content=body(openai_line(7)), headers={"Content-Type": "text/csv"}).status_code == 415
    assert api.post("/api/import", files={"other": ("x", b"{}")}).status_code == 422
    nan = api.post("/api/import", content=b'{"messages": [{"role": "user", "content": "a"}], "created": NaN}\n'
                                          + body(openai_line(8)), headers=NDJSON)
    assert nan.status_code == 200 and nan.json()["conversations"] == 1
    assert nan.json()["errors"] == [{"line": 1, "error": "the line holds nan at the record.created, which is not a JSON number"}]
    for role in ("reviewer", "service"):
        with live_server.client(make_key(role)) as other:
            assert other.post("/api/import", content=body(openai_line(9)), headers=NDJSON).status_code == 403
    with session_scope() as s:  # the refused and failed requests stored nothing
        assert len(s.exec(select(ImportedConversation)).all()) == 3


def test_a_deleted_conversation_or_end_user_is_never_imported_again(api):
    first = api.post("/api/import", content=body(openai_line(10), openai_line(11)), headers=NDJSON).json()
    assert first["conversations"] == 2
    with session_scope() as s:
        convs = {c.end_user: c.id for c in s.exec(select(Conversation))}
    assert api.delete(f"/api/conversations/{convs['customer-1']}").status_code == 200
    assert api.delete("/api/end-users/customer-2").status_code == 200
    again = api.post("/api/import", content=body(openai_line(10), openai_line(11), openai_line(14)),
                     headers=NDJSON).json()
    # 10 and 11 were imported before (their conversations since deleted); 14 is a new record of deleted customer-2
    assert again["conversations"] == 0 and again["duplicates"] == 2 and again["skipped_deleted"] == 1
    with session_scope() as s:
        assert s.exec(select(Conversation)).all() == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_cli_import(settings, tmp_path):
    from hitl.cli import app

    path = tmp_path / "logs.jsonl"
    path.write_bytes(body(openai_line(20), "[1, 2]", openai_line(21)))
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "imported 2 conversations" in result.output and "line 2: a line must be a JSON object" in result.output
    result = runner.invoke(app, ["import", str(path), "--json"])
    assert json.loads(result.stdout)["duplicates"] == 2
    path.write_bytes(body("{", "[]"))
    assert runner.invoke(app, ["import", str(path)]).exit_code == 1
