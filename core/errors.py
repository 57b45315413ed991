"""App-wide error answers: request validation errors every client can read, values the database cannot hold
as a 422, a database outage or a full disk as a 503 with `Retry-After` instead of a 500, and the error responses
every route documents."""

import errno
import json
import logging

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, OperationalError

log = logging.getLogger("hitl")
RETRY_AFTER_S = 5
DATABASE_UNAVAILABLE = "the database is unavailable; retry later"
DISK_FULL = "the server's disk is full: nothing was stored; retry once space is freed"
# how a full disk reads in SQLite's, PostgreSQL's (SQLSTATE 53100) and the OS's messages
DISK_FULL_SIGNS = ("database or disk is full", "no space left on device", "could not extend file",
                   "disk quota exceeded")


class ErrorOut(BaseModel):
    detail: str


# what any route may answer besides its own documented responses (see `core.limits` and `core.auth`)
RESPONSES = {code: {"model": ErrorOut, "description": description} for code, description in (
    (400, "The body is not valid JSON"),
    (401, "Missing or invalid API key"),
    (403, "The caller's role may not do this (or a web session's CSRF token is missing)"),
    (404, "No such resource"),
    (408, "The request body did not arrive within `HITL_BODY_TIMEOUT_S`"),
    (409, "The resource's state does not allow this now (e.g. a lease expired, a run is in progress)"),
    (413, "The request body exceeds `HITL_MAX_BODY_BYTES`"),
    (429, "Too many requests from this key (`HITL_RATE_LIMIT_PER_S`); retry after `Retry-After` seconds"),
    (503, "The database or the model is unavailable or busy, or the disk is full; retry after `Retry-After` "
          "seconds"),
)}


def database_unavailable(exc: BaseException | None = None) -> HTTPException:
    """The 503 for a database error `exc`: unreachable, or its disk full."""
    detail = DISK_FULL if exc is not None and disk_full(exc) else DATABASE_UNAVAILABLE
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, {"Retry-After": str(RETRY_AFTER_S)})


def disk_full(exc: BaseException) -> bool:
    """Whether an error (a database's or a file write's) says the disk is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(sign in text for sign in DISK_FULL_SIGNS)


async def _storage_error(_request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached (down, restarting, out of connections, locked) or the disk is full (the
    database's, or a file write into the data dir: snapshots, reports and caches are written to a temporary file
    and renamed, so nothing half-written is left): a 503 the client may retry. Any other OS error stays a 500."""
    if disk_full(exc):
        log.error("disk full: %s", getattr(exc, "orig", None) or exc)
    elif isinstance(exc, OperationalError):
        log.warning("database unavailable: %s", exc.orig or exc)
    else:
        log.error("unhandled OS error", exc_info=exc)
        return JSONResponse({"detail": "Internal Server Error"}, status.HTTP_500_INTERNAL_SERVER_ERROR)
    error = database_unavailable(exc)
    return JSONResponse({"detail": error.detail}, error.status_code, error.headers)


async def _unstorable(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (an integer beyond 64 bits on SQLite, out of range on PostgreSQL) is the
    client's error; the request's transaction has been rolled back."""
    log.info("unstorable value: %s", exc)
    return JSONResponse({"detail": "a value in the request is out of range or cannot be stored"},
                        status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 without the `input` it echoes (the request's own text, which may be huge, hold lone
    surrogates (\\ud800) that no UTF-8 encoder accepts, or NaN, which JSON cannot carry); non-ASCII escaped."""
    errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
    body = json.dumps({"detail": jsonable_encoder(errors)})
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def _openapi(app: FastAPI):
    """A 422 carries FastAPI's list of validation errors, or one message from the route itself."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = make()
            if error := schema.get("components", {}).get("schemas", {}).get("HTTPValidationError"):
                detail = error["properties"]["detail"]
                error["properties"]["detail"] = {"title": "Detail", "anyOf": [
                    {key: value for key, value in detail.items() if key != "title"}, {"type": "string"}]}
        return app.openapi_schema

    return openapi


def install(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, _storage_error)
    app.add_exception_handler(OSError, _storage_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OverflowError, _unstorable)
    app.add_exception_handler(DataError, _unstorable)
    app.openapi = _openapi(app)
