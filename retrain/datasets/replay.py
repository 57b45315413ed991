"""General instruction data: the replay mix against forgetting, and the evaluators' forgetting set.

Both come from one shipped corpus and are disjoint: `data/general.jsonl` (replay) and
`data/forgetting.jsonl` (held out, never trained on). See `data/README.md` for their origin.
"""

import hashlib
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
GENERAL = DATA / "general.jsonl"
FORGETTING = DATA / "forgetting.jsonl"


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def general_examples() -> list[dict]:
    """Replay pool: `{"messages": [...], "source": ...}` rows."""
    return load_jsonl(GENERAL)


def forgetting_set() -> list[dict]:
    """Held-out general prompts for the forgetting gate (disjoint from the replay pool)."""
    return load_jsonl(FORGETTING)


def replay_rows(n: int, salt: str = "replay", source: str = "replay") -> list[dict]:
    """`n` SFT rows from the replay pool, chosen by a stable hash (same n → same rows); `source` "anchor"
    makes them anchor rows instead of training targets."""
    if n <= 0:
        return []
    pool = general_examples()
    ranked = sorted(pool, key=lambda r: hashlib.sha256((salt + json.dumps(r["messages"])).encode()).digest())
    picked = ranked[:n]  # never repeats a row (that would be an exact duplicate)
    return [{"messages": r["messages"],
             "lineage": {"feedback_ids": [], "reviewer_ids": [], "conversation_id": None, "message_id": None,
                         "source": source, "origin": r.get("source")}}
            for r in picked]
