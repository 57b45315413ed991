"""Cost of logging every chat exchange, measured end to end over HTTP.

Two servers run side by side, one with `HITL_LOG_CONVERSATIONS=true`, one with `false`, and
requests alternate between them so both see the same machine load:

* stub: an instant backend (defined here, not in the product) isolates the logging cost:
  added p50 latency in ms (target <= 2 ms).
* real: the in-process SmolLM2: p50 with logging on / off (target <= 1.02).

    .venv/bin/python bench/bench_logging.py [--stub-requests 400] [--real-requests 12] [--skip-real]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/DB]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_concurrency import KEY, ROOT, Server  # noqa: E402

BODY = {"model": "hitl", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0}


def serve_stub(port: int) -> None:
    """Server mode: the whole app with an instant backend (run in a subprocess by `StubServer`)."""
    import uvicorn

    from hitl.app import create_app
    from service.backends import Backend, Generation, Started

    class InstantBackend(Backend):
        version = "stub"

        async def stream(self, messages, params) -> AsyncIterator:
            yield Started("stub", 7)
            yield "Paris."
            yield Generation(text="Paris.", model_version="stub", prompt_tokens=7, completion_tokens=2,
                             finish_reason="stop", mean_logprob=-0.1)

        async def swap(self, base_path, version, adapter_path=None) -> None:
            pass

    uvicorn.run(create_app(backend=InstantBackend()), host="127.0.0.1", port=port, log_level="warning")


class StubServer(Server):
    def __enter__(self) -> "StubServer":
        self.log = open(Path(self.tmp.name) / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(self.port)], cwd=ROOT,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((Path(self.tmp.name) / "server.log").read_text()[-2000:])
            time.sleep(0.3)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), to see the cost apart from the machine's load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def side_by_side(on: Server, off: Server, n: int) -> tuple[list[float], list[float]]:
    """n requests to each, alternating; returns latencies in ms (on, off) and prints server CPU per request."""
    latencies: dict[str, list[float]] = {"on": [], "off": []}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=on.url, headers=headers, timeout=600) as c_on, \
            httpx.Client(base_url=off.url, headers=headers, timeout=600) as c_off:
        for client in (c_on, c_off):  # warm up: connections, caches, first allocation
            for _ in range(3):
                client.post("/v1/chat/completions", json=BODY).raise_for_status()
        cpu = {"on": cpu_seconds(on.proc.pid), "off": cpu_seconds(off.proc.pid)}
        for i in range(n):
            order = [("on", c_on), ("off", c_off)] if i % 2 == 0 else [("off", c_off), ("on", c_on)]
            for name, client in order:
                start = time.perf_counter()
                client.post("/v1/chat/completions", json=BODY).raise_for_status()
                latencies[name].append((time.perf_counter() - start) * 1000)
        per_request = {k: (cpu_seconds(s.proc.pid) - cpu[k]) * 1000 / n for k, s in (("on", on), ("off", off))}
    print(f"  server CPU per request: logging on {per_request['on']:.2f} ms, off {per_request['off']:.2f} ms "
          f"(added {per_request['on'] - per_request['off']:+.2f} ms; 10 ms clock ticks, so read it over many requests)")
    return latencies["on"], latencies["off"]


def report(label: str, on: list[float], off: list[float]) -> tuple[float, float]:
    p50_on, p50_off = statistics.median(on), statistics.median(off)
    print(f"{label}: {len(on)} requests each | p50 logging on {p50_on:.2f} ms, off {p50_off:.2f} ms | "
          f"added {p50_on - p50_off:+.2f} ms | ratio {p50_on / p50_off:.3f}", flush=True)
    return p50_on, p50_off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stub-requests", type=int, default=400)
    parser.add_argument("--real-requests", type=int, default=12)
    parser.add_argument("--model", type=Path, default=ROOT / "var/models/SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=1, help="HITL_TORCH_THREADS of each real-model server")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--database-url", help="default: a SQLite file per server")
    args = parser.parse_args()
    if args.serve_stub:
        return serve_stub(args.serve_stub)

    def env(log: bool) -> dict:
        found = {"HITL_LOG_CONVERSATIONS": str(log).lower()}
        if args.database_url:
            found["HITL_DATABASE_URL"] = args.database_url
        return found

    db = "PostgreSQL" if args.database_url else "SQLite"
    with StubServer(args.model, **env(True)) as on, StubServer(args.model, **env(False)) as off:
        p50_on, p50_off = report(f"stub backend, {db}", *side_by_side(on, off, args.stub_requests))
        print(f"  -> added p50 {p50_on - p50_off:.2f} ms (target <= 2 ms)")
    if args.skip_real:
        return
    threads = {"HITL_TORCH_THREADS": str(args.threads)}
    with Server(args.model, **env(True), **threads) as on, Server(args.model, **env(False), **threads) as off:
        p50_on, p50_off = report(f"SmolLM2 (max_tokens {BODY['max_tokens']}), {db}",
                                 *side_by_side(on, off, args.real_requests))
        print(f"  -> p50 ratio {p50_on / p50_off:.3f} (target <= 1.02)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
