"""Dataset build benchmark: bulk-insert ~100k feedback rows, then time a full SFT + DPO + KTO snapshot.

    .venv/bin/python bench/bench_datasets.py                 # SQLite in a temp dir, 100k feedback rows
    .venv/bin/python bench/bench_datasets.py --rows 20000 --url postgresql+psycopg://postgres@127.0.0.1/bench

Target (PRODUCT.md §3): 100k feedback rows → snapshot in ≤ 10 s. Prints the figures; asserts nothing.
"""

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact water money story month lot right study book job word "
         "business issue side kind head house service friend father power hour game line end member law car city "
         "community name president team minute idea kid body information back parent face others level office door "
         "health art war history party result change morning reason research girl guy moment air teacher force "
         "education foot boy age policy process music market sense nation plan college interest death experience").split()
TOPICS = ["How do I {} my {}?", "What is the best {} for a {}?", "Can you explain {} and {}?",
          "Why does my {} keep {}?", "Write a short note about {} in {}.", "Compare {} with {}.",
          "Is it true that {} causes {}?", "Give me three tips for {} and {}."]
PII = ["Contact me at jane.{}@example.org", "my card is 4111 1111 1111 1111", "call +44 20 7946 {:04d}",
       "server 10.0.{}.7 is down"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def seed_store(url: str, n_rows: int, seed: int = 0) -> dict[str, int]:
    """Bulk-insert conversations and `n_rows` feedback rows; returns counts per table."""
    import sqlalchemy as sa

    from core.auth import hash_key
    from core.db import engine_for
    from core.models import User
    from feedback.models import Candidate, Comparison, Correction, Deletion, Flag, Rating, Thumbs
    from service.models import Conversation, Message

    rng = random.Random(seed)
    now = datetime.now(UTC)
    n_conv = max(10, n_rows // 2)  # two assistant replies per conversation, ~one feedback row each
    counts: dict[str, int] = {}
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(User.__table__), [
            {"name": f"bench-rev-{i}", "role": "reviewer", "key_hash": hash_key(f"bench-{seed}-{i}-{time.time_ns()}"),
             "active": True, "created_at": now} for i in range(20)])
        reviewers = [r[0] for r in conn.execute(sa.select(User.__table__.c.id).where(User.__table__.c.name.like("bench-rev-%")))]
        convs, msgs, replies = [], [], []
        for c in range(n_conv):
            cid = f"conv_b{seed}_{c}"
            convs.append({"id": cid, "end_user": f"user{c % (n_conv // 3 + 1)}" if c % 2 else None,
                          "created_at": now, "updated_at": now})
            for turn in range(2):
                q = rng.choice(TOPICS).format(rng.choice(WORDS), rng.choice(WORDS)) + " " + sentence(rng, rng.randint(3, 12))
                if rng.random() < 0.03:
                    q += " " + rng.choice(PII).format(rng.randint(0, 255))
                a = " ".join(sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(1, 3)))
                for pos, role, text in ((2 * turn, "user", q), (2 * turn + 1, "assistant", a)):
                    mid = f"msg_b{seed}_{c}_{pos}"
                    msgs.append({"id": mid, "conversation_id": cid, "position": pos, "role": role, "content": text,
                                 "model_version": "v0" if role == "assistant" else None, "created_at": now})
                    if role == "assistant":
                        replies.append(mid)
        conn.execute(sa.insert(Conversation.__table__), convs)
        for i in range(0, len(msgs), 20000):
            conn.execute(sa.insert(Message.__table__), msgs[i:i + 20000])
        counts["conversations"], counts["messages"] = len(convs), len(msgs)

        share = {"thumbs": 0.40, "rating": 0.34, "correction": 0.10, "comparison": 0.10, "flag": 0.03}
        share["thumbs"] += 1 - sum(share.values())
        n = {k: int(v * n_rows) for k, v in share.items()}
        n["thumbs"] += n_rows - sum(n.values())
        dims = ("correctness", "helpfulness", "tone")
        thumbs = [{"message_id": rng.choice(replies), "thumbs": rng.choice(["up", "down"]),
                   "source": "end_user" if rng.random() < 0.85 else "reviewer",
                   "user_id": rng.choice(reviewers), "created_at": now} for _ in range(n["thumbs"])]
        ratings = []
        for _ in range(n["rating"]):
            base = rng.choice([1, 2, 3, 4, 5, 5])
            ratings.append({"message_id": rng.choice(replies), "reviewer_id": rng.choice(reviewers),
                            "scores": {d: max(1, min(5, base + rng.choice([-1, 0, 0, 1]))) for d in dims},
                            "adjudicated": False, "created_at": now})
        corrections = [{"message_id": (mid := rng.choice(replies)), "reviewer_id": rng.choice(reviewers),
                        "content": sentence(rng, rng.randint(8, 20)), "original": "", "diff": "", "created_at": now}
                       for _ in range(n["correction"])]
        cand_targets = [rng.choice(replies) for _ in range(n["comparison"])]
        candidates = [{"message_id": mid, "content": sentence(rng, rng.randint(6, 16)), "seed": k,
                       "created_at": now} for mid in cand_targets for k in range(2)]
        flags = [{"message_id": rng.choice(replies), "reviewer_id": rng.choice(reviewers),
                  "tags": [rng.choice(["unsafe", "off_topic", "pii"])], "created_at": now} for _ in range(n["flag"])]
        conn.execute(sa.insert(Thumbs.__table__), thumbs)
        conn.execute(sa.insert(Rating.__table__), ratings)
        conn.execute(sa.insert(Correction.__table__), corrections)
        conn.execute(sa.insert(Candidate.__table__), candidates)
        cand_ids = [r[0] for r in conn.execute(sa.select(Candidate.__table__.c.id).order_by(Candidate.__table__.c.id))]
        first = len(cand_ids) - len(candidates)
        comparisons = [{"message_id": mid, "reviewer_id": rng.choice(reviewers), "candidate_a": cand_ids[first + 2 * i],
                        "candidate_b": cand_ids[first + 2 * i + 1], "choice": rng.choice(["a", "b", "a", "b", "tie"]),
                        "created_at": now} for i, mid in enumerate(cand_targets)]
        conn.execute(sa.insert(Comparison.__table__), comparisons)
        conn.execute(sa.insert(Flag.__table__), flags)
        conn.execute(sa.insert(Deletion.__table__), [{"conversation_id": f"conv_b{seed}_{c}", "conversation_ids": [],
                                                      "created_at": now} for c in range(0, n_conv, 500)])
        counts.update(thumbs=len(thumbs), rating=len(ratings), correction=len(corrections), comparison=len(comparisons),
                      flag=len(flags), candidate=len(candidates))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="feedback rows to insert")
    parser.add_argument("--url", default=None, help="database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-datasets-"))
    url = args.url or f"sqlite:///{tmp / 'hitl.db'}"
    os.environ.update(HITL_DATABASE_URL=url, HITL_DATA_DIR=str(tmp / "var"))
    model = Path(__file__).resolve().parents[1] / "var" / "models" / "SmolLM2-135M-Instruct"
    if model.is_dir():
        os.environ["HITL_BASE_MODEL"] = str(model)

    t = time.perf_counter()
    import datasketch  # noqa: F401  (imports are paid once per process; reported apart)
    import pyarrow.parquet  # noqa: F401
    import krippendorff  # noqa: F401
    import pandas  # noqa: F401  (pulled in by pyarrow / the reliability statistics)
    import transformers  # noqa: F401

    from core.db import migrate, session_scope
    from core.settings import get_settings
    from retrain.datasets.service import build
    imports = time.perf_counter() - t

    migrate(url)
    t = time.perf_counter()
    counts = seed_store(url, args.rows)
    seeding = time.perf_counter() - t
    feedback_rows = sum(counts[k] for k in ("thumbs", "rating", "correction", "comparison", "flag"))

    settings = get_settings()
    t, c = time.perf_counter(), time.process_time()
    with session_scope() as session:
        snap, created = build(session, settings)
    first, first_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    with session_scope() as session:
        again, created_again = build(session, settings)
    second, second_cpu = time.perf_counter() - t, time.process_time() - c

    m = snap.manifest
    print(f"database: {url.split('://')[0]}   cpus: {os.cpu_count()}   load avg: {os.getloadavg()[0]:.1f}")
    print(f"seeded: {feedback_rows} feedback rows ({', '.join(f'{k} {v}' for k, v in counts.items())}) in {seeding:.1f} s")
    print(f"imports (once per process): {imports:.2f} s")
    print(f"full build: {first:.2f} s wall, {first_cpu:.2f} s CPU of this process   (target ≤ 10 s)")
    print(f"  phases [wall s, CPU s]: {m['timings_s']}   [reliability = feedback.quality.reviewer_reliability]")
    print(f"rebuild, no new feedback: {second:.2f} s wall, {second_cpu:.2f} s CPU; same snapshot: "
          f"{again.id == snap.id and not created_again}")
    print("note: on a shared machine wall time includes waiting for a core; CPU time is what the build costs")
    print(f"examples: {m['counts']}")
    print(f"filters: {m['filters']}")
    print(f"conflicts: {m['conflicts']}   pii: {m['pii_redactions']}   kto balance: {m['kto_balance']['train']}")
    print(f"tokenizer: {m['length']['tokenizer']}   snapshot: {snap.path}")


if __name__ == "__main__":
    main()
