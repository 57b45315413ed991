"""`Idempotency-Key` for feedback POSTs: the first response is stored in the same transaction as
the write it describes, so a retry (even a concurrent one) replays it and stores nothing twice.

How concurrent retries stay single: the record is inserted first with `INSERT … ON CONFLICT DO
NOTHING`. On PostgreSQL a second insert of the same (user, key) waits for the first transaction and
then finds the committed row; on SQLite the insert waits for the single writer lock. Either way the
loser reads the winner's stored response instead of writing again. If the first request fails, its
transaction rolls back, the record disappears, and a retry runs for real.
"""

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from core.models import User, utcnow
from feedback.models import IdempotencyRecord

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200,
    description="Optional. A retry with the same key returns the first response and stores nothing twice.",
)]


def fingerprint(request: Request, body: BaseModel | None) -> str:
    payload = body.model_dump(mode="json") if body is not None else None
    raw = json.dumps([request.method, request.url.path, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def lookup(session: Session, user: User, key: str, fp: str) -> Response | None:
    """The stored response for this key, or None when the key is new (read only, takes no lock)."""
    record = session.exec(
        select(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id, IdempotencyRecord.key == key)
    ).first()
    return None if record is None else _replay(record, fp)


def reserve(session: Session, user: User, key: str, fp: str) -> tuple[int | None, Response | None]:
    """Insert the record for `key`; returns (record id, None) if we own it, else (None, stored response)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(IdempotencyRecord)
        .values(user_id=user.id, key=key, fingerprint=fp, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(IdempotencyRecord.id)
    )
    record_id = session.execute(stmt).scalar()
    if record_id is not None:
        return record_id, None
    record = session.exec(
        select(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id, IdempotencyRecord.key == key)
        .execution_options(populate_existing=True)
    ).one()
    return None, _replay(record, fp)


def finish(session: Session, record_id: int, status_code: int, payload: Any) -> None:
    session.execute(update(IdempotencyRecord).where(IdempotencyRecord.id == record_id)
                    .values(status_code=status_code, response=payload))


def _replay(record: IdempotencyRecord, fp: str) -> Response:
    if record.fingerprint != fp:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "Idempotency-Key was already used with a different request")
    if record.status_code is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "a request with this Idempotency-Key is still running")
    return _response(record.status_code, record.response, replayed=True)


def _response(status_code: int, payload: Any, replayed: bool = False) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    if status_code == status.HTTP_204_NO_CONTENT:
        return Response(status_code=status_code, headers=headers)
    return JSONResponse(payload, status_code=status_code, headers=headers)


def run(session: Session, user: User, key: str | None, request: Request, body: BaseModel | None,
        work: Callable[[], Any], status_code: int = 200) -> Response:
    """Run `work()` once per (user, key). `work` returns the response model, or None for 204."""
    if key is None:
        result = work()
        return _response(status.HTTP_204_NO_CONTENT if result is None else status_code, jsonable_encoder(result))
    record_id, replay = reserve(session, user, key, fingerprint(request, body))
    if replay is not None:
        return replay
    result = work()
    code = status.HTTP_204_NO_CONTENT if result is None else status_code
    payload = jsonable_encoder(result)
    finish(session, record_id, code, payload)
    return _response(code, payload)
