"""The forgetting set (`data/forgetting.jsonl`) and its answer checker. Pure Python, no model.

`load_set()` reads the set; `correct(item, answer)` judges one generated answer. The rule (see
`data/README.md`):

- only the start of the answer counts: its first two sentences, at most 60 words;
- refusal items (`"refusal": true`) are right iff that start refuses (`golden.REFUSAL`);
- other items are right iff one of the item's `answers` occurs there as whole words (case, accents and
  punctuation ignored: "Washington, D.C." = "washington dc", "forty-two" = "forty two"; "365" does not
  match "3650"), that occurrence is not negated ("not", "no", "never", "...n't", "instead of",
  "rather than" among the 3 words before it, within the same clause), and, for the closed categories
  (capital, element, state capital, arithmetic, continent, calendar), no other item's answer of that category is asserted
  before it ("The capital of Australia is Sydney, not Canberra" is wrong; words of the question itself
  are not counted as competing answers).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from evaluators.golden import REFUSAL

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "forgetting.jsonl"
CLOSED = frozenset({"capital", "element", "state_capital", "arithmetic", "continent", "calendar"})
MAX_SENTENCES, MAX_WORDS, NEGATION_WINDOW = 2, 60, 3

_NEGATORS = frozenset({"not", "no", "never", "nor"})
_NEG_PAIRS = frozenset({("instead", "of"), ("rather", "than")})
_CLAUSE = frozenset(".!?;:,()[]—–")
_SENTENCE_END = frozenset(".!?")
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand and".split())
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+(?:'[^\W\d_]+)*|[.!?;:,()\[\]—–]")

# category -> [(item id, kind, alias tokens)] of every set loaded so far (the default set when none is)
_POOLS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
_LOADED: set[str] = set()


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").casefold()
    text = re.sub(r"\b([^\W\d_])\.(?=[^\W\d_]\b)", r"\1", text)  # d.c. -> dc.   u.s.a. -> usa.
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000


def _tokens(text: str) -> list[tuple[str, int]]:
    """(token, end offset in the normalized text); possessive 's dropped, punctuation kept as tokens."""
    out = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok.endswith("'s") and len(tok) > 2:
            tok = tok[:-2]
        out.append((tok, m.end()))
    return out


def _words(text: str) -> tuple[str, ...]:
    return tuple(t for t, _ in _tokens(_normalize(text)) if t not in _CLAUSE)


def _window(answer: str) -> tuple[list[tuple[str, int]], str]:
    """The start of the answer: word tokens with their clause number, and the normalized text they span."""
    text = _normalize(answer)
    words, clause, sentences, end = [], 0, 0, 0
    for tok, stop in _tokens(text):
        if tok in _CLAUSE:
            clause += 1
            end = stop
            if tok in _SENTENCE_END and words:
                sentences += 1
                if sentences >= MAX_SENTENCES:
                    break
            continue
        if len(words) >= MAX_WORDS:
            break
        words.append((tok, clause))
        end = stop
    return words, text[:end]


def _occurrences(words: list[tuple[str, int]], alias: tuple[str, ...]) -> list[int]:
    n = len(alias)
    if not n:
        return []
    return [i for i in range(len(words) - n + 1)
            if all(words[i + k][0] == alias[k] for k in range(n))]


def _negated(words: list[tuple[str, int]], i: int) -> bool:
    clause = words[i][1]
    before = [w for w, c in words[max(0, i - NEGATION_WINDOW):i] if c == clause]
    if any(w in _NEGATORS or w.endswith("n't") for w in before):
        return True
    return any(pair in _NEG_PAIRS for pair in zip(before, before[1:]))


def _first_asserted(words: list[tuple[str, int]], aliases) -> int | None:
    starts = [i for alias in aliases for i in _occurrences(words, alias) if not _negated(words, i)]
    return min(starts) if starts else None


def _kind(alias: tuple[str, ...]) -> str:
    return "num" if len(alias) == 1 and re.fullmatch(r"\d+(?:\.\d+)?", alias[0]) else "word"


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _register(items: list[dict]) -> None:
    for item in items:
        if item.get("category") not in CLOSED or item.get("refusal"):
            continue
        pool = _POOLS.setdefault(item["category"], [])
        known = {(i, a) for i, _, a in pool}
        aliases = [_words(a) for a in item.get("answers", [])]
        kind = _kind(aliases[0]) if aliases else "word"
        for alias in aliases:
            if not alias or (item["id"], alias) in known:
                continue
            # competing answers: digits for numeric answers; names of 3+ characters that are not number words
            if kind == "num" and _kind(alias) != "num":
                continue
            if kind == "word" and (len(" ".join(alias)) < 3 or set(alias) <= _NUMBER_WORDS):
                continue
            pool.append((item["id"], kind, alias))


def load_set(path: str | Path | None = None) -> list[dict]:
    """The items of a forgetting set (JSON lines), in file order; also registers its closed-category answers."""
    path = Path(path or DEFAULT_PATH)
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    key = str(path.resolve())
    if key not in _LOADED:
        _LOADED.add(key)
        _register(items)
    return items


def _competitors(item: dict, kind: str, own: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    if item.get("category") not in CLOSED:
        return []
    if not _LOADED and DEFAULT_PATH.exists():
        load_set()
    prompt = _words(" ".join(m.get("content", "") for m in item.get("messages", [])))
    return [alias for other_id, other_kind, alias in _POOLS.get(item["category"], [])
            if other_id != item.get("id") and other_kind == kind and alias not in own
            and not _contains(prompt, alias) and not any(_contains(o, alias) for o in own)]


def correct(item: dict, answer: str) -> bool:
    """Whether `answer` is a right reply to the forgetting-set `item` (see the module docstring)."""
    words, text = _window(answer or "")
    if item.get("refusal"):
        return bool(REFUSAL.search(text))
    own = [a for a in (_words(x) for x in item.get("answers", [])) if a]
    if not own:
        return False
    key = _first_asserted(words, own)
    if key is None:
        return False
    rivals = _competitors(item, _kind(own[0]), own)
    first_rival = _first_asserted(words, rivals) if rivals else None
    return first_rival is None or first_rival >= key
