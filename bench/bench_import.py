"""Log import over HTTP: `POST /api/import` of N OpenAI chat-format lines (default 100,000; a tenth with a
thumbs-down, a fifth with rubric scores, a few Langfuse traces) into a fresh store, on SQLite and PostgreSQL, and
the same file again (every line a duplicate). Target: 100k lines in <= 60 s.

The server is the whole app (uvicorn in a thread of this process, an instant stub model); the time is the
request's wall time, body upload included.

    .venv/bin/python bench/bench_import.py [--lines 100000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "hitl_bench_admin_key"


def lines(n: int) -> bytes:
    out = []
    for i in range(n):
        if i % 1000 == 999:
            out.append({"id": f"trace-{i}", "timestamp": "2025-01-01T00:00:00Z", "userId": f"u{i % 500}",
                        "input": [{"role": "user", "content": f"Trace question {i}?"}], "output": f"Trace answer {i}.",
                        "scores": [{"name": "user-feedback", "value": 1, "dataType": "NUMERIC"}]})
            continue
        record = {"messages": [{"role": "system", "content": "You are a support bot."},
                               {"role": "user", "content": f"How do I reset password number {i}?"},
                               {"role": "assistant", "content": f"Open settings, choose security, reset #{i}."}],
                  "model": "legacy", "user": f"u{i % 500}", "created": 1_700_000_000 + i, "metadata": {"i": i}}
        if i % 10 == 0:
            record["thumbs"] = "down"
        if i % 5 == 1:
            record["scores"] = {"correctness": 1 + i % 5, "tone": 4}
        out.append(record)
    return "\n".join(json.dumps(r) for r in out).encode() + b"\n"


def run(url: str, body: bytes, data_dir: str) -> dict:
    os.environ.update(HITL_DATABASE_URL=url, HITL_DATA_DIR=data_dir, HITL_ADMIN_KEY=KEY, HITL_SCHEDULER_ENABLED="false",
                      HITL_RATE_LIMIT_PER_S="0")
    import httpx
    import uvicorn

    from core.db import engine_for
    from core.settings import get_settings
    from hitl.app import create_app
    from service.backends.base import Backend

    get_settings.cache_clear()
    engine_for.cache_clear()

    class Stub(Backend):
        version = "stub"

        async def stream(self, messages, params):
            yield ""

        async def swap(self, *a, **kw) -> None:
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(backend=Stub()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    figures = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}) as c:
            for name in ("first", "again"):
                start = time.perf_counter()
                res = c.post("/api/import", content=body)
                res.raise_for_status()
                report = res.json()
                figures[name] = {"s": round(time.perf_counter() - start, 2), "conversations": report["conversations"],
                                 "duplicates": report["duplicates"], "queued": report["queued"],
                                 "errors": report["error_count"]}
    finally:
        server.should_exit = True
        thread.join(30)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    body = lines(args.lines)
    print(f"{args.lines} lines, {len(body) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        print("sqlite", run(f"sqlite:///{tmp}/hitl.db", body, f"{tmp}/var"))
    import sqlalchemy as sa

    name = f"hitl_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"postgresql skipped: {exc.__class__.__name__}")
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print("postgresql", run(args.pg.rsplit("/", 1)[0] + f"/{name}", body, f"{tmp}/var"))
    finally:
        from core.db import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
