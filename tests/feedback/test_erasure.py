"""A privacy deletion erases: after it, no byte of the deleted text is left in the data dir (snapshots,
paraphrase cache), in stored idempotent responses, or in the SQLite database file and its WAL."""

from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi import FastAPI

from core.db import session_scope
from service.models import ModelVersion
from tests.conftest import LiveServer, make_key

ALICE_Q = "Does Zebulon Quixote on Wisteria Lane still owe me money"
ALICE_NOTE = "Zebulon never paid back the loan"
ALICE_FIX = "I cannot know what Zebulon Quixote owes you"
BOB_Q = "Tell Ottoline Farquharson her secret is safe"
BOB_FIX = "I will not pass on messages to Ottoline Farquharson"
BOB_NOTE = "Ottoline Farquharson is named here"
KEPT_Q = "What colour is a Marmaduke Blenkinsop sky"
KEPT_FIX = "The Marmaduke Blenkinsop sky is blue"


@pytest.fixture
def paraphraser() -> LiveServer:
    """An OpenAI-compatible upstream that paraphrases by quoting (so a leftover paraphrase shows in a grep)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(body: dict) -> dict:
        text = "In other words: " + body["messages"][-1]["content"]
        return {"id": "p", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    with LiveServer(app) as server:
        yield server


def ask(client, messages: list[dict], user: str, conversation_id: str | None = None) -> dict:
    body = {"messages": messages, "max_tokens": 3, "temperature": 0, "user": user, "conversation_id": conversation_id}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def hits(root: Path, *texts: str) -> list[str]:
    """Every file under `root` (database files included) holding one of `texts`."""
    return [f"{path.name}: {text}" for path in root.rglob("*") if path.is_file() for text in texts
            if text.encode() in path.read_bytes()]


def test_deletion_leaves_no_text_anywhere(server_with, paraphraser, tmp_path, admin_key, service_key):
    server = server_with(REMOTE_BASE_URL=f"{paraphraser.url}/v1", MAX_TOKENS="6")
    stack = ExitStack()
    admin, chat, r1 = (stack.enter_context(server.client(k)) for k in (admin_key, service_key, make_key("reviewer")))
    alice = ask(chat, [{"role": "user", "content": ALICE_Q}], "alice")
    conv, a1 = alice["hitl"]["conversation_id"], alice["hitl"]["message_id"]
    history = [{"role": "user", "content": ALICE_Q}, alice["choices"][0]["message"]]
    # bob writes into alice's conversation
    b1 = ask(chat, [*history, {"role": "user", "content": BOB_Q}], "bob", conv)["hitl"]["message_id"]
    c1 = ask(chat, [{"role": "user", "content": KEPT_Q}], "carol")["hitl"]["message_id"]
    key = iter(range(100))

    def post(client, path: str, body: dict | None = None) -> dict:
        response = client.post(path, json=body, headers={"Idempotency-Key": f"k{next(key)}"})
        assert response.status_code in (200, 201), response.text
        return response.json()

    post(chat, "/v1/feedback", {"message_id": a1, "thumbs": "down", "comment": ALICE_NOTE})
    assert post(r1, "/api/review/claim")["conversation"][0]["content"] == ALICE_Q  # a stored response with the text
    for message_id, fix in ((a1, ALICE_FIX), (b1, BOB_FIX), (c1, KEPT_FIX)):
        post(admin, f"/api/review/items/{message_id}/correction", {"content": fix})
    post(admin, f"/api/review/items/{b1}/comment", {"text": BOB_NOTE})
    snapshot = post(admin, "/api/datasets", {"paraphrases": 1})
    assert hits(tmp_path / "var" / "datasets", BOB_Q, ALICE_FIX, KEPT_FIX, f"In other words: {BOB_Q}")

    assert admin.delete("/api/end-users/bob").status_code == 200
    assert hits(tmp_path, BOB_Q, BOB_FIX, BOB_NOTE) == []
    assert [m["content"] for m in admin.get(f"/api/conversations/{conv}").json()["messages"]][0] == ALICE_Q

    assert admin.delete("/api/end-users/alice").status_code == 200
    assert hits(tmp_path, ALICE_Q, ALICE_NOTE, ALICE_FIX, "Zebulon", "Ottoline") == []
    assert hits(tmp_path / "var" / "datasets", KEPT_Q, KEPT_FIX)  # the rest stays
    manifest = admin.get(f"/api/datasets/{snapshot['id']}").json()
    assert len(manifest["redactions"]) == 2
    assert 0 < sum(manifest["counts"]["sft"].values()) < sum(snapshot["counts"]["sft"].values())
    stack.close()



@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_deletion_reaches_run_folders_reports_and_the_eval_cache(server_with, tmp_path, admin_key, service_key):
    """A retrain run trains on a snapshot holding Alice's words; a real model may echo them into the gates'
    cached answers and the report quoting those (the tiny model never does, so those files are written here as
    the evaluators write them). After her deletion no file under the data dir, nor the database file, holds
    them; what is not hers stays."""
    import html
    import json

    from tests.retrain.training.helpers import fast_config
    from tests.retrain.training.test_runs import wait_for

    server = server_with(MAX_TOKENS="6")
    admin, chat = server.client(admin_key), server.client(service_key)
    for i, (question, fix, user) in enumerate([(f"{ALICE_Q} {n}", f"{ALICE_FIX} {n}", "alice") for n in range(4)]
                                               + [(f"{KEPT_Q} {n}", f"{KEPT_FIX} {n}", "carol") for n in range(4)]):
        reply = ask(chat, [{"role": "user", "content": question}], user)["hitl"]["message_id"]
        corrected = admin.post(f"/api/review/items/{reply}/correction", json={"content": fix})
        assert corrected.status_code in (200, 201), corrected.text
    snapshot = admin.post("/api/datasets", json={"validation_fraction": 0, "test_fraction": 0.25}).json()
    folder = Path(admin.get(f"/api/datasets/{snapshot['id']}").json()["path"])
    config = fast_config(folder)
    config["sft"]["min_rows"] = 2
    started = admin.post("/api/retrain/runs", json={"config": config})
    assert started.status_code == 202, started.text
    run = wait_for(started.json()["id"])
    assert run.status.value == "succeeded", (run.error, run.reason)
    var = tmp_path / "var"
    echo = f"You asked: {ALICE_Q} 0"
    (var / "eval-cache" / "base").mkdir(parents=True, exist_ok=True)
    (var / "eval-cache" / "base" / "answers-alice.json").write_text(json.dumps([echo, "Paris."]))
    (var / "eval-cache" / "base" / "answers-carol.json").write_text(json.dumps([f"You asked: {KEPT_Q} 0"]))
    reports = var / "reports" / run.candidate_version  # as evaluators.report writes them: JSON, and HTML quoting it
    reports.mkdir(parents=True)
    report = {"candidate": run.candidate_version, "results": [{"name": "golden", "details": {"echo": echo,
                                                                                            "kept": KEPT_Q}}]}
    (reports / "report.json").write_text(json.dumps(report, indent=2))
    (reports / "report.html").write_text(f"<pre>{html.escape(json.dumps(report['results'], indent=2))}</pre>")
    with Path(run.log_path).open("a") as log:
        log.write(f"sample: {echo}\n")
    assert len(hits(var / "eval-cache", "Zebulon")) == 1 and hits(var / "reports", "Zebulon")

    assert admin.delete("/api/end-users/alice").status_code == 200
    assert hits(tmp_path, "Zebulon", "Wisteria") == []
    assert hits(var / "eval-cache", KEPT_Q) and hits(var / "reports", KEPT_Q)  # the rest stays
    report = json.loads((var / "reports" / run.candidate_version / "report.json").read_text())
    assert report["results"][0]["details"] == {"echo": "You asked: [redacted: privacy deletion]", "kept": KEPT_Q}
    from service.backends.local import load_model

    with session_scope() as session:
        version = session.get(ModelVersion, run.candidate_version)
    load_model(version.base_path, version.adapter_path, device="cpu")  # the candidate is untouched
    admin.close()
    chat.close()
