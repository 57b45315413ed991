"""Leak-free train/eval split: a stable hash of the end user (or, when unknown, the conversation).

The split of an item depends only on its key, the salt and the eval fraction, never on the rest of
the store, so an item never moves between splits as feedback accumulates.
"""

import hashlib


def split_key(conversation_id: str, end_user: str | None) -> str:
    """All conversations of one end user share a split; anonymous ones split by conversation."""
    return f"user:{end_user}" if end_user else f"conv:{conversation_id}"


def split_of(key: str, eval_fraction: float, salt: str = "hitl") -> str:
    """`eval` for a stable `eval_fraction` share of keys, else `train`."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"
