"""Concurrency speed-up of the in-process model, measured end to end over HTTP.

Starts the real app (`python -m hitl serve`) in a subprocess on a temporary data dir, then sends
8 chats one after another and the same 8 chats at once through the official openai client,
greedy with a fixed `max_tokens`. Prints completion tokens/s of both and their ratio for each
round (rounds alternate, so both sides see the same machine load). Target: ratio >= 4.

    .venv/bin/python bench/bench_concurrency.py [--model var/models/SmolLM2-135M-Instruct]
        [--max-tokens 48] [--rounds 2] [--threads 0]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is the capital of France?", "Name three primary colors.", "How do plants make their food?",
    "What is 12 times 7?", "Give me one tip for sleeping better.", "Why is the sky blue?",
    "What does a CPU do?", "Write a short poem about rain.",
]
KEY = "hitl_bench_admin_key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m hitl serve` in a subprocess with its own data dir and database."""

    def __init__(self, model: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tempfile.TemporaryDirectory(prefix="hitl-bench-")
        self.env = {**os.environ, "HITL_DATA_DIR": self.tmp.name, "HITL_BASE_MODEL": str(model),
                    "HITL_DATABASE_URL": f"sqlite:///{self.tmp.name}/hitl.db", "HITL_ADMIN_KEY": KEY,
                    "HITL_SCHEDULER_ENABLED": "false", "HITL_PORT": str(self.port), **env}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.log = open(Path(self.tmp.name) / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "hitl", "serve"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(Path(self.tmp.name) / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        self.tmp.cleanup()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=600)


def forward_stats(url: str) -> dict[tuple[str, str], float]:
    """The server's forward-pass counters from /metrics: {(metric, phase): value}."""
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("hitl_forward_") and "_total{" in line:
            name, value = line.rsplit(" ", 1)
            metric, phase = name.split("{")[0], name.split('phase="')[1].split('"')[0]
            found[(metric.removeprefix("hitl_forward_").removesuffix("_total"), phase)] = float(value)
    return found


def describe(before: dict, after: dict) -> str:
    """Where the server spent the time: prefill vs decode passes and mean rows per decode pass."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    passes, rows = d.get(("passes", "decode"), 0), d.get(("rows", "decode"), 0)
    return (f"prefill {d.get(('passes', 'prefill'), 0):.0f} passes {d.get(('seconds', 'prefill'), 0):.1f} s, "
            f"decode {passes:.0f} passes {d.get(('seconds', 'decode'), 0):.1f} s "
            f"({d.get(('seconds', 'decode'), 0) / max(passes, 1) * 1000:.0f} ms/pass, "
            f"{rows / max(passes, 1):.1f} rows/pass)")


def chat(client: openai.OpenAI, prompt: str, max_tokens: int) -> int:
    reply = client.chat.completions.create(model="hitl", messages=[{"role": "user", "content": prompt}],
                                           max_tokens=max_tokens, temperature=0)
    return reply.usage.completion_tokens


def sequential(client: openai.OpenAI, max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(chat(client, p, max_tokens) for p in PROMPTS)
    return tokens, time.perf_counter() - start


def concurrent(client: openai.OpenAI, max_tokens: int) -> tuple[int, float]:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        start = time.perf_counter()
        tokens = sum(pool.map(lambda p: chat(client, p, max_tokens), PROMPTS))
        return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "var/models/SmolLM2-135M-Instruct")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="HITL_TORCH_THREADS for the server (0 = default)")
    args = parser.parse_args()

    with Server(args.model, HITL_TORCH_THREADS=str(args.threads)) as server:
        client = server.client()
        chat(client, "Hello!", 4)  # warm up
        ratios = []
        for r in range(args.rounds):
            s0 = forward_stats(server.url)
            n_seq, t_seq = sequential(client, args.max_tokens)
            s1 = forward_stats(server.url)
            n_con, t_con = concurrent(client, args.max_tokens)
            s2 = forward_stats(server.url)
            ratio = (n_con / t_con) / (n_seq / t_seq)
            ratios.append(ratio)
            print(f"round {r + 1}: 8 sequential {n_seq} tok in {t_seq:.1f} s = {n_seq / t_seq:.1f} tok/s | "
                  f"8 concurrent {n_con} tok in {t_con:.1f} s = {n_con / t_con:.1f} tok/s | "
                  f"speed-up {ratio:.2f}x", flush=True)
            print(f"  sequential: {describe(s0, s1)}\n  concurrent: {describe(s1, s2)}", flush=True)
    print(f"median speed-up {statistics.median(ratios):.2f}x (target >= 4x); model {args.model.name}, "
          f"max_tokens {args.max_tokens}, greedy, torch threads {args.threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
