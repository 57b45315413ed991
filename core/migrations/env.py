"""Alembic environment: one metadata for all domains, one branch per domain."""

import importlib

from alembic import context
from sqlalchemy import pool
from sqlmodel import SQLModel

from core.db import DOMAINS, engine_for

for domain in DOMAINS:  # register every table on SQLModel.metadata for autogenerate
    try:
        importlib.import_module(f"{domain}.models")
    except ModuleNotFoundError as exc:
        if exc.name != f"{domain}.models":
            raise

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_for(url) if url.startswith("sqlite") else _fresh_engine(url)
    with engine.begin() as conn:
        _run(conn)


def _fresh_engine(url: str):
    from sqlalchemy import create_engine

    return create_engine(url, poolclass=pool.NullPool)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,  # SQLite ALTER TABLE support
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
