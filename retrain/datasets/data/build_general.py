"""Rebuild `general.jsonl` (replay pool) and `forgetting.jsonl` (held out) from chatterbot-corpus.

    pip download --no-deps chatterbot-corpus==1.3.3 -d /tmp/cc && cd /tmp/cc && unzip -q *.whl
    python retrain/datasets/data/build_general.py /tmp/cc/chatterbot_corpus/data/english

chatterbot-corpus (BSD-3-Clause, PyPI) English dialogs: the first question/answer pair of each
dialog in the factual categories, de-duplicated by question, answers of at least four words that are
not a question back, plus the hand-written pairs in `handwritten.jsonl`. A stable hash puts ~20% of rows
in the forgetting set.
"""

import hashlib
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
# trivia is left out: `hitl demo` corrects questions from it, and replaying their answers would leak them.
CATEGORIES = {"science": None, "history": None, "literature": None, "computers": None,
              "food": None, "money": None, "sports": None, "movies": None, "health": None,
              "greetings": None, "conversations": None, "tech_support": 120}


def _text(x) -> str:
    return " ".join(str(x).split()) if "```" not in str(x) else str(x).strip()


def pairs(corpus: Path):
    for name, cap in CATEGORIES.items():
        data = yaml.safe_load((corpus / f"{name}.yml").read_text())
        rows, seen = [], set()
        for conv in data.get("conversations", []):
            if not isinstance(conv, list) or len(conv) < 2:
                continue
            q, a = _text(conv[0]), _text(conv[1])
            if q.lower() in seen or not (2 <= len(q) <= 300 and 1 <= len(a) <= 1200):
                continue
            if len(a.split()) < 4 or a.endswith("?"):  # replay teaches style: complete answers only
                continue
            seen.add(q.lower())
            rows.append({"messages": [{"role": "user", "content": q[0].upper() + q[1:]},
                                      {"role": "assistant", "content": a[0].upper() + a[1:]}],
                         "source": f"chatterbot-corpus/{name}"})
        if cap:
            rows = sorted(rows, key=lambda r: hashlib.sha256(r["messages"][0]["content"].encode()).digest())[:cap]
        yield from rows


def main(corpus: str) -> None:
    rows = list(pairs(Path(corpus)))
    with open(HERE / "handwritten.jsonl") as f:
        rows += [json.loads(line) for line in f if line.strip()]
    general, forgetting = [], []
    for r in rows:
        h = hashlib.sha256(("forgetting:" + r["messages"][0]["content"]).encode()).digest()
        (forgetting if h[0] < 52 else general).append(r)  # 52/256 ≈ 20%
    for name, part in (("general.jsonl", general), ("forgetting.jsonl", forgetting)):
        with open(HERE / name, "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(part))


if __name__ == "__main__":
    main(sys.argv[1])
