"""Prometheus metrics for serving."""

from prometheus_client import Counter, Histogram

CHAT_REQUESTS = Counter("hitl_chat_requests_total", "Chat completions served", ["model_version", "stream"])
CHAT_LATENCY = Histogram("hitl_chat_latency_seconds", "End-to-end chat latency", ["stream"])
TOKENS = Counter("hitl_tokens_total", "Tokens processed", ["kind"])
FORWARD_PASSES = Counter("hitl_forward_passes_total", "Forward passes of the local model", ["phase"])
FORWARD_ROWS = Counter("hitl_forward_rows_total", "Requests (batch rows) in those passes", ["phase"])
FORWARD_SECONDS = Counter("hitl_forward_seconds_total", "Time spent in those passes", ["phase"])


def observe_forward(phase: str, rows: int, seconds: float) -> None:
    """`phase` is prefill (new requests) or decode (one token for every running row)."""
    FORWARD_PASSES.labels(phase).inc()
    FORWARD_ROWS.labels(phase).inc(rows)
    FORWARD_SECONDS.labels(phase).inc(seconds)
