"""Webhooks (core/webhooks.py) against a real local HTTP receiver: a rejected nightly run, a skipped one, retries
with backoff, a receiver that never answers, the review queue depth, and the admin page that shows deliveries."""

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from sqlmodel import select

from tests.conftest import LiveServer, _free_port, make_key


class Receiver:
    """A real HTTP server that records every POST and answers with the next of `codes` (then 200)."""

    def __init__(self, codes: list[int] | None = None):
        self.codes, self.posts, self.lock = list(codes or []), [], threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.posts.append({"at": time.monotonic(), "path": self.path, "headers": dict(self.headers),
                                           "json": json.loads(body)})
                    code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n:
            assert time.monotonic() < deadline, f"receiver got {len(self.posts)} posts, expected {n}"
            time.sleep(0.05)
        return self.posts

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooks(settings, monkeypatch):
    """`hooks(receiver_url=[events], ..., **HITL_settings)`: set webhooks and settings, fresh Settings."""
    from core.settings import get_settings

    def configure(targets: dict[str, list[str]], **env) -> None:
        monkeypatch.setenv("HITL_WEBHOOKS", json.dumps([{"url": u, "events": e} for u, e in targets.items()]))
        monkeypatch.setenv("HITL_WEBHOOK_POLL_S", "0.1")
        for name, value in env.items():
            monkeypatch.setenv(f"HITL_{name}", str(value))
        get_settings.cache_clear()

    yield configure
    get_settings.cache_clear()


def deliveries():
    from core.db import session_scope
    from core.models import WebhookDelivery

    with session_scope() as s:
        return list(s.exec(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def wait_for(predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_a_rejected_nightly_run_posts_to_the_receiver_and_shows_on_the_admin_page(
        settings, hooks, receiver, monkeypatch, tmp_path, admin_key):
    """The scheduler's job makes a real run (snapshot, 2 training steps on the tiny model, candidate registered);
    only the gates' verdict is given (rejected, with reasons) so the test does not decode the gate sets. The run is
    finished in this process; the server's dispatcher posts the event."""
    import evaluators.gate as gate_module
    from hitl import pipeline
    from hitl.app import create_app
    from retrain.training import tasks
    from retrain.training.models import RunStatus
    from tests.retrain.training.helpers import fast_config, write_snapshot
    from tests.ui.test_session import sign_in

    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump(fast_config(write_snapshot(tmp_path / "snap", kinds=("sft",)), evaluate=True)))
    other = Receiver()  # subscribed to promotions only: gets nothing
    hooks({receiver.url: ["run.rejected"], other.url: ["run.promoted"]}, RETRAIN_CONFIG=config,
          RETRAIN_MIN_FEEDBACK=0)
    verdict = {"decision": "rejected", "passed": False, "outcome": "rejected",
               "reasons": ["forgetting: net drop 6.5%, upper bound 13.5% > margin 10%"]}
    monkeypatch.setattr(gate_module, "measure_champion", lambda settings: {})
    monkeypatch.setattr(gate_module, "evaluate_and_decide", lambda run_id: verdict)
    monkeypatch.setattr(tasks, "launch", lambda run_id, wait=False: pipeline.run_pipeline(run_id))
    try:
        with LiveServer(create_app()) as server:
            run_id = tasks.scheduled_retrain()
            post = receiver.wait(1)[0]
            body = post["json"]
            assert body["event"] == "run.rejected" and body["data"]["run_id"] == run_id
            assert body["data"]["trigger"] == "schedule" and body["data"]["candidate_version"]
            assert body["data"]["gate_reasons"] == verdict["reasons"] and "forgetting" in body["text"]
            assert post["headers"]["X-Hitl-Event"] == "run.rejected"
            assert post["headers"]["X-Hitl-Event-Id"] == body["id"] and post["path"] == "/hook"
            rows = wait_for(lambda: [d for d in deliveries() if d.status == "delivered"])
            assert [(d.event, d.attempts, d.last_status_code) for d in rows] == [("run.rejected", 1, 200)]
            time.sleep(0.5)
            assert other.posts == []

            client, _ = sign_in(server, admin_key, "/admin/webhooks")
            page = client.get("/admin/webhooks")
            assert page.status_code == 200
            assert "run.rejected" in page.text and "delivered" in page.text and f"retrain run {run_id}" in page.text
            assert "127.0.0.1" in page.text and "/hook" not in page.text  # paths may hold tokens: not shown
            reviewer, _ = sign_in(server, make_key("reviewer"), "/admin")
            assert reviewer.get("/admin/webhooks").status_code == 403
    finally:
        other.close()
    from core.db import session_scope
    from retrain.training.models import RetrainRun

    with session_scope() as s:
        assert s.get(RetrainRun, run_id).status == RunStatus.rejected


def test_a_skipped_nightly_run_is_posted_with_its_reason(settings, hooks, receiver):
    from hitl.app import start_webhooks
    from retrain.training import tasks

    hooks({receiver.url: []}, RETRAIN_MIN_FEEDBACK=1000)
    dispatcher = start_webhooks()
    try:
        run_id = tasks.scheduled_retrain()
        body = receiver.wait(1)[0]["json"]
    finally:
        dispatcher.stop()
    assert body["event"] == "run.skipped" and body["data"]["run_id"] == run_id
    assert "too little new feedback" in body["data"]["reason"] and "< minimum 1000" in body["text"]


def test_failed_posts_are_retried_with_backoff_until_delivered(settings, hooks):
    from core import webhooks
    from core.db import session_scope

    receiver = Receiver(codes=[500, 503])  # two failures, then 200
    hooks({receiver.url: []}, WEBHOOK_BACKOFF_S="0.3", WEBHOOK_MAX_ATTEMPTS="5")
    try:
        with session_scope() as s:
            event_id = webhooks.notify(s, "run.failed", "hitl: retrain run 7 failed: boom", {"run_id": 7})
        dispatcher = webhooks.Dispatcher().start()
        try:
            posts = receiver.wait(3)
            row = wait_for(lambda: [d for d in deliveries() if d.status == "delivered"])[0]
        finally:
            dispatcher.stop()
    finally:
        receiver.close()
    assert {p["json"]["id"] for p in posts} == {event_id}  # the same event each time: receivers can dedupe
    gaps = [b["at"] - a["at"] for a, b in zip(posts, posts[1:])]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # backoff doubles
    assert row.attempts == 3 and row.last_status_code == 200 and row.last_error is None


def test_a_receiver_that_never_answers_fails_after_the_last_attempt(settings, hooks):
    from core import webhooks
    from core.db import session_scope

    dead = f"http://127.0.0.1:{_free_port()}/nobody"
    hooks({dead: ["canary.rollback"]}, WEBHOOK_BACKOFF_S="0.05", WEBHOOK_MAX_ATTEMPTS="3")
    with session_scope() as s:
        assert webhooks.notify(s, "run.failed", "not subscribed", {}) is None
        webhooks.notify(s, "canary.rollback", "hitl: canary rollback", {"challenger": "v2"})
    dispatcher = webhooks.Dispatcher().start()
    try:
        row = wait_for(lambda: [d for d in deliveries() if d.status == "failed"])[0]
    finally:
        dispatcher.stop()
    assert row.attempts == 3 and row.last_status_code is None and "ConnectError" in row.last_error
    assert len(deliveries()) == 1


def test_bad_webhook_settings_are_refused_with_the_reason(monkeypatch):
    from pydantic import ValidationError

    from core.settings import Settings

    for value, expected in (('[{"url": "ftp://x/y"}]', "http(s)"), ('[{"url": "http://x", "events": ["nope"]}]',
                                                                    "unknown webhook events ['nope']")):
        monkeypatch.setenv("HITL_WEBHOOKS", value)
        with pytest.raises(ValidationError, match=re.escape(expected)):
            Settings()


def test_the_review_queue_depth_notifies_once_when_reached_and_once_when_back_below(settings, hooks, receiver,
                                                                                   admin_key):
    from core.db import session_scope
    from feedback import tasks
    from feedback.models import ReviewItem
    from hitl.app import create_app

    hooks({receiver.url: ["review_queue.depth"]}, WEBHOOK_QUEUE_DEPTH=2)
    records = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                "thumbs": "down"} for i in range(3)]
    with LiveServer(create_app()) as server, server.client(admin_key) as api:
        body = "".join(json.dumps(r) + "\n" for r in records[:1])
        assert api.post("/api/import", content=body, headers={"Content-Type": "application/x-ndjson"}).status_code == 200
        time.sleep(0.5)
        assert receiver.posts == []  # 1 < 2
        body = "".join(json.dumps(r) + "\n" for r in records[1:])
        assert api.post("/api/import", content=body, headers={"Content-Type": "application/x-ndjson"}).status_code == 200
        above = receiver.wait(1)[0]["json"]
        assert above["data"] == {"depth": 3, "threshold": 2, "state": "above"}
        time.sleep(0.5)
        assert len(receiver.posts) == 1  # still deep: no repeat
        with session_scope() as s:
            for item in s.exec(select(ReviewItem)):
                item.status = "done"
                s.add(item)
        below = receiver.wait(2)[1]["json"]
        assert below["data"]["state"] == "below" and below["data"]["depth"] == 0
    assert tasks.check_queue_depth() is None  # nothing changed since


def test_the_migration_matches_the_model(settings):
    """No pending autogenerate operation for the deliveries table (`alembic check`, scoped to it)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from core.db import engine_for

    with engine_for(settings.db_url).connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert [d for d in diffs if "webhookdelivery" in repr(d)] == []
