"""What every evaluator receives: both models, the dataset snapshot and a cache shared between them."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.scoring import Scorer, read_jsonl


@dataclass
class Context:
    candidate: Scorer
    champion: Scorer
    snapshot: Path | None = None
    human_comparisons: list[dict] = field(default_factory=list)  # for the judge's κ: {prompt, a, b, choice}
    cache: dict[str, Any] = field(default_factory=dict)

    def split(self, kind: str, split: str, limit: int | None = None) -> list[dict]:
        """Rows of `<kind>.<split>.jsonl` in the snapshot (SEAMS format); empty when absent."""
        if self.snapshot is None:
            return []
        return read_jsonl(self.snapshot / f"{kind}.{split}.jsonl", limit)

    def losses(self, scorer: Scorer, key: str, items: list[tuple[list[dict], str]]) -> list[tuple[float, int]]:
        """Scores memoised per model and item set, so evaluators sharing data score it once."""
        cache_key = (scorer.version, key)
        if cache_key not in self.cache:
            self.cache[cache_key] = scorer.score(items)
        return self.cache[cache_key]
