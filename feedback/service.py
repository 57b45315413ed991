"""Feedback logic: thumbs, the review queue with leases, reviewer feedback, privacy deletions and
the audit trail. Functions take `session` first and only flush; the request or job commits."""

import contextlib
import difflib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import delete, event, exists, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from core.models import Role, User, utcnow
from core.settings import Settings
from feedback.models import (
    AuditEvent, Candidate, Comment, Comparison, ComparisonChoice, Correction, Deletion, Flag, IdempotencyRecord,
    Rating, ReviewClaim, ReviewClaimStatus, ReviewItem, ReviewItemStatus, Thumbs, ThumbsValue,
)
from service.models import Conversation, Message

THUMBS_DOWN_PRIORITY = 0.5
SYNC_BATCH = 5000


# ---------------------------------------------------------------------------------------------- audit


def audit(session: Session, actor: User | None, action: str, entity: str, entity_id: Any = None,
          message_id: str | None = None, before: dict | None = None, after: dict | None = None) -> None:
    """Record one write (who, what, when, before/after) in the same transaction as the write."""
    session.add(AuditEvent(actor_id=actor.id if actor else None, action=action, entity=entity,
                           entity_id=None if entity_id is None else str(entity_id), message_id=message_id,
                           before=before, after=after))


def snapshot(row: Any, exclude: tuple[str, ...] = ()) -> dict:
    return row.model_dump(mode="json", exclude=set(exclude))


def audit_user(session: Session, actor: User | None, action: str, user: User, before: dict | None = None) -> None:
    """A key created, revoked or reactivated (`user.create`, `user.revoke`, `user.reactivate`); no key hash."""
    audit(session, actor, action, "user", user.id, before=before, after=snapshot(user, exclude=("key_hash",)))


def audit_page(session: Session, *, after_id: int = 0, limit: int = 100, actor_id: int | None = None,
               action: str | None = None, message_id: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.id > after_id)
    if actor_id is not None:
        query = query.where(AuditEvent.actor_id == actor_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if message_id:
        query = query.where(AuditEvent.message_id == message_id)
    return list(session.exec(query.order_by(col(AuditEvent.id)).limit(limit)))


# ---------------------------------------------------------------------------------------------- messages


def assistant_message(session: Session, message_id: str) -> Message:
    message = session.get(Message, message_id)
    if message is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"message '{message_id}' not found")
    if message.role != "assistant" or message.from_client:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "feedback targets served assistant replies only")
    return message


def context_of(session: Session, message: Message) -> list[Message]:
    """The conversation up to and including `message`."""
    query = (select(Message).where(Message.conversation_id == message.conversation_id,
                                   Message.position <= message.position).order_by(col(Message.position)))
    return list(session.exec(query))


# ---------------------------------------------------------------------------------------------- thumbs


@dataclass
class ThumbsWrite:
    user_id: int
    message_id: str
    thumbs: ThumbsValue
    comment: str | None
    key: str | None = None  # Idempotency-Key
    fingerprint: str | None = None


@dataclass
class Outcome:
    status_code: int
    payload: Any  # the response body, or the error detail for 4xx
    replayed: bool = False


def record_thumbs_batch(session: Session, writes: list[ThumbsWrite], settings: Settings) -> list[Outcome]:
    """Store many end-user thumbs in the session's transaction with a handful of set-based
    statements on the raw DB-API cursor (one existence check, one insert each for rows, audit events
    and idempotency records; queue updates for thumbs-down). Returns one outcome per write, in order.
    This is the ingestion hot path, hence plain SQL instead of the ORM."""
    lock_for_write(session)
    sql = _RawSQL(session)
    with sql.pipeline():  # PostgreSQL: both queries in one round trip
        found = sql.lookup("SELECT id, role = 'assistant' AND NOT from_client FROM message WHERE id",
                           sorted({w.message_id for w in writes}))
        spare_ids = sql.next_ids("thumbs", len(writes))  # gaps in ids are harmless
    served = dict(found.fetchall())  # message id -> a reply of the served model
    outcomes: list[Outcome | None] = [None] * len(writes)
    owners: dict[tuple[int, str], int] = {}  # (user, key) -> index of the write that runs it
    fresh: list[int] = []
    for i, w in enumerate(writes):
        if w.message_id not in served:
            outcomes[i] = Outcome(404, f"message '{w.message_id}' not found")
        elif not served[w.message_id]:
            outcomes[i] = Outcome(422, "feedback targets served assistant replies only")
        elif w.key is None:
            fresh.append(i)
        elif (w.user_id, w.key) not in owners:  # later retries inside the batch are answered below
            owners[(w.user_id, w.key)] = i
    records = _reserve_keys(sql, writes, owners, outcomes)
    fresh = sorted(fresh + [owners[k] for k in records])
    now = utcnow()
    if fresh:
        ids = [row[0] for row in spare_ids.fetchall()][: len(fresh)]
        stamp = sql.timestamp(now)
        created = now.isoformat().replace("+00:00", "Z")
        thumbs_rows, events, answers = [], [], []
        for i, row_id in zip(fresh, ids):
            w = writes[i]
            out = {"id": row_id, "message_id": w.message_id, "thumbs": w.thumbs.value, "comment": w.comment,
                   "source": "end_user", "created_at": created}
            outcomes[i] = Outcome(201, out)
            thumbs_rows.append((row_id, w.message_id, w.thumbs.value, w.comment, "end_user", w.user_id, stamp))
            events.append((w.user_id, "thumbs.create", "thumbs", str(row_id), w.message_id,
                           json.dumps({**out, "user_id": w.user_id}), stamp))
            if (w.user_id, w.key) in records:
                answers.append((201, json.dumps(out), records[(w.user_id, w.key)]))
        downs = {writes[i].message_id for i in fresh if writes[i].thumbs == ThumbsValue.down}
        with sql.pipeline():  # PostgreSQL: every write below in one round trip
            sql.insert(Thumbs, ("id", "message_id", "thumbs", "comment", "source", "user_id", "created_at"),
                       thumbs_rows)
            sql.insert(AuditEvent, ("actor_id", "action", "entity", "entity_id", "message_id", "after", "created_at"),
                       events)
            if answers:
                sql.store_answers(answers)
            if downs:
                enqueue_many(session, downs, THUMBS_DOWN_PRIORITY, "thumbs_down", settings, sql)
    for i, w in enumerate(writes):
        if outcomes[i] is None:  # a retry of a key first seen earlier in this batch
            first = owners[(w.user_id, w.key)]
            outcomes[i] = (Outcome(outcomes[first].status_code, outcomes[first].payload, replayed=True)
                           if writes[first].fingerprint == w.fingerprint else
                           Outcome(422, "Idempotency-Key was already used with a different request"))
    return outcomes


def _reserve_keys(sql: "_RawSQL", writes: list[ThumbsWrite], owners: dict[tuple[int, str], int],
                  outcomes: list) -> dict[tuple[int, str], int]:
    """Insert the idempotency records of a batch (ON CONFLICT DO NOTHING); keys already stored get
    their stored response as outcome. Returns {(user, key): record id} for the keys this batch owns."""
    if not owners:
        return {}
    now = sql.timestamp(utcnow())
    params = [v for (user_id, key), i in sorted(owners.items()) for v in (user_id, key, writes[i].fingerprint, now)]
    values = ", ".join(f"({sql.marks(4)})" for _ in owners)  # sorted: one lock order across writers
    mine = {(u, k): rid for rid, u, k in sql.fetch(
        f"INSERT INTO idempotencyrecord (user_id, key, fingerprint, created_at) VALUES {values} "
        "ON CONFLICT (user_id, key) DO NOTHING RETURNING id, user_id, key", params)}
    for (user_id, key), i in owners.items():
        if (user_id, key) in mine:
            continue
        (fingerprint, code, response), = sql.fetch(
            f"SELECT fingerprint, status_code, response FROM idempotencyrecord WHERE user_id = {sql.mark} "
            f"AND key = {sql.mark}", (user_id, key))
        if isinstance(response, str):
            response = json.loads(response)
        outcomes[i] = (Outcome(422, "Idempotency-Key was already used with a different request")
                       if fingerprint != writes[i].fingerprint else
                       Outcome(409, "a request with this Idempotency-Key is still running") if code is None else
                       Outcome(code, response, replayed=True))
    return mine


class _RawSQL:
    """The session's DB-API connection with the dialect's parameter style (SQLite or PostgreSQL).
    Statements return their DB-API cursor; inside `pipeline()` PostgreSQL sends them without
    waiting for each answer (read results after the block)."""

    def __init__(self, session: Session):
        connection = session.connection()
        self.dialect, self.sa_dialect = connection.dialect.name, connection.dialect
        self.raw = connection.connection.dbapi_connection
        self.mark = "%s" if self.dialect == "postgresql" else "?"

    def pipeline(self):
        return self.raw.pipeline() if self.dialect == "postgresql" else contextlib.nullcontext()

    def run(self, statement: str, params=()):
        return self.raw.execute(statement, list(params))

    def fetch(self, statement: str, params=()) -> list[tuple]:
        cursor = self.run(statement, params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def lookup(self, statement: str, values: list, params: list = ()):
        """`statement IN values` (PostgreSQL: `= ANY(array)`, one constant text); `params` go first."""
        if self.dialect == "postgresql":
            return self.run(f"{statement} = ANY(%s)", [*params, values])
        return self.run(f"{statement} IN ({self.marks(len(values))})", [*params, *values])

    def marks(self, n: int) -> str:
        return ", ".join([self.mark] * n)

    def insert(self, model, columns: tuple[str, ...], rows: list[tuple], suffix: str = "") -> None:
        """INSERT many rows: executemany on SQLite (in-process); on PostgreSQL one statement over
        `unnest` of one array per column (one round trip, and the same text every time, so the
        server keeps it prepared)."""
        if not rows:
            return
        table = model.__table__
        target = f"{table.name} ({', '.join(columns)})"
        if self.dialect == "postgresql":
            types = [table.c[c].type.compile(dialect=self.sa_dialect) for c in columns]
            arrays = ", ".join(f"%s::{'text' if t == 'JSON' else t}[]" for t in types)
            picks = ", ".join(f"{c}::json" if t == "JSON" else c for c, t in zip(columns, types))
            self.run(f"INSERT INTO {target} SELECT {picks} FROM unnest({arrays}) AS u({', '.join(columns)}) {suffix}",
                     [list(col) for col in zip(*rows)])
            return
        self.raw.executemany(f"INSERT INTO {target} VALUES ({self.marks(len(columns))}) {suffix}", rows)

    def store_answers(self, answers: list[tuple[int, str, int]]) -> None:
        """Fill in idempotency records: (status_code, response JSON text, record id) each."""
        if self.dialect == "postgresql":
            codes, bodies, ids = (list(col) for col in zip(*answers))
            self.run("UPDATE idempotencyrecord AS r SET status_code = v.code, response = v.body::json "
                     "FROM unnest(%s::int[], %s::text[], %s::int[]) AS v(code, body, id) WHERE r.id = v.id",
                     [codes, bodies, ids])
            return
        self.raw.executemany("UPDATE idempotencyrecord SET status_code = ?, response = ? WHERE id = ?", answers)

    def next_ids(self, table: str, n: int):
        """A cursor over primary keys for n new rows: the sequence on PostgreSQL; on SQLite
        max(id)+1… (safe: the caller holds SQLite's single writer lock)."""
        if self.dialect == "postgresql":
            return self.run(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, %s)", [n])
        return self.run(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                        f"SELECT (SELECT coalesce(max(id), 0) FROM {table}) + i FROM n", [n])

    def timestamp(self, when):
        """What SQLAlchemy stores for a UTC datetime: the value itself on PostgreSQL, ISO text on SQLite."""
        return when if self.dialect == "postgresql" else when.strftime("%Y-%m-%d %H:%M:%S.%f")


def record_thumbs(session: Session, user: User, *, message_id: str, thumbs: ThumbsValue,
                  comment: str | None, settings: Settings) -> dict:
    """One end-user thumbs (a thumbs-down puts the reply at the front of the review queue)."""
    outcome = record_thumbs_batch(session, [ThumbsWrite(user.id, message_id, thumbs, comment)], settings)[0]
    if outcome.status_code >= 400:
        raise HTTPException(outcome.status_code, outcome.payload)
    return outcome.payload


def reserve_key(session: Session, user_id: int, key: str, fingerprint: str) -> tuple[int | None, Outcome | None]:
    """Claim an Idempotency-Key (INSERT … ON CONFLICT DO NOTHING); else the stored first response."""
    record_id = session.execute(_insert(session)(IdempotencyRecord).values(
        user_id=user_id, key=key, fingerprint=fingerprint, created_at=utcnow(),
    ).on_conflict_do_nothing(index_elements=["user_id", "key"]).returning(IdempotencyRecord.id)).scalar()
    if record_id is not None:
        return record_id, None
    record = session.exec(select(IdempotencyRecord).where(
        IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key,
    ).execution_options(populate_existing=True)).one()
    if record.fingerprint != fingerprint:
        return None, Outcome(422, "Idempotency-Key was already used with a different request")
    if record.status_code is None:
        return None, Outcome(409, "a request with this Idempotency-Key is still running")
    return None, Outcome(record.status_code, record.response, replayed=True)


def finish_key(session: Session, record_id: int, status_code: int, payload: Any) -> None:
    session.execute(update(IdempotencyRecord).where(IdempotencyRecord.id == record_id)
                    .values(status_code=status_code, response=payload))


# ---------------------------------------------------------------------------------------------- queue


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def enqueue(session: Session, message_id: str, priority: float, reason: str, settings: Settings) -> None:
    """Queue a message, or raise its priority if it is queued with a lower one (open items only)."""
    enqueue_many(session, {message_id}, priority, reason, settings)


def enqueue_many(session: Session, message_ids: set[str], priority: float, reason: str, settings: Settings,
                 sql: "_RawSQL | None" = None) -> None:
    sql, ids = sql or _RawSQL(session), sorted(message_ids)  # a fixed lock order
    now = sql.timestamp(utcnow())
    sql.insert(ReviewItem, ("message_id", "priority", "reason", "required_reviews", "status", "created_at", "updated_at"),
               [(m, priority, reason, settings.review_k, ReviewItemStatus.open.value, now, now) for m in ids],
               "ON CONFLICT (message_id) DO NOTHING")
    sql.lookup(f"UPDATE reviewitem SET priority = {sql.mark}, reason = {sql.mark}, updated_at = {sql.mark} "
               f"WHERE status = {sql.mark} AND (priority IS NULL OR priority > {sql.mark}) AND message_id", ids,
               [priority, reason, now, ReviewItemStatus.open.value, priority])


def queue_priority(mean_logprob: float | None, settings: Settings, rng: random.Random) -> tuple[float | None, str | None]:
    """Low confidence first (least confident earliest), then a random calibration sample."""
    if mean_logprob is not None and mean_logprob < settings.review_low_confidence:
        return 1.0 + math.exp(mean_logprob), "low_confidence"
    if rng.random() < settings.review_calibration_rate:
        return 2.0 + rng.random(), "calibration"
    return None, None


def sync_queue(session: Session, settings: Settings) -> int:
    """Look once at every assistant reply not yet seen by the queue and decide whether to queue it."""
    unseen = (
        select(Message.id, Message.mean_logprob)
        .where(Message.role == "assistant", col(Message.from_client).is_(False),
               ~exists().where(ReviewItem.message_id == Message.id))
        .limit(SYNC_BATCH)
    )
    rows = session.execute(unseen).all()
    if not rows:
        return 0
    rng, now = random.Random(), utcnow()
    values = []
    for message_id, logprob in rows:
        priority, reason = queue_priority(logprob, settings, rng)
        values.append(dict(message_id=message_id, priority=priority, reason=reason,
                           required_reviews=settings.review_k, status=ReviewItemStatus.open,
                           created_at=now, updated_at=now))
    session.execute(_insert(session)(ReviewItem).values(values).on_conflict_do_nothing(index_elements=["message_id"]))
    return len(rows)


def _held(now):
    return (ReviewClaim.status == ReviewClaimStatus.active) & (col(ReviewClaim.lease_expires_at) > now)


def lock_for_write(session: Session) -> None:
    """SQLite: take the single writer lock now (BEGIN IMMEDIATE) so read-then-write is atomic.
    PostgreSQL needs nothing here: claims lock their row with FOR UPDATE SKIP LOCKED."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if not raw.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def current_claim(session: Session, reviewer: User, now=None) -> ReviewClaim | None:
    now = now or utcnow()
    query = select(ReviewClaim).where(ReviewClaim.reviewer_id == reviewer.id, _held(now))
    return session.exec(query.order_by(col(ReviewClaim.id))).first()


def claim(session: Session, reviewer: User, settings: Settings) -> ReviewClaim | None:
    """Lease the next item to `reviewer`, or return the one it already holds; None when the queue is
    empty. An item is free while it has fewer held-or-submitted claims than it needs reviews."""
    lock_for_write(session)
    now = utcnow()
    held = current_claim(session, reviewer, now)
    if held is not None:
        return held
    sync_queue(session, settings)
    taken = (select(func.count()).select_from(ReviewClaim)
             .where(ReviewClaim.message_id == ReviewItem.message_id,
                    or_(ReviewClaim.status == ReviewClaimStatus.submitted, _held(now)))
             .scalar_subquery())
    seen = exists().where(
        ReviewClaim.message_id == ReviewItem.message_id, ReviewClaim.reviewer_id == reviewer.id,
        or_(col(ReviewClaim.status).in_([ReviewClaimStatus.submitted, ReviewClaimStatus.skipped]), _held(now)),
    )
    query = (
        select(ReviewItem)
        .where(ReviewItem.status == ReviewItemStatus.open, col(ReviewItem.priority).is_not(None),
               taken < ReviewItem.required_reviews, ~seen)
        .order_by(col(ReviewItem.priority), col(ReviewItem.created_at), col(ReviewItem.message_id))
        .limit(1)
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        query = query.with_for_update(skip_locked=True, of=ReviewItem)
    item = _gold_due(session, reviewer, settings, seen)
    passed_over: list[str] = []
    while item is None:
        item = session.exec(query.where(col(ReviewItem.message_id).not_in(passed_over))).first()
        if item is None:
            return None
        # PostgreSQL: the row lock was taken after this statement's snapshot, so a claim committed in
        # between is invisible to it; count again (a new snapshot) now that the item is locked.
        if not postgres or _claims_taken(session, item.message_id, now) < item.required_reviews:
            break
        passed_over.append(item.message_id)
        item = None
    row = ReviewClaim(message_id=item.message_id, reviewer_id=reviewer.id,
                      lease_expires_at=now + timedelta(minutes=settings.review_lease_minutes))
    session.add(row)
    session.flush()
    audit(session, reviewer, "claim.create", "reviewclaim", row.id, item.message_id, after=snapshot(row))
    return row


def _gold_due(session: Session, reviewer: User, settings: Settings, seen) -> ReviewItem | None:
    """A gold item the reviewer has not seen, when gold is due: its finished claims (submitted or
    skipped) include fewer gold items than `review_gold_rate` of them, counting this one (1 in 10 at
    0.1: the 10th, 20th, ... claim). Gold items are served to every reviewer, whatever their status
    or k, so each reviewer's reliability is measured even when items get a single review."""
    rate = settings.review_gold_rate
    if rate <= 0:
        return None
    is_gold = col(ReviewItem.gold_scores).is_not(None)
    if session.execute(select(func.count()).select_from(ReviewItem).where(is_gold)).scalar_one() == 0:
        return None
    done = col(ReviewClaim.status).in_([ReviewClaimStatus.submitted, ReviewClaimStatus.skipped])
    finished = session.execute(select(func.count()).select_from(ReviewClaim).where(
        ReviewClaim.reviewer_id == reviewer.id, done)).scalar_one()
    gold_done = session.execute(select(func.count()).select_from(ReviewClaim).join(
        ReviewItem, ReviewItem.message_id == ReviewClaim.message_id).where(
        ReviewClaim.reviewer_id == reviewer.id, done, is_gold)).scalar_one()
    if gold_done >= int(rate * (finished + 1) + 1e-9):
        return None
    return session.exec(select(ReviewItem).where(is_gold, ~seen)
                        .order_by(col(ReviewItem.created_at), col(ReviewItem.message_id)).limit(1)).first()


def _claims_taken(session: Session, message_id: str, now) -> int:
    return session.execute(select(func.count()).select_from(ReviewClaim).where(
        ReviewClaim.message_id == message_id,
        or_(ReviewClaim.status == ReviewClaimStatus.submitted, _held(now)))).scalar_one()


def held_claim(session: Session, user: User, message_id: str) -> ReviewClaim:
    """The caller's live lease on `message_id`. Items held by others look like they do not exist."""
    latest = session.exec(
        select(ReviewClaim).where(ReviewClaim.message_id == message_id, ReviewClaim.reviewer_id == user.id)
        .order_by(col(ReviewClaim.id).desc())
    ).first()
    if latest is None or latest.status != ReviewClaimStatus.active:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item '{message_id}' is not held by you")
    if latest.lease_expires_at <= utcnow():
        raise HTTPException(status.HTTP_409_CONFLICT, f"your lease on '{message_id}' expired; claim again")
    return latest


def writable_message(session: Session, user: User, message_id: str) -> Message:
    """Reviewers write only on items they hold; admins on any assistant reply."""
    if user.role != Role.admin:
        held_claim(session, user, message_id)
    return assistant_message(session, message_id)


def finish_claim(session: Session, user: User, message_id: str, new_status: ReviewClaimStatus,
                 reason: str | None = None) -> ReviewClaim:
    row = held_claim(session, user, message_id)
    before = snapshot(row)
    row.status, row.finished_at, row.reason = new_status, utcnow(), reason
    session.add(row)
    session.flush()
    audit(session, user, f"claim.{new_status.value}", "reviewclaim", row.id, message_id, before, snapshot(row))
    if new_status == ReviewClaimStatus.submitted:
        _maybe_done(session, user, message_id)
    return row


def _maybe_done(session: Session, user: User, message_id: str) -> None:
    item = session.get(ReviewItem, message_id)
    if item is None or item.status != ReviewItemStatus.open:
        return
    submitted = session.execute(select(func.count()).select_from(ReviewClaim).where(
        ReviewClaim.message_id == message_id, ReviewClaim.status == ReviewClaimStatus.submitted)).scalar_one()
    if submitted >= item.required_reviews:
        before = snapshot(item)
        item.status, item.updated_at = ReviewItemStatus.done, utcnow()
        session.add(item)
        session.flush()
        audit(session, user, "item.done", "reviewitem", message_id, message_id, before, snapshot(item))


def set_gold(session: Session, admin: User, message_id: str, scores: dict[str, int], settings: Settings) -> ReviewItem:
    """Mark a reply as a gold item with known scores and mix it into the queue."""
    assistant_message(session, message_id)
    check_dimensions(scores, settings)
    enqueue(session, message_id, 1.0 + random.random(), "gold", settings)
    item = session.get(ReviewItem, message_id)
    session.refresh(item)
    before = snapshot(item)
    item.gold_scores, item.reason, item.updated_at = scores, "gold", utcnow()
    if item.priority is None or item.status != ReviewItemStatus.open:
        item.priority, item.status = 1.0 + random.random(), ReviewItemStatus.open
    session.add(item)
    session.flush()
    audit(session, admin, "item.gold", "reviewitem", message_id, message_id, before, snapshot(item))
    return item


# ---------------------------------------------------------------------------------------------- reviewer feedback


def check_dimensions(scores: dict[str, int], settings: Settings) -> None:
    unknown = sorted(set(scores) - set(settings.review_rubric))
    if unknown:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"unknown rubric dimensions {unknown}; the rubric is {settings.review_rubric}")


def rate(session: Session, user: User, message_id: str, scores: dict[str, int], comment: str | None,
         settings: Settings, adjudicated: bool = False) -> Rating:
    writable_message(session, user, message_id)
    check_dimensions(scores, settings)
    row = Rating(message_id=message_id, reviewer_id=user.id, scores=scores, comment=comment, adjudicated=adjudicated)
    return _store(session, user, row, "rating.create")


def correct(session: Session, user: User, message_id: str, content: str) -> Correction:
    message = writable_message(session, user, message_id)
    diff = "".join(difflib.unified_diff(
        message.content.splitlines(keepends=True), content.splitlines(keepends=True),
        fromfile=f"{message_id}/original", tofile=f"{message_id}/correction",
    ))
    row = Correction(message_id=message_id, reviewer_id=user.id, content=content, original=message.content, diff=diff)
    return _store(session, user, row, "correction.create")


def flag(session: Session, user: User, message_id: str, tags: list[str], comment: str | None) -> Flag:
    writable_message(session, user, message_id)
    return _store(session, user, Flag(message_id=message_id, reviewer_id=user.id, tags=tags, comment=comment),
                  "flag.create")


def comment(session: Session, user: User, message_id: str, text: str) -> Comment:
    writable_message(session, user, message_id)
    return _store(session, user, Comment(message_id=message_id, reviewer_id=user.id, text=text), "comment.create")


def candidate_context(session: Session, user: User, message_id: str) -> list[dict]:
    """The chat messages that preceded the reply: what the alternatives answer."""
    message = writable_message(session, user, message_id)
    return [{"role": m.role, "content": m.content} for m in context_of(session, message)[:-1]]


def store_candidates(session: Session, user: User, message_id: str, generated: list[tuple[str, str, int]]) -> list[Candidate]:
    writable_message(session, user, message_id)
    # NUL cannot be stored in PostgreSQL text and is never meaningful in a reply
    rows = [Candidate(message_id=message_id, content=text.replace("\x00", ""), model_version=version, seed=seed,
                      created_by=user.id)
            for text, version, seed in generated]
    return [_store(session, user, row, "candidate.create") for row in rows]


def compare(session: Session, user: User, message_id: str, candidate_a: int, candidate_b: int,
            choice: ComparisonChoice) -> Comparison:
    writable_message(session, user, message_id)
    if candidate_a == candidate_b:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "compare two different candidates")
    for cid in (candidate_a, candidate_b):
        found = session.get(Candidate, cid)
        if found is None or found.message_id != message_id:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"candidate {cid} was not generated for message '{message_id}'")
    row = Comparison(message_id=message_id, reviewer_id=user.id, candidate_a=candidate_a, candidate_b=candidate_b,
                     choice=choice)
    return _store(session, user, row, "comparison.create")


def _store(session: Session, user: User, row, action: str):
    session.add(row)
    session.flush()
    audit(session, user, action, type(row).__tablename__, row.id, row.message_id, after=snapshot(row))
    return row


# ---------------------------------------------------------------------------------------------- adjudication


def adjudicate(session: Session, admin: User, message_id: str, scores: dict[str, int], comment: str | None,
               settings: Settings, correction: str | None = None) -> Rating:
    """An admin's final scores for a disputed item (and, optionally, the final correction); it leaves the
    adjudication queue. Dataset builds then follow the admin: scores judged good keep the reply and
    drop its corrections; otherwise the admin's correction, else the reviewers' heaviest one, is used."""
    row = rate(session, admin, message_id, scores, comment, settings, adjudicated=True)
    if correction is not None:
        correct(session, admin, message_id, correction)
    item = session.get(ReviewItem, message_id)
    if item is None:  # e.g. corrected outside the queue: record the decision on a new, unqueued item
        item = ReviewItem(message_id=message_id, priority=None, reason="manual", required_reviews=settings.review_k)
        session.add(item)
        session.flush()
    before = snapshot(item)
    item.status, item.updated_at = ReviewItemStatus.adjudicated, utcnow()
    session.add(item)
    session.flush()
    audit(session, admin, "item.adjudicated", "reviewitem", message_id, message_id, before, snapshot(item))
    return row


# ---------------------------------------------------------------------------------------------- privacy


def delete_conversation(session: Session, admin: User, conversation_id: str, reason: str | None = None) -> Deletion:
    """Delete a conversation with its messages and feedback (cascade), and the conversations holding the other
    choices of its requests (`forked_from`); record the request forever."""
    if session.get(Conversation, conversation_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation '{conversation_id}' not found")
    forks = session.exec(select(Conversation.id).where(Conversation.forked_from == conversation_id))  # n > 1
    return _delete(session, admin, [conversation_id, *forks], conversation_id=conversation_id, reason=reason)


def delete_end_user(session: Session, admin: User, end_user: str, reason: str | None = None) -> Deletion:
    """Delete every conversation of an end user, and the messages (with the replies to them) they sent
    into other conversations; future builds also exclude any later conversations of theirs."""
    ids = list(session.exec(select(Conversation.id).where(Conversation.end_user == end_user)))
    return _delete(session, admin, ids, Message.end_user == end_user, end_user=end_user, reason=reason)


@dataclass
class Erasure:
    """What a privacy deletion removed, for the stores outside the database rows to erase too."""

    conversation_ids: set[str]
    message_ids: set[str]
    texts: set[str]  # the messages and every feedback text on them

    @property
    def needles(self) -> set[str]:
        return self.conversation_ids | self.message_ids | self.texts


# Called with the session and the `Erasure` of every deletion, before it commits (e.g. dataset snapshots,
# registered by the app: this domain cannot import retrain).
ERASERS: list[Callable[[Session, Erasure], None]] = []


def mentions(value: Any, needles: set[str]) -> bool:
    """Whether any string in a JSON value equals one of `needles` (exact: short texts match nothing else)."""
    if isinstance(value, str):
        return value in needles
    if isinstance(value, dict):
        return any(mentions(v, needles) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, needles) for v in value)
    return False


def _delete(session: Session, admin: User, ids: list[str], *also, **request) -> Deletion:
    messages = select(Message.id).where(or_(col(Message.conversation_id).in_(ids), *also))
    erasure = _erasure(session, ids, messages)
    if erasure.message_ids:
        # the audit trail keeps who/what/when but loses the deleted content
        session.execute(update(AuditEvent).where(col(AuditEvent.message_id).in_(messages))
                        .values(before=None, after={"redacted": "privacy deletion"}))
        stored = session.execute(select(IdempotencyRecord.id, IdempotencyRecord.response)
                                 .where(col(IdempotencyRecord.response).is_not(None))).all()
        replays = [rid for rid, response in stored if mentions(response, erasure.needles)]
        session.execute(delete(IdempotencyRecord).where(col(IdempotencyRecord.id).in_(replays)))
        session.execute(delete(Message).where(col(Message.id).in_(messages)))
        session.execute(delete(Conversation).where(col(Conversation.id).in_(ids)))
    row = Deletion(conversation_ids=ids, requested_by=admin.id, **request)
    session.add(row)
    session.flush()
    audit(session, admin, "deletion.create", "deletion", row.id, after=snapshot(row))
    for erase in ERASERS:
        erase(session, erasure)
    _checkpoint_after_commit(session)
    return row


def _erasure(session: Session, ids: list[str], messages) -> Erasure:
    texts = {t for (t,) in session.execute(select(Message.content).where(col(Message.id).in_(messages)))}
    for model, field in ((Thumbs, "comment"), (Rating, "comment"), (Correction, "content"), (Comment, "text"),
                         (Flag, "comment"), (Candidate, "content")):
        query = select(getattr(model, field)).where(col(model.message_id).in_(messages))
        texts.update(t for (t,) in session.execute(query) if t)
    return Erasure(set(ids), set(session.exec(messages)), texts)


def _checkpoint_after_commit(session: Session) -> None:
    """SQLite keeps the deleted rows' old pages in its write-ahead log: once the deletion commits, copy
    the log into the database (whose freed space `secure_delete` zeroes) and truncate it."""
    engine = session.get_bind()
    if engine.dialect.name != "sqlite":
        return

    def checkpoint(_session) -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    event.listen(session, "after_commit", checkpoint, once=True)


def deleted_conversation_ids(session: Session) -> set[str]:
    """Every conversation a privacy request names, including any (later) conversation of a deleted
    end user. Dataset builds must skip these, forever."""
    found: set[str] = set()
    end_users: set[str] = set()
    for deletion in session.exec(select(Deletion)):
        found.update(deletion.conversation_ids or [])
        if deletion.conversation_id:
            found.add(deletion.conversation_id)
        if deletion.end_user:
            end_users.add(deletion.end_user)
    if end_users:
        found.update(session.exec(select(Conversation.id).where(col(Conversation.end_user).in_(end_users))))
    return found


def deleted_end_users(session: Session) -> set[str]:
    return {u for u in session.exec(select(Deletion.end_user).where(col(Deletion.end_user).is_not(None)))}


# ---------------------------------------------------------------------------------------------- stats


def stats(session: Session) -> dict:
    """Counts for dashboards and `hitl review stats`."""
    def count(model, *where) -> int:
        return session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()

    now = utcnow()
    by_reason = dict(session.execute(
        select(ReviewItem.reason, func.count()).where(ReviewItem.status == ReviewItemStatus.open,
                                                      col(ReviewItem.priority).is_not(None))
        .group_by(ReviewItem.reason)).all())
    return {
        "feedback": {
            "thumbs_up": count(Thumbs, Thumbs.thumbs == ThumbsValue.up),
            "thumbs_down": count(Thumbs, Thumbs.thumbs == ThumbsValue.down),
            "ratings": count(Rating), "corrections": count(Correction), "candidates": count(Candidate),
            "comparisons": count(Comparison), "flags": count(Flag), "comments": count(Comment),
        },
        "queue": {
            "open": sum(by_reason.values()), "open_by_reason": by_reason,
            "done": count(ReviewItem, ReviewItem.status == ReviewItemStatus.done),
            "adjudicated": count(ReviewItem, ReviewItem.status == ReviewItemStatus.adjudicated),
            "gold": count(ReviewItem, col(ReviewItem.gold_scores).is_not(None)),
            "held": count(ReviewClaim, _held(now)),
            "skipped": count(ReviewClaim, ReviewClaim.status == ReviewClaimStatus.skipped),
        },
        "deletions": count(Deletion),
    }
