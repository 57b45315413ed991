"""Prometheus metrics for serving."""

from prometheus_client import Counter, Histogram

CHAT_REQUESTS = Counter("hitl_chat_requests_total", "Chat completions served", ["model_version", "stream"])
CHAT_LATENCY = Histogram("hitl_chat_latency_seconds", "End-to-end chat latency", ["stream"])
TOKENS = Counter("hitl_tokens_total", "Tokens processed", ["kind"])
