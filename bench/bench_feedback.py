"""Feedback ingestion over HTTP: `POST /v1/feedback` writes/s on SQLite and PostgreSQL, and the ratio
to a bare FastAPI JSON endpoint served the same way on the same machine.

Each server is a real uvicorn process (one worker, uvloop + httptools, no access log); the load
generator is a minimal keep-alive HTTP/1.1 client on asyncio with `--connections` connections in this
process (cheaper per request than httpx, so the client does not hide the server's cost). Every write
is acknowledged only after its transaction commits (SQLite: WAL + synchronous=FULL; PostgreSQL:
default synchronous_commit=on). Rounds alternate bare / SQLite / PostgreSQL so all see the same
load; the figure is the median over rounds. Targets: >= 1000 writes/s on each database and
>= 0.5x the bare endpoint.

    .venv/bin/python bench/bench_feedback.py [--seconds 5] [--rounds 3] [--connections 32]
        [--down-share 0.2] [--idempotency] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "hitl_bench_service_key"
N_MESSAGES = 2000


# ---------------------------------------------------------------------------------------------- servers


def serve(kind: str, port: int) -> None:
    """Subprocess entry: the hitl app with an instant stub backend, or a bare FastAPI endpoint."""
    import uvicorn

    if kind == "bare":
        from fastapi import FastAPI
        from pydantic import BaseModel

        class Body(BaseModel):
            message_id: str
            thumbs: str
            comment: str | None = None

        app = FastAPI()

        @app.post("/v1/feedback", status_code=201)
        async def bare(body: Body) -> dict:
            return {"id": 1, "message_id": body.message_id, "thumbs": body.thumbs, "comment": body.comment}
    else:
        from hitl.app import create_app
        from service.backends.base import Backend

        class Stub(Backend):
            version = "stub"

            async def stream(self, messages, params):
                yield ""

            async def swap(self, *a, **kw) -> None:
                pass

        app = create_app(backend=Stub())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, kind: str, env: dict):
        self.kind, self.port, self.env = kind, free_port(), env

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", self.kind, "--port", str(self.port)],
                                     cwd=ROOT, env={**os.environ, **self.env})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)


# ---------------------------------------------------------------------------------------------- data


def prepare(url: str, data_dir: str) -> list[str]:
    """Migrate a fresh database, create the service key and N assistant replies; return their ids."""
    os.environ.update(HITL_DATABASE_URL=url, HITL_DATA_DIR=data_dir)
    from core.auth import create_user
    from core.db import engine_for, migrate, session_scope
    from core.models import Role
    from core.settings import get_settings
    from service.models import Conversation, Message

    get_settings.cache_clear()
    engine_for.cache_clear()
    migrate(url)
    ids = []
    with session_scope() as session:
        create_user(session, name="bench", role=Role.service, key=KEY)
        for i in range(N_MESSAGES):
            conv = Conversation()
            session.add(conv)
            session.add(Message(conversation_id=conv.id, position=0, role="user", content=f"question {i}"))
            reply = Message(conversation_id=conv.id, position=1, role="assistant", content=f"answer {i}",
                            mean_logprob=-0.5)
            session.add(reply)
            ids.append(reply.id)
    engine_for.cache_clear()
    return ids


def count_thumbs(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM thumbs")).scalar_one()
    engine.dispose()
    return n


# ---------------------------------------------------------------------------------------------- load


def requests(ids: list[str], down_share: float, idempotency: bool, port: int, n: int = 4096) -> list[bytes]:
    out = []
    every = max(1, round(1 / down_share)) if down_share > 0 else 0
    for i in range(n):
        body = json.dumps({"message_id": ids[i % len(ids)], "thumbs": "down" if every and i % every == 0 else "up",
                           "comment": "bench"}).encode()
        extra = f"Idempotency-Key: {uuid.uuid4().hex}\r\n" if idempotency else ""
        out.append((f"POST /v1/feedback HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body)
    return out


async def _worker(port: int, reqs: list[bytes], offset: int, stop: float, stats: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.perf_counter() < stop:
        writer.write(reqs[i % len(reqs)])
        i += 1
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        stats[status] = stats.get(status, 0) + 1
    writer.close()


async def _load(port: int, reqs: list[bytes], seconds: float, connections: int) -> tuple[float, dict]:
    stats: dict[int, int] = {}
    start = time.perf_counter()
    await asyncio.gather(*(_worker(port, reqs, k * 131, start + seconds, stats) for k in range(connections)))
    elapsed = time.perf_counter() - start
    return sum(stats.values()) / elapsed, stats


def load(port: int, reqs: list[bytes], seconds: float, connections: int) -> tuple[float, dict]:
    try:
        import uvloop

        return uvloop.run(_load(port, reqs, seconds, connections))
    except ImportError:
        return asyncio.run(_load(port, reqs, seconds, connections))


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--down-share", type=float, default=0.2, help="Share of thumbs-down (they also queue).")
    parser.add_argument("--idempotency", action="store_true", help="Send a fresh Idempotency-Key with each write.")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="Admin URL of a PostgreSQL server; '' skips PostgreSQL.")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    tmp = tempfile.TemporaryDirectory(prefix="hitl-bench-feedback-")
    targets = {"sqlite": f"sqlite:///{tmp.name}/hitl.db"}
    pg_db = None
    if args.pg:
        import sqlalchemy as sa

        pg_db = f"hitl_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{pg_db}"'))
        targets["postgresql"] = args.pg.rsplit("/", 1)[0] + f"/{pg_db}"
    try:
        ids = {name: prepare(url, f"{tmp.name}/{name}") for name, url in targets.items()}
        results: dict[str, list[float]] = {name: [] for name in ["bare", *targets]}
        statuses: dict[str, dict] = {}
        before = {name: count_thumbs(url) for name, url in targets.items()}
        for _round in range(args.rounds):
            for name in results:
                url = targets.get(name, targets["sqlite"])
                env = {"HITL_DATABASE_URL": url, "HITL_DATA_DIR": f"{tmp.name}/{name}",
                       "HITL_SCHEDULER_ENABLED": "false", "HITL_RATE_LIMIT_PER_S": "0"}  # one key, >100 writes/s
                port_ids = ids.get(name, ids["sqlite"])
                with Server("bare" if name == "bare" else "app", env) as server:
                    reqs = requests(port_ids, args.down_share, args.idempotency, server.port)
                    load(server.port, reqs, 0.5, args.connections)  # warm up
                    rate, stats = load(server.port, reqs, args.seconds, args.connections)
                results[name].append(rate)
                for code, n in stats.items():
                    statuses.setdefault(name, {}).setdefault(code, 0)
                    statuses[name][code] += n
                print(f"round {_round + 1}: {name:<10} {rate:8.0f} req/s  statuses {stats}", flush=True)
        stored = {name: count_thumbs(url) - before[name] for name, url in targets.items()}
        bare = statistics.median(results["bare"])
        print(f"\nPOST /v1/feedback, {args.connections} connections, {args.seconds:.0f} s x {args.rounds} rounds, "
              f"thumbs-down share {args.down_share}, idempotency keys {'on' if args.idempotency else 'off'}")
        print(f"{'target':<12}{'median req/s':>14}{'ratio to bare':>15}{'rows stored':>13}")
        print(f"{'bare':<12}{bare:>14.0f}{1.0:>15.2f}{'-':>13}")
        for name in targets:
            rate = statistics.median(results[name])
            print(f"{name:<12}{rate:>14.0f}{rate / bare:>15.2f}{stored[name]:>13}")
        for name in targets:
            ok = statuses[name].get(201, 0)
            assert set(statuses[name]) == {201}, f"{name}: non-201 responses {statuses[name]}"
            # every acknowledged write (timed and warm-up) is in the database
            assert stored[name] >= ok, (name, stored[name], ok)
    finally:
        if pg_db:
            from core.db import engine_for

            engine_for.cache_clear()
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
