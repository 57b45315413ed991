"""hitl in front of vLLM against hitl's in-process model, in one run.

Starts a vLLM replica (the venv of `make vllm-venv`, `--enable-lora --max-lora-rank R`) and `hitl serve`
with `HITL_BACKEND=vllm` in front of it, then, one after another on the same machine, `hitl serve` with
its in-process model. At each concurrency level it sends greedy chats (at least 16, `level` at a time) with a
fixed `max_tokens` through the official openai client, the sides compared taking turns for `--rounds` rounds,
and prints the median completion tokens/s and p50/p99 latency:

- `vllm`: straight to vLLM (base model, then the adapter by name);
- `hitl+vllm`: through hitl (authentication, routing, logging every exchange), base then a promoted
  rank-R adapter (random weights: only its rank matters for speed);
- `hitl local`: hitl's in-process model (an adapter is merged into the weights there: same speed as base).

Then the targets: hitl's added p50 latency in front of vLLM at concurrency 1 (≤ 5%), and the 8-concurrent
throughput through hitl+vLLM over hitl's in-process figure (≥ 3× on CPU, ≥ 10× on a GPU).

    .venv/bin/python bench/bench_serving.py [--model var/models/SmolLM2-135M-Instruct] [--levels 1,8,32]
        [--max-tokens 32] [--rank 16] [--rounds 3] [--vllm-python .vllm-venv/bin/python] [--threads 1]
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from bench_concurrency import KEY, PROMPTS, ROOT, Server, free_port


class Vllm:
    def __init__(self, python: Path, model: Path, rank: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
               "HF_HUB_OFFLINE": "1"}
        self.cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host",
                    "127.0.0.1", "--port", str(self.port), "--enable-lora", "--max-lora-rank", str(rank),
                    "--max-loras", "4", "--max-model-len", "2048"]
        self.env, self.log = env, log

    def __enter__(self) -> "Vllm":
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("vLLM did not become ready")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(60)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="EMPTY", max_retries=0, timeout=600)


def random_adapter(model: Path, rank: int, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model)), LoraConfig(
        r=rank, lora_alpha=rank, target_modules="all-linear", lora_dropout=0.0))
    peft_model.save_pretrained(out)
    return out


def run_level(client: openai.OpenAI, name: str, level: int, n: int, max_tokens: int) -> tuple[float, list[float]]:
    """`n` greedy chats, `level` at a time: (tokens/s, latencies)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]

    def one(prompt: str) -> tuple[int, float]:
        start = time.perf_counter()
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=max_tokens, temperature=0)
        return reply.usage.completion_tokens, time.perf_counter() - start

    with ThreadPoolExecutor(level) as pool:
        start = time.perf_counter()
        results = list(pool.map(one, prompts))
        wall = time.perf_counter() - start
    return sum(k for k, _ in results) / wall, [t for _, t in results]


def compare(sides: list[tuple[str, openai.OpenAI, str]], level: int, max_tokens: int, rounds: int) -> dict:
    """The sides take turns, round after round, so they see the same machine load; median tok/s, p50/p99."""
    n = max(2 * level, 16)
    rates: dict[str, list[float]] = {label: [] for label, _, _ in sides}
    latencies: dict[str, list[float]] = {label: [] for label, _, _ in sides}
    for label, client, name in sides:
        run_level(client, name, 1, 1, max_tokens)  # warm
    for r in range(rounds):
        for label, client, name in (sides if r % 2 == 0 else sides[::-1]):
            rate, times = run_level(client, name, level, n, max_tokens)
            rates[label].append(rate)
            latencies[label] += times
    out = {}
    for label in rates:
        times = sorted(latencies[label])
        out[label] = m = {"tok_s": statistics.median(rates[label]), "p50": statistics.median(times),
                          "p99": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]}
        row(label, level, m)
    return out


def row(label: str, level: int, m: dict) -> None:
    print(f"{label:<24} c={level:<3} {m['tok_s']:8.1f} tok/s   p50 {m['p50'] * 1000:7.0f} ms   "
          f"p99 {m['p99'] * 1000:7.0f} ms", flush=True)


def register(data_dir: str, version: str, base: Path, adapter: Path) -> None:
    """A registry row for the adapter, written into the hitl server's store (as a retrain run would)."""
    os.environ["HITL_DATABASE_URL"] = f"sqlite:///{data_dir}/hitl.db"
    from core.db import session_scope
    from service.models import ModelVersion

    with session_scope() as s:
        s.add(ModelVersion(version=version, base_path=str(base.resolve()), adapter_path=str(adapter)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "var/models/SmolLM2-135M-Instruct")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the adapter and vLLM's --max-lora-rank")
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".vllm-venv/bin/python")
    parser.add_argument("--threads", type=int, default=1, help="HITL_TORCH_THREADS of the in-process server")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each side per level (medians reported)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    model = args.model.resolve()
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        adapter = random_adapter(model, args.rank, Path(tmp) / "adapter")
        with Vllm(args.vllm_python, model, args.rank, Path(tmp) / "vllm.log") as vllm, \
                Server(model, HITL_BACKEND="vllm", HITL_VLLM_URLS=vllm.url, HITL_VLLM_MAX_LORA_RANK=str(args.rank),
                       HITL_RATE_LIMIT_PER_S="0", HITL_MAX_TOKENS_LIMIT="4096") as front:
            direct, through = vllm.client(), front.client()
            for level in levels:
                for label, m in compare([("vllm base", direct, str(model)), ("hitl+vllm base", through, "m")],
                                        level, args.max_tokens, args.rounds).items():
                    results[label, level] = m
            register(front.tmp.name, "bench-adapter", model, adapter)
            admin = httpx.Client(base_url=front.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            admin.post("/api/models/bench-adapter/promote", json={"reason": "bench"}).raise_for_status()
            while admin.get("/readyz").json()["model_version"] != "bench-adapter":
                time.sleep(0.2)
            for level in levels:
                for label, m in compare([("vllm adapter", direct, "bench-adapter"),
                                         ("hitl+vllm adapter", through, "m")],
                                        level, args.max_tokens, args.rounds).items():
                    results[label, level] = m
        with Server(model, HITL_TORCH_THREADS=str(args.threads), HITL_RATE_LIMIT_PER_S="0") as local:
            for level in levels:
                results["hitl local", level] = compare([("hitl local", local.client(), "m")], level,
                                                       args.max_tokens, args.rounds)["hitl local"]
    first = levels[0]
    for kind in ("base", "adapter"):
        added = results[f"hitl+vllm {kind}", first]["p50"] / results[f"vllm {kind}", first]["p50"] - 1
        print(f"hitl's added p50 latency in front of vLLM, {kind}, c={first}: {added * 100:+.1f}% (target ≤ 5%)")
    if 8 in levels:
        for kind in ("base", "adapter"):
            ratio = results[f"hitl+vllm {kind}", 8]["tok_s"] / results["hitl local", 8]["tok_s"]
            print(f"8-concurrent tok/s, hitl+vllm {kind} ÷ hitl local: {ratio:.2f}× (target ≥ 3× CPU, ≥ 10× GPU)")
        penalty = results["vllm adapter", 8]["tok_s"] / results["vllm base", 8]["tok_s"]
        print(f"vLLM LoRA serving penalty at c=8, rank {args.rank}: adapter ÷ base tok/s = {penalty:.2f}")


if __name__ == "__main__":
    main()
