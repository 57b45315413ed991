"""Database engine, sessions and migrations. Requests commit in exactly one place: `get_session`."""

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from alembic import command
from alembic.config import Config
from fastapi import Depends
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from core.settings import get_settings

DOMAINS = ("core", "service", "feedback", "retrain", "evaluators")


@lru_cache
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # a new file is the owner's only (its -wal and -shm follow)
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def sqlite_pragmas(dbapi_conn, _record) -> None:
    """Connect hook of every SQLite engine: WAL, full durability, foreign keys, secure delete, a busy timeout."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives a crash
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # deleted content is zeroed, not left in free pages
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def get_engine() -> Engine:
    return engine_for(get_settings().db_url)


def get_session() -> Iterator[Session]:
    """Request-scoped session: commits once when the endpoint returns, rolls back on error."""
    yield from _scoped()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("version_locations", " ".join(str(p) for p in version_locations()))
    cfg.attributes["url"] = url or get_settings().db_url
    return cfg


def version_locations() -> list[Path]:
    """Each domain keeps its own Alembic branch in `<domain>/migrations/`."""
    root = Path(__file__).resolve().parents[1]  # domains are sibling packages
    found = [root / "core" / "migrations" / "versions"]
    return found + [root / d / "migrations" for d in DOMAINS[1:] if (root / d / "migrations").is_dir()]


def migrate(url: str | None = None) -> None:
    """Bring the schema to the newest revision of every domain (`alembic upgrade heads`)."""
    command.upgrade(alembic_config(url), "heads")


@contextmanager
def session_scope() -> Iterator[Session]:
    """Unit of work outside a request (jobs, streams, CLI): commits once at the end."""
    yield from _scoped()


def _scoped() -> Iterator[Session]:
    with Session(get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
