"""Webhooks: events the nightly loop raises, posted as JSON to the URLs of `HITL_WEBHOOKS`.

`notify(session, event, text, data)` writes one `WebhookDelivery` row per subscribed URL in the caller's
transaction (an outbox: an event is delivered if and only if what raised it was committed, even when the
process that raised it exits at once, like a retrain's). A `Dispatcher` thread in `hitl serve` and
`hitl scheduler` posts due rows; a failed post (connection error, timeout, any non-2xx answer) is retried
after `webhook_backoff_s * 2**(attempt-1)` seconds, up to `webhook_max_attempts`, then the row is `failed`.
Every attempt is logged and its outcome kept on the row (admin page `/admin/webhooks`).

Upstream URLs come from settings only: no request can name one. Claims are leased in the
database, so several dispatchers (replicas, a dedicated scheduler) never post the same row at once.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, Field as PydanticField, field_validator
from sqlmodel import Session, col, select

from core.models import DeliveryStatus, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

EVENTS = {
    "run.skipped": "a retrain run was skipped (too little new feedback, lock held, nothing to train)",
    "run.failed": "a retrain run failed (error, or its process died)",
    "run.promoted": "a run's candidate passed the gates and is the champion",
    "run.succeeded": "a run finished without a promotion decision (made challenger, or evaluation off)",
    "run.rejected": "a run's candidate failed the gates",
    "run.insufficient_evidence": "a required gate lacked data; the candidate was not promoted",
    "canary.rollback": "the canary retired the challenger (harm, expiry, or a stale parent)",
    "review_queue.depth": "the open review queue reached `HITL_WEBHOOK_QUEUE_DEPTH` (state `above`), or fell "
                          "back below it (state `below`)",
}
CLAIM_S = 60  # a claimed row is another dispatcher's again after this long (its process died mid-post)


class WebhookTarget(BaseModel):
    """One entry of `HITL_WEBHOOKS`: where to post and which events (none: all)."""

    url: str = PydanticField(description="http(s) URL the events are posted to")
    events: list[str] = PydanticField(default_factory=list, description="event names; empty: every event")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook url must be http(s)://host/...: {url!r}")
        return url

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(EVENTS))
        if unknown:
            raise ValueError(f"unknown webhook events {unknown}; known: {sorted(EVENTS)}")
        return events

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


def targets() -> list[WebhookTarget]:
    from core.settings import get_settings

    return list(get_settings().webhooks)


def subscribed(event: str) -> bool:
    return any(t.wants(event) for t in targets())


def notify(session: Session, event: str, text: str, data: dict[str, Any]) -> str | None:
    """Queue `event` for every subscribed URL in the caller's transaction (flush only); returns its id.

    The payload: `{"event", "id", "created_at", "text", "data"}`; `text` is one readable line (Slack's
    incoming webhooks and compatible chat tools show it as the message)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    wanted = [t for t in targets() if t.wants(event)]
    if not wanted:
        return None
    event_id = uuid.uuid4().hex
    payload = {"event": event, "id": event_id, "created_at": utcnow().isoformat(), "text": text, "data": data}
    for target in wanted:
        session.add(WebhookDelivery(event_id=event_id, event=event, url=target.url, payload=payload))
    session.flush()
    log.info("webhook event %s queued for %d url(s): %s", event, len(wanted), text)
    return event_id


def last_payload(session: Session, event: str) -> dict[str, Any] | None:
    """The payload of the latest `event` queued (for edge-triggered events such as the queue depth)."""
    row = session.exec(select(WebhookDelivery).where(WebhookDelivery.event == event)
                       .order_by(col(WebhookDelivery.id).desc()).limit(1)).first()
    return row.payload if row is not None else None


def _claim(engine: sa.Engine, row_id: int, now: datetime) -> bool:
    """Take the row for one attempt: false when another dispatcher holds it or it was finished meanwhile."""
    table = WebhookDelivery.__table__
    free = sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now)
    with engine.begin() as conn:
        done = conn.execute(table.update().where(table.c.id == row_id, table.c.status == DeliveryStatus.pending,
                                                 free).values(claimed_until=now + timedelta(seconds=CLAIM_S)))
        return done.rowcount == 1


def deliver_due(limit: int = 50, client: httpx.Client | None = None) -> int:
    """Post every due pending delivery once; returns how many were attempted."""
    from core.db import get_engine, session_scope
    from core.settings import get_settings

    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        due = list(session.exec(
            select(WebhookDelivery).where(WebhookDelivery.status == DeliveryStatus.pending,
                                          WebhookDelivery.next_attempt_at <= now)
            .order_by(col(WebhookDelivery.next_attempt_at)).limit(limit)))
    if not due:
        return 0
    own = client is None
    client = client or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)
    attempted = 0
    try:
        for row in due:
            if not _claim(get_engine(), row.id, utcnow()):
                continue
            attempted += 1
            _attempt(row, client, settings)
    finally:
        if own:
            client.close()
    return attempted


def _attempt(row: WebhookDelivery, client: httpx.Client, settings) -> None:
    from core.db import session_scope

    code, error = None, None
    try:
        response = client.post(row.url, json=row.payload, headers={
            "User-Agent": "hitl-webhooks", "X-Hitl-Event": row.event, "X-Hitl-Event-Id": row.event_id})
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    with session_scope() as session:
        fresh = session.get(WebhookDelivery, row.id)
        fresh.attempts += 1
        fresh.last_status_code, fresh.last_error, fresh.claimed_until = code, error, None
        if error is None:
            fresh.status, fresh.delivered_at = DeliveryStatus.delivered, utcnow()
            log.info("webhook %s #%s delivered to %s (attempt %d)", row.event, row.id, row.url, fresh.attempts)
        elif fresh.attempts >= settings.webhook_max_attempts:
            fresh.status = DeliveryStatus.failed
            log.error("webhook %s #%s to %s failed for good after %d attempts: %s", row.event, row.id, row.url,
                      fresh.attempts, error)
        else:
            delay = settings.webhook_backoff_s * 2 ** (fresh.attempts - 1)
            fresh.next_attempt_at = utcnow() + timedelta(seconds=delay)
            log.warning("webhook %s #%s to %s: attempt %d failed (%s); retry in %.1f s", row.event, row.id, row.url,
                        fresh.attempts, error, delay)
        session.add(fresh)


def recent(session: Session, limit: int = 100) -> list[WebhookDelivery]:
    return list(session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.id).desc()).limit(limit)))


class Dispatcher:
    """A daemon thread: every `webhook_poll_s`, run `checks` (event sources that poll, e.g. the review queue
    depth) and post due deliveries. Started only when `HITL_WEBHOOKS` names a URL."""

    def __init__(self, checks: list[Callable[[], Any]] | None = None):
        self.checks = checks or []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Dispatcher":
        if targets() and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hitl-webhooks", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        from core.settings import get_settings

        while not self._stop.is_set():
            started = time.monotonic()
            for job in [*self.checks, deliver_due]:
                try:
                    job()
                except Exception:  # a database blip: next round
                    log.exception("webhooks: %s failed", getattr(job, "__name__", job))
            self._stop.wait(max(0.0, get_settings().webhook_poll_s - (time.monotonic() - started)))
