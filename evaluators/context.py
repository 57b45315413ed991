"""What every evaluator receives: the models (loaded on first use), the dataset snapshot, and the caches.

Answers and losses are memoised per (version, content hash of the items, decode settings): in memory, so
evaluators sharing data compute it once, and on disk under `cache_dir` (data_dir/eval-cache), so a champion
or base model already measured on a set is never run again (versions are immutable). A run then computes
only the candidate's side, and the models whose figures are all cached are never loaded."""

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.scoring import Scorer, read_jsonl

log = logging.getLogger(__name__)


class LazyScorer:
    """A Scorer loaded on first `score` / `generate`; `version` is known without loading."""

    def __init__(self, version: str, load: Callable[[], Scorer]):
        self.version, self._load, self._scorer = version, load, None

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    def _get(self) -> Scorer:
        if self._scorer is None:
            log.info("loading %s for the gates", self.version)
            self._scorer = self._load()
        return self._scorer

    def __getattr__(self, name: str) -> Any:  # score, generate, model, tokenizer, batch_size ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def content_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def row_group(row: dict, index: int) -> str:
    """The question group of a snapshot row: `lineage.group`, else its conversation / message, else the row."""
    lineage = row.get("lineage") or {}
    for key in ("group", "conversation_id", "message_id"):
        if lineage.get(key) is not None:
            return f"{key}:{lineage[key]}"
    return f"row:{index}"


@dataclass
class Context:
    candidate: Any  # Scorer or LazyScorer
    champion: Any
    snapshot: Path | None = None
    human_comparisons: list[dict] = field(default_factory=list)  # for the judge's κ: {prompt, a, b, choice}
    cache: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None  # on-disk cache of answers / losses (None: memory only)
    reference: Any = None  # the cumulative gate's reference model (the lineage's base), or None
    ancestry: list[dict] = field(default_factory=list)  # [{version, forgetting_accuracy, ...}] root first
    stats: dict[str, int] = field(default_factory=lambda: {"computed": 0, "disk_hits": 0})

    def split(self, kind: str, split: str, limit: int | None = None) -> list[dict]:
        """Rows of `<kind>.<split>.jsonl` in the snapshot (SEAMS format); empty when absent."""
        if self.snapshot is None:
            return []
        return read_jsonl(self.snapshot / f"{kind}.{split}.jsonl", limit)

    def has_kind(self, kind: str) -> bool:
        """Whether the snapshot holds any rows of `kind` (sft, dpo, kto) in any split. Without a snapshot the
        answer is unknown and taken as yes: a gate whose data is unknown lacks evidence, it is not exempt."""
        if self.snapshot is None or not Path(self.snapshot).is_dir():
            return True
        return any(p.stat().st_size > 0 for p in Path(self.snapshot).glob(f"{kind}.*.jsonl"))

    def _memo(self, scorer: Any, what: str, payload: Any, compute: Callable[[], Any]) -> Any:
        key = (scorer.version, what, content_hash(payload))
        if key in self.cache:
            return self.cache[key]
        path = self.cache_dir / key[0] / f"{what}-{key[2]}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                self.cache[key] = json.loads(path.read_text())
                self.stats["disk_hits"] += 1
                return self.cache[key]
            except (OSError, ValueError):
                log.warning("unreadable eval cache %s; recomputing", path)
        value = compute()
        self.stats["computed"] += 1
        value = json.loads(json.dumps(value))  # the same shape whether computed or read back
        self.cache[key] = value
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(value))
            tmp.replace(path)
        return value

    def losses(self, scorer: Any, key: str, items: list[tuple[list[dict], str]]) -> list[tuple[float, int]]:
        """(summed reply log-prob, reply tokens) per (prompt, reply): memoised per model and item content."""
        return [tuple(x) for x in self._memo(scorer, "losses", items, lambda: scorer.score(items))]

    def answers(self, scorer: Any, prompts: list[list[dict]], max_new_tokens: int,
                guesses: list[str] | None = None) -> list[str]:
        """Greedy replies, memoised per model, prompt content and decode settings. `guesses` (another
        version's greedy replies to the same prompts) only speed decoding up: the replies are the same."""
        return self._memo(scorer, "answers", {"prompts": prompts, "max_new_tokens": max_new_tokens,
                                              "decode": "greedy"},
                          lambda: scorer.generate(prompts, max_new_tokens, guesses=guesses))
