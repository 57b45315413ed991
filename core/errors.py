"""App-wide error answers: request validation errors every client can read, and a database outage as a
503 with `Retry-After` instead of a 500."""

import json
import logging

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

log = logging.getLogger("hitl")
RETRY_AFTER_S = 5
DATABASE_UNAVAILABLE = "the database is unavailable; retry later"


def database_unavailable() -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, DATABASE_UNAVAILABLE,
                         {"Retry-After": str(RETRY_AFTER_S)})


async def _database_error(_request: Request, exc: OperationalError) -> JSONResponse:
    """The database cannot be reached (down, restarting, out of connections, locked): the client may retry."""
    log.warning("database unavailable: %s", exc.orig or exc)
    error = database_unavailable()
    return JSONResponse({"detail": error.detail}, error.status_code, error.headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 without the `input` it echoes (the request's own text, which may be huge, hold lone
    surrogates (\\ud800) that no UTF-8 encoder accepts, or NaN, which JSON cannot carry); non-ASCII escaped."""
    errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
    body = json.dumps({"detail": jsonable_encoder(errors)})
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def install(app: FastAPI) -> None:
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
