"""What the three builders share: exclusion-checked contexts, redaction, reviewer consensus, lineage."""

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from retrain.datasets.cleaning import normalize, redact_many, redact_pii
from retrain.datasets.repository import Store
from retrain.datasets.schemas import BuildOptions
from retrain.datasets.split import split_key, split_of


@dataclass
class Example:
    kind: str
    split: str
    row: dict  # TRL conversational row with its `lineage`
    family: str  # the item it came from (paraphrase variants share their source's family)
    prompt: list[dict] | None = None  # the prompt turns (shared with other examples of the same context)
    completion: list[dict] | None = None  # the completion turn(s) (DPO: chosen + rejected)
    line: tuple | None = None  # (sha256, canonical JSON, row), filled when written

    def __post_init__(self):
        if self.prompt is None:
            row = self.row
            if "messages" in row:
                self.prompt, self.completion = row["messages"][:-1], row["messages"][-1:]
            elif "chosen" in row:
                self.prompt, self.completion = row["prompt"], row["chosen"] + row["rejected"]
            else:
                self.prompt, self.completion = row["prompt"], row["completion"]


@dataclass
class Context:
    conversation_id: str
    split: str
    prompt: list[dict]  # redacted turns before the target, intact
    target_id: str
    target: str  # redacted reply


def consensus(votes: Iterable[tuple[Hashable, float]], min_agreement: float) -> tuple[Hashable | None, str | None]:
    """Reliability-weighted vote: (winner, None | "resolved" | "unresolved").

    The winner needs at least `min_agreement` of the total weight; otherwise the item is an
    unresolved conflict. "resolved" means there was disagreement and the majority was strong enough.
    """
    if isinstance(votes, list) and len(votes) == 1:
        return votes[0][0], None
    totals: dict[Hashable, float] = defaultdict(float)
    for label, weight in votes:
        totals[label] += max(weight, 1e-3)
    if not totals:
        return None, None
    best = max(totals, key=lambda k: (totals[k], str(k)))
    share = totals[best] / sum(totals.values())
    if share >= min_agreement:
        return best, ("resolved" if len(totals) > 1 else None)
    return None, "unresolved"


@dataclass
class Prep:
    """Build-wide state: options, reviewer reliability, caches and the drop/conflict counters."""

    store: Store
    options: BuildOptions
    rubric: list[str]
    reliability: dict[int, float]
    drops: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    conflicts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    pii: Counter = field(default_factory=Counter)
    _text: dict[str, str] = field(default_factory=dict)
    _ctx: dict[str, Context | str] = field(default_factory=dict)
    _split: dict[str, str] = field(default_factory=dict)
    _prompt_keys: dict[int, tuple] = field(default_factory=dict)
    _norm: dict[str, str] = field(default_factory=dict)

    def norm(self, text: str) -> str:
        got = self._norm.get(text)
        if got is None:
            got = self._norm[text] = normalize(text)
        return got

    def prompt_key(self, prompt: list[dict]) -> tuple:
        """Normalized (role, content) pairs of a prompt, cached per prompt object."""
        got = self._prompt_keys.get(id(prompt))
        if got is None or got[0] is not prompt:
            got = self._prompt_keys[id(prompt)] = (prompt, tuple((m["role"], self.norm(m["content"])) for m in prompt))
        return got[1]

    def weight(self, reviewer_id: int | None) -> float:
        return self.reliability.get(reviewer_id, 1.0) if reviewer_id is not None else 1.0

    def redact_all(self, texts) -> None:
        """Redact many texts in one pass (fills the cache `text` reads)."""
        if not self.options.redact_pii:
            return
        todo = list({t for t in texts if t not in self._text})
        hits: dict[str, int] = {}
        self._text.update(zip(todo, redact_many(todo, hits), strict=True))
        self.pii.update(hits)

    def text(self, s: str) -> str:
        """PII-redacted text (cached: contexts repeat across examples)."""
        if not self.options.redact_pii:
            return s
        out = self._text.get(s)
        if out is None:
            hits: dict[str, int] = {}
            out = self._text[s] = redact_pii(s, hits)
            self.pii.update(hits)
        return out

    def drop(self, kind: str, reason: str, n: int = 1) -> None:
        self.drops[kind][reason] += n

    def conflict(self, kind: str, state: str | None) -> None:
        if state:
            self.conflicts[kind][state] += 1

    def context(self, kind: str, message_id: str) -> Context | None:
        """The exclusion-checked context of a reply, or None (the reason is counted under `kind`)."""
        got = self._ctx.get(message_id)
        if got is None:
            got = self._ctx[message_id] = self._make_context(message_id)
        if isinstance(got, str):
            self.drop(kind, got)
            return None
        return got

    def peek(self, message_id: str) -> Context | None:
        """Like `context` but counts nothing (for replies that may not end up in any example)."""
        got = self._ctx.get(message_id)
        if got is None:
            got = self._ctx[message_id] = self._make_context(message_id)
        return None if isinstance(got, str) else got

    def _make_context(self, message_id: str) -> Context | str:
        store = self.store
        found = store.context(message_id)
        if found is None:
            return "missing_message"
        conv, turns = found
        end_user = store.conversations.get(conv)
        if conv in store.deleted_conversations or (end_user and end_user in store.deleted_end_users):
            return "deleted"
        excluded = set(self.options.exclude_tags)
        for turn in turns:
            for _fid, tags in store.flags.get(turn.id, ()):
                if excluded.intersection(tags):
                    return "flagged"
        if turns[-1].role != "assistant":
            return "not_assistant"
        key = split_key(conv, end_user)
        split = self._split.get(key)
        if split is None:
            split = self._split[key] = split_of(key, self.options.eval_fraction, self.options.split_salt)
        prompt = [{"role": t.role, "content": self.text(t.content)} for t in turns[:-1]]
        return Context(conv, split, prompt, message_id, self.text(turns[-1].content))

    # ------------------------------------------------------------------------------ assessments

    def rating_label(self, scores: dict) -> str:
        values = [scores.get(d) for d in self.rubric]
        if any(v is not None and v <= self.options.bad_max_score for v in values):
            return "bad"
        if all(v is not None and v >= self.options.sft_min_score for v in values):
            return "good"
        return "neutral"


def lineage(ctx: Context, feedback_ids: Iterable[str], reviewer_ids: Iterable[int | None],
            source: str = "feedback", **extra) -> dict:
    feedback_ids = list(feedback_ids)
    reviewers = [r for r in reviewer_ids if r is not None]
    return {"feedback_ids": feedback_ids if len(feedback_ids) == 1 else sorted(set(feedback_ids)),
            "reviewer_ids": reviewers if len(reviewers) == 1 else sorted(set(reviewers)),
            "conversation_id": ctx.conversation_id, "message_id": ctx.target_id, "source": source, **extra}


@dataclass
class Assessment:
    """Everything said about one reply, resolved by reliability-weighted consensus."""

    reviewer_votes: list[tuple[str, float]] = field(default_factory=list)  # ratings, reviewer thumbs, corrections
    user_votes: list[tuple[str, float]] = field(default_factory=list)  # end-user thumbs
    reviewer_ids: list[str] = field(default_factory=list)  # feedback ids behind reviewer_votes
    user_ids: list[str] = field(default_factory=list)
    reviewers: set[int] = field(default_factory=set)
    adjudicated: tuple[int, dict] | None = None  # (rating id, scores) of the latest admin decision
    weighted_scores: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    rating_ids: list[str] = field(default_factory=list)


def assess(prep: Prep) -> dict[str, Assessment]:
    """Collect the votes on every reply from ratings, thumbs and corrections."""
    out: dict[str, Assessment] = defaultdict(Assessment)
    for rid, mid, reviewer, scores, adjudicated in prep.store.ratings:
        a = out[mid]
        scores = scores or {}
        if adjudicated and (a.adjudicated is None or rid > a.adjudicated[0]):
            a.adjudicated = (rid, scores)
        w = prep.weight(reviewer)
        a.reviewer_votes.append((prep.rating_label(scores), w))
        a.reviewer_ids.append(f"rating:{rid}")
        a.rating_ids.append(f"rating:{rid}")
        a.reviewers.add(reviewer)
        for dim in prep.rubric:
            if isinstance(scores.get(dim), int | float):
                a.weighted_scores[dim].append((float(scores[dim]), w))
    for tid, mid, value, source, user_id in prep.store.thumbs:
        a = out[mid]
        label = "good" if value == "up" else "bad"
        if source == "reviewer":
            a.reviewer_votes.append((label, prep.weight(user_id)))
            a.reviewer_ids.append(f"thumbs:{tid}")
            a.reviewers.add(user_id)
        else:
            a.user_votes.append((label, prep.options.end_user_weight))
            a.user_ids.append(f"thumbs:{tid}")
    for cid, mid, reviewer, _content, _original in prep.store.corrections:
        a = out[mid]
        a.reviewer_votes.append(("bad", prep.weight(reviewer)))
        a.reviewer_ids.append(f"correction:{cid}")
        a.reviewers.add(reviewer)
    return out


def reviewer_verdict(prep: Prep, a: Assessment) -> tuple[str | None, str | None]:
    """good / bad / neutral from reviewers only; an admin's adjudicated rating decides alone."""
    if a.adjudicated is not None:
        return prep.rating_label(a.adjudicated[1]), None
    return consensus(a.reviewer_votes, prep.options.min_agreement)


def overall_verdict(prep: Prep, a: Assessment) -> tuple[str | None, str | None]:
    """Reviewers and end users together (end users weigh `end_user_weight`)."""
    if a.adjudicated is not None:
        return prep.rating_label(a.adjudicated[1]), None
    return consensus(a.reviewer_votes + a.user_votes, prep.options.min_agreement)


def mean_score(prep: Prep, a: Assessment) -> float | None:
    """Mean over rubric dimensions of the reliability-weighted mean score (adjudication wins)."""
    if a.adjudicated is not None:
        vals = [a.adjudicated[1][d] for d in prep.rubric if isinstance(a.adjudicated[1].get(d), int | float)]
        return sum(vals) / len(vals) if vals else None
    per_dim = []
    for dim in prep.rubric:
        pairs = a.weighted_scores.get(dim)
        if pairs:
            per_dim.append(sum(s * w for s, w in pairs) / sum(w for _, w in pairs))
    return sum(per_dim) / len(per_dim) if per_dim else None


def resolve_corrections(prep: Prep) -> dict[str, tuple[str, list[str], list[int]] | None]:
    """Per reply, the consensus correction: (content, correction ids, reviewer ids), or None if unresolved."""
    by_message: dict[str, list[tuple]] = defaultdict(list)
    for row in prep.store.corrections:
        by_message[row[1]].append(row)
    out = {}
    for mid, rows in by_message.items():
        groups: dict[str, list[tuple]] = defaultdict(list)
        for row in rows:
            groups[normalize(row[3])].append(row)
        winner, state = consensus(((key, prep.weight(row[2])) for key, g in groups.items() for row in g),
                                  prep.options.min_agreement)
        prep.conflict("correction", state)
        if winner is None:
            out[mid] = None
            continue
        group = sorted(groups[winner], key=lambda r: r[0])
        out[mid] = (group[-1][3], [f"correction:{r[0]}" for r in group], [r[2] for r in group])
    return out
