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
from sqlmodel import Session, select

from core.models import User
from feedback.models import IdempotencyRecord
from feedback.service import Outcome, finish_key, reserve_key

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200,
    description="Optional. A retry with the same key returns the first response and stores nothing twice; "
    "an empty key is a 422.",
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
    if record is None:
        return None
    if record.fingerprint != fp:
        return respond(Outcome(422, "Idempotency-Key was already used with a different request"))
    if record.status_code is None:
        return None  # still running elsewhere: reserve() will wait for it
    return respond(Outcome(record.status_code, record.response, replayed=True))


def respond(outcome: Outcome) -> Response:
    if outcome.status_code >= 400:
        raise HTTPException(outcome.status_code, outcome.payload)
    return _response(outcome.status_code, outcome.payload, outcome.replayed)


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
    record_id, replay = reserve_key(session, user.id, key, fingerprint(request, body))
    if replay is not None:
        return respond(replay)
    result = work()
    code = status.HTTP_204_NO_CONTENT if result is None else status_code
    payload = jsonable_encoder(result)
    finish_key(session, record_id, code, payload)
    return _response(code, payload)
