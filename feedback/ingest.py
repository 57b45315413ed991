"""Group commit for end-user feedback (`POST /v1/feedback`), the high-volume write path.

A commit costs one fsync (SQLite WAL + synchronous=FULL, PostgreSQL synchronous_commit=on), about
10 ms on a plain disk, so one transaction per request caps ingestion near 100 writes/s. Here each
request hands its write to one writer thread per database; the thread takes every write waiting,
stores them in ONE transaction (existence checks, rows, audit events, queue updates, idempotency
records) and commits once. A request is answered only after the commit that holds its write, so
every acknowledged write survives a crash, exactly as with a commit per request.

If a batch fails as a whole (e.g. a message deleted concurrently on PostgreSQL), its writes are
retried one transaction each, so one bad write cannot fail its neighbours.
"""

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import create_engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from core.auth import bearer, hash_key, user_for_key
from core.db import session_scope, sqlite_pragmas
from core.models import Role
from core.settings import Settings, get_settings
from feedback import service
from feedback.service import Outcome, ThumbsWrite

log = logging.getLogger("hitl.feedback")
MAX_BATCH = 512
PG_WRITERS = 4


class GroupWriter:
    """Writer threads for one database URL that commit queued writes in batches."""

    def __init__(self, url: str, settings: Settings):
        self.url, self.settings = url, settings
        self.queue: queue.SimpleQueue[tuple[ThumbsWrite, Future]] = queue.SimpleQueue()
        # SQLite has one writer anyway; PostgreSQL overlaps a few batches' round trips and fsyncs
        count = 1 if url.startswith("sqlite") else PG_WRITERS
        self.threads = [threading.Thread(target=self._run, args=(_writer_engine(url),), name="feedback-writer",
                                         daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    async def submit(self, write: ThumbsWrite) -> Outcome:
        future: Future = Future()
        self.queue.put((write, future))
        return await asyncio.wrap_future(future)

    def _run(self, engine) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outcomes = self._commit(engine, [w for w, _ in batch])
            except Exception:
                log.warning("feedback batch of %d failed; retrying one by one", len(batch), exc_info=True)
                outcomes = [self._commit_one(engine, w) for w, _ in batch]
            for (_, future), outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _commit(self, engine, writes: list[ThumbsWrite]) -> list[Outcome]:
        with Session(engine, expire_on_commit=False) as session:
            try:
                outcomes = service.record_thumbs_batch(session, writes, self.settings)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        return outcomes

    def _commit_one(self, engine, write: ThumbsWrite) -> Outcome | BaseException:
        try:
            return self._commit(engine, [write])[0]
        except IntegrityError:
            return Outcome(404, f"message '{write.message_id}' not found")
        except Exception as exc:  # surfaced to the request as a 500
            return exc


def _writer_engine(url: str):
    """The writer's own single connection, so it never waits for the request pool (whose
    connections may all belong to requests waiting for this very writer)."""
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=StaticPool)  # a broken connection is invalidated and reopened
    engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", sqlite_pragmas)  # the same durability as every other connection
    return engine


_writers: dict[str, GroupWriter] = {}
_lock = threading.Lock()


def writer(settings: Settings) -> GroupWriter:
    url = settings.db_url
    with _lock:
        if url not in _writers:
            _writers[url] = GroupWriter(url, settings)
        _writers[url].settings = settings  # the newest settings (rubric, k) apply to the next batch
        return _writers[url]


# ---------------------------------------------------------------------------------------------- caller

KEY_TTL_S = 5.0
_callers: dict[tuple[str, str], tuple[float, int, Role]] = {}


async def service_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> int:
    """The id of the service (or admin) key's user, for the hot `/v1/feedback` path. Same rules as
    `core.auth` (401 unknown or inactive key, 403 other roles), but the key lookup is cached for
    KEY_TTL_S seconds so a write does not pay a database round trip and two thread hops for it;
    a deactivated key therefore stops working here within 5 seconds."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key", {"WWW-Authenticate": "Bearer"})
    cache_key = (get_settings().db_url, hash_key(credentials.credentials))
    now = time.monotonic()
    hit = _callers.get(cache_key)
    if hit is None or hit[0] < now:
        found = await run_in_threadpool(_lookup, credentials.credentials)
        if found is None:
            _callers.pop(cache_key, None)
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", {"WWW-Authenticate": "Bearer"})
        hit = _callers[cache_key] = (now + KEY_TTL_S, *found)
    _, user_id, role = hit
    if role not in (Role.service, Role.admin):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role '{role}' may not do this")
    return user_id


def _lookup(key: str) -> tuple[int, Role] | None:
    with session_scope() as session:
        user = user_for_key(session, key)
        return None if user is None else (user.id, user.role)
