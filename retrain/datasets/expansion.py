"""Optional paraphrase expansion (off by default): rewrite the last user turn of each corrected SFT
example with an OpenAI-compatible model, keeping the corrected answer, so the model learns the fact
rather than the wording. Variants keep their source's split and family and are marked
`lineage.source = "paraphrase"`. Answers are cached on disk, so a rebuild asks nothing twice and
gives the same snapshot."""

import copy
import hashlib
import json
import os
from pathlib import Path

from retrain.datasets.cleaning import near_duplicate_groups, normalize
from retrain.datasets.common import Example, Prep

INSTRUCTION = ("Rewrite the user's message below with different wording but exactly the same meaning and "
               "request. Reply with the rewritten message only, no quotes, no preamble.")


class ExpansionError(ValueError):
    """Expansion was asked for but no endpoint is configured."""


class ParaphraseCache:
    """Append-only JSONL cache of paraphrases keyed by (model, text, variant number); each record also
    names its source text by hash, so a privacy deletion can find it (`forget`)."""

    def __init__(self, path: Path):
        self.path = path
        self.items: dict[str, str] = {}
        self.records: list[dict] = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.items[rec["key"]] = rec["text"]
                    self.records.append(rec)

    @staticmethod
    def key(model: str, text: str, k: int) -> str:
        return hashlib.sha256(f"{model}\0{k}\0{text}".encode()).hexdigest()

    @staticmethod
    def source(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def put(self, key: str, text: str, source: str) -> None:
        self.items[key] = text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "source": self.source(source), "text": text}, ensure_ascii=False) + "\n")

    def forget(self, sources: set[str], texts: set[str]) -> int:
        """Drop the paraphrases of these source texts, and any equal to one of `texts`; rewrite the file."""
        hashes = {self.source(t) for t in sources}
        kept = [r for r in self.records if r.get("source") not in hashes and r["text"] not in texts]
        dropped = len(self.records) - len(kept)
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)
            self.records, self.items = kept, {r["key"]: r["text"] for r in kept}
        return dropped


def _clean(text: str) -> str:
    text = text.strip().strip('"').strip("'").strip()
    for prefix in ("Rewritten message:", "Paraphrase:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix):].strip()
    return text


def expand(prep: Prep, examples: list[Example], settings, cache_path: Path) -> tuple[list[Example], dict]:
    """Paraphrase variants of the corrected SFT examples; returns them and a report."""
    opts = prep.options
    if not settings.remote_base_url:
        raise ExpansionError("paraphrase expansion needs an endpoint in HITL_REMOTE_BASE_URL")
    model = opts.paraphrase_model or settings.remote_model or "default"
    import openai

    client = openai.OpenAI(base_url=settings.remote_base_url, api_key=settings.remote_api_key, timeout=120,
                           max_retries=1)
    cache = ParaphraseCache(cache_path)
    sources = [e for e in examples if e.row["lineage"].get("via") == "correction"]
    variants, generated = [], 0
    for src in sources:
        messages = src.row["messages"]
        turn = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if turn is None:
            continue
        original = messages[turn]["content"]
        texts = []
        for k in range(opts.paraphrases):
            key = ParaphraseCache.key(model, original, k)
            if key not in cache.items:
                reply = client.chat.completions.create(
                    model=model, temperature=0.9, seed=k, max_tokens=opts.paraphrase_max_tokens,
                    messages=[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": original}])
                cache.put(key, _clean(reply.choices[0].message.content or ""), original)
            texts.append(prep.text(cache.items[key]))
            generated += 1
        for k, text in _distinct(original, texts):
            row = copy.deepcopy(src.row)
            row["messages"][turn]["content"] = text
            row["lineage"].update(source="paraphrase", paraphrase_index=k)
            variants.append(Example("sft", src.split, row, src.family))
    return variants, {"sources": len(sources), "generated": generated, "kept_after_expansion_dedup": len(variants)}


def _distinct(original: str, texts: list[str]) -> list[tuple[int, str]]:
    """Non-empty variants that are not (near-)duplicates of the original or of each other."""
    groups = near_duplicate_groups([original, *texts])
    seen = {normalize(original)}
    kept = []
    for k, text in enumerate(texts):
        if not text or normalize(text) in seen or groups[k + 1] != k + 1:
            continue
        seen.add(normalize(text))
        kept.append((k, text))
    return kept
