"""What the three builders share: exclusion-checked contexts, redaction, reviewer consensus, lineage."""

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from feedback.quality import choose_correction
from retrain.datasets.cleaning import normalize, redact_many, redact_pii
from retrain.datasets.labels import dawid_skene
from retrain.datasets.repository import Store
from retrain.datasets.schemas import BuildOptions
from retrain.datasets import split as splitting


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
    split: str  # "" until `Prep.assign_splits` has run
    prompt: list[dict]  # redacted turns before the target, intact
    target_id: str
    target: str  # redacted reply
    question: str = ""  # sha256 of the normalized last user turn (see split.py)
    group: str = ""  # the question group's key (split.py), shared by near-duplicate questions
    target_calls: list[dict] | None = None  # the reply's tool calls, TRL's format (`trl_calls`)
    tools: list[dict] | None = None  # the request's `tools`, kept on the rows

    def reply(self) -> dict:
        """The reply as TRL's conversational assistant turn (with `tool_calls` when it made any)."""
        return {"role": "assistant", "content": self.target,
                **({"tool_calls": self.target_calls} if self.target_calls else {})}

    def said(self) -> str:
        """What tells two replies apart: the text, then the calls."""
        return self.target + (json.dumps(self.target_calls, sort_keys=True) if self.target_calls else "")

    def extra(self) -> dict:
        """The row's `tools` when the request had them, as a JSON string (TRL's trainers decode it for the chat
        template; as a string, rows with differently shaped tool schemas still share one Arrow schema)."""
        return {"tools": json.dumps(self.tools, ensure_ascii=False)} if self.tools else {}


VOTER: dict[str, Callable[[tuple], tuple]] = {  # a row's (reply, person, kind): one vote each
    "rating": lambda r: (r[1], r[2], r[4]),  # an admin's adjudication is a kind of its own
    "thumbs": lambda r: (r[1], r[3], r[4]),  # end users' thumbs come through their service key
    "correction": lambda r: (r[1], r[2]),
    "comparison": lambda r: (r[1], r[2], min(r[3], r[4]), max(r[3], r[4])),
}


def latest_votes(rows: Iterable[tuple], kind: str) -> list[tuple]:
    """One vote per person per reply per kind: of the rows `VOTER[kind]` says are the same vote, only the
    latest (highest id) counts, so repeating a rating, thumbs, correction or comparison adds nothing."""
    latest: dict[tuple, tuple] = {}
    for row in rows:
        voter = VOTER[kind](row)
        if voter not in latest or row[0] > latest[voter][0]:
            latest[voter] = row
    return sorted(latest.values(), key=lambda r: r[0])


def consensus(votes: Iterable[tuple[Hashable, float]], min_agreement: float) -> tuple[Hashable | None, str | None]:
    """Reliability-weighted vote: (winner, None | "resolved" | "unresolved").

    The winner needs at least `min_agreement` of the total weight; otherwise the item is an
    unresolved conflict. "resolved" means there was disagreement and the majority was strong enough.
    Votes of weight 0 (reviewers below the reliability floor) are ignored, even a lone one.
    """
    votes = [(label, weight) for label, weight in votes if weight > 0]  # weight 0: below the reliability floor
    if len(votes) == 1:
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
    _assigned: dict[str, tuple[str, str]] | None = None  # question hash -> (group, split), once assigned
    split_report: dict = field(default_factory=dict)
    new_assignments: list[dict] = field(default_factory=list)  # persisted by the build at its end
    _prompt_keys: dict[int, tuple] = field(default_factory=dict)
    _norm: dict[str, str] = field(default_factory=dict)
    _question_texts: dict[str, str] = field(default_factory=dict)

    def norm(self, text: str) -> str:
        got = self._norm.get(text)
        if got is None:
            got = self._norm[text] = normalize(text)
        return got

    def prompt_key(self, prompt: list[dict]) -> tuple:
        """Normalized (role, content) pairs of a prompt, cached per prompt object."""
        got = self._prompt_keys.get(id(prompt))
        if got is None or got[0] is not prompt:
            got = self._prompt_keys[id(prompt)] = (prompt, tuple(
                (m["role"], self.norm(m["content"]), *((json.dumps(m["tool_calls"], sort_keys=True),)
                                                       if m.get("tool_calls") else ())) for m in prompt))
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
        names = {c.get("id"): c.get("function", {}).get("name") for t in turns for c in t.tool_calls or ()}
        prompt = [self.message(t, names) for t in turns[:-1]]
        last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)
        text = splitting.question_text(last_user) if last_user is not None else f"conversation {conv}"
        ctx = Context(conv, "", prompt, message_id, self.text(turns[-1].content), splitting.question_hash(text),
                      target_calls=self.trl_calls(turns[-1].tool_calls), tools=turns[-1].tools)
        self._question_texts[ctx.question] = text
        if self._assigned is not None:  # made after the assignment (not expected): only known questions
            if ctx.question not in self._assigned:
                return "unassigned_question"
            ctx.group, ctx.split = self._assigned[ctx.question]
        return ctx

    def message(self, turn, names: dict[str, str]) -> dict:
        """A stored turn as TRL's tool-calling conversational format: an assistant turn keeps its `tool_calls`,
        a `tool` turn its `tool_call_id` and the called function's `name`."""
        out = {"role": turn.role, "content": self.text(turn.content)}
        if turn.tool_calls:
            out["tool_calls"] = self.trl_calls(turn.tool_calls)
        if turn.tool_call_id is not None:
            out["tool_call_id"] = turn.tool_call_id
            if names.get(turn.tool_call_id):
                out["name"] = names[turn.tool_call_id]
        return out

    def trl_calls(self, calls: list[dict] | None) -> list[dict] | None:
        """OpenAI tool calls as TRL (and chat templates) take them: `arguments` a dict (its strings redacted);
        arguments that are not a JSON object stay the string the model wrote."""
        if not calls:
            return None
        out = []
        for call in calls:
            function = call.get("function") or {}
            arguments = function.get("arguments", "")
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                parsed = None
            arguments = self._redact_json(parsed) if isinstance(parsed, dict) else self.text(str(arguments))
            out.append({"id": call.get("id"), "type": "function",
                        "function": {"name": function.get("name"), "arguments": arguments}})
        return out

    def _redact_json(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self._redact_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_json(v) for v in value]
        return value

    def assign_splits(self, session) -> None:
        """Group every context the build can read (feedback targets and served replies) by question and
        give it its group's split (see split.py; the build persists `new_assignments` at its end).
        Contexts of a conversation whose groups ended up in different splits are dropped below the
        conversation's highest split (test > validation > train)."""
        store = self.store
        mids = dict.fromkeys([r[1] for r in store.ratings] + [r[1] for r in store.thumbs]
                             + [r[1] for r in store.corrections] + [r[1] for r in store.comparisons] + store.served)
        contexts = [c for c in (self.peek(mid) for mid in mids) if c is not None]
        questions = {c.question: self._question_texts[c.question] for c in contexts}
        result = splitting.assign(session, questions, ((c.conversation_id, c.question) for c in contexts), self.options)
        self._assigned = result.of
        self.new_assignments = result.rows
        best: dict[str, int] = {}
        for c in contexts:
            c.group, c.split = result.of[c.question]
            best[c.conversation_id] = min(best.get(c.conversation_id, 9), splitting.RANK[c.split])
        conflicts = 0
        for c in contexts:
            if splitting.RANK[c.split] > best[c.conversation_id]:
                self._ctx[c.target_id] = "split_conflict"
                conflicts += 1
        groups = {c.group: c.split for c in contexts if self._ctx.get(c.target_id) is c}
        self.split_report = {
            "groups": dict(sorted(Counter(groups.values()).items())),
            "new_groups": dict(sorted(result.new_groups.items())),
            "new_questions": result.new_questions,
            "joined_assigned_group": result.merged_into_assigned,
            "inherited_via_conversation": result.inherited,
            "conversation_conflicts_dropped": conflicts,
        }
        self._question_texts.clear()

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
            "conversation_id": ctx.conversation_id, "message_id": ctx.target_id, "group": ctx.group,
            "source": source, **extra}


@dataclass
class Assessment:
    """Everything said about one reply. Reviewer votes of weight 0 (below the reliability floor) are
    left out. Replies with two or more reviewers get a Dawid–Skene posterior over bad/neutral/good
    (`labels.py`); `pending` names why the reply waits for an admin (see `resolve_corrections`)."""

    reviewer_votes: list[tuple[str, float]] = field(default_factory=list)  # ratings, reviewer thumbs, corrections
    user_votes: list[tuple[str, float]] = field(default_factory=list)  # end-user thumbs
    reviewer_ids: list[str] = field(default_factory=list)  # feedback ids behind reviewer_votes
    user_ids: list[str] = field(default_factory=list)
    reviewers: set[int] = field(default_factory=set)
    adjudicated: tuple[int, dict, int] | None = None  # (rating id, scores, admin id) of the latest admin decision
    weighted_scores: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    rating_ids: list[str] = field(default_factory=list)
    labels: list[tuple[int, str]] = field(default_factory=list)  # (reviewer, label) for the Dawid–Skene fit
    good_voters: set[int] = field(default_factory=set)  # reviewers who rated it good or gave a thumbs up
    ignored: int = 0  # votes left out: their reviewer is below the reliability floor
    posterior: dict[str, float] | None = None  # Dawid–Skene class shares (≥ 2 reviewers)
    pending: str | None = None  # "correction_vs_good" | "corrections_differ": waits for adjudication


def assess(prep: Prep) -> dict[str, Assessment]:
    """Collect the votes on every reply from ratings, thumbs and corrections, then estimate the label
    of every reply with two or more reviewers by Dawid–Skene EM (counts in `prep.conflicts["consensus"]`)."""
    out: dict[str, Assessment] = defaultdict(Assessment)
    for rid, mid, reviewer, scores, adjudicated in latest_votes(prep.store.ratings, "rating"):
        a = out[mid]
        scores = scores or {}
        if adjudicated:
            if a.adjudicated is None or rid > a.adjudicated[0]:
                a.adjudicated = (rid, scores, reviewer)
            continue  # an admin's decision is not one more vote: it decides alone (see the verdicts)
        w = prep.weight(reviewer)
        if w <= 0:
            a.ignored += 1
            continue
        label = prep.rating_label(scores)
        a.reviewer_votes.append((label, w))
        a.reviewer_ids.append(f"rating:{rid}")
        a.rating_ids.append(f"rating:{rid}")
        a.reviewers.add(reviewer)
        a.labels.append((reviewer, label))
        if label == "good":
            a.good_voters.add(reviewer)
        for dim in prep.rubric:
            if isinstance(scores.get(dim), int | float):
                a.weighted_scores[dim].append((float(scores[dim]), w))
    for tid, mid, value, source, user_id in latest_votes(prep.store.thumbs, "thumbs"):
        a = out[mid]
        label = "good" if value == "up" else "bad"
        if source == "reviewer":
            w = prep.weight(user_id)
            if w <= 0:
                a.ignored += 1
                continue
            a.reviewer_votes.append((label, w))
            a.reviewer_ids.append(f"thumbs:{tid}")
            a.reviewers.add(user_id)
            a.labels.append((user_id, label))
            if label == "good":
                a.good_voters.add(user_id)
        else:
            a.user_votes.append((label, prep.options.end_user_weight))
            a.user_ids.append(f"thumbs:{tid}")
    for cid, mid, reviewer, _content, _original in latest_votes(prep.store.corrections, "correction"):
        a = out[mid]
        w = prep.weight(reviewer)
        if w <= 0:
            a.ignored += 1
            continue
        a.reviewer_votes.append(("bad", w))
        a.reviewer_ids.append(f"correction:{cid}")
        a.reviewers.add(reviewer)
        a.labels.append((reviewer, "bad"))
    posteriors, report = dawid_skene({mid: a.labels for mid, a in out.items() if a.adjudicated is None},
                                     prep.reliability)
    for mid, posterior in posteriors.items():
        out[mid].posterior = posterior
    prep.conflicts["consensus"].update({
        "dawid_skene_items": report["items"],
        "votes_ignored_below_floor": sum(a.ignored for a in out.values()),
        "replies_only_below_floor": sum(1 for a in out.values()
                                        if a.ignored and not a.reviewer_votes and a.adjudicated is None),
    })
    return out


def _disputed(a: Assessment) -> bool:
    """Reviewers gave different labels and Dawid–Skene weighed them (unanimous votes stand as they are)."""
    return a.posterior is not None and len({label for _, label in a.labels}) > 1


def _reviewer_share(a: Assessment) -> list[tuple[str, float]]:
    """Reviewer votes as a consensus sees them: for a disputed reply the Dawid–Skene class shares
    scaled to the reviewers' total weight, else the votes themselves."""
    if not _disputed(a):
        return a.reviewer_votes
    total = sum(w for _, w in a.reviewer_votes)
    return [(label, share * total) for label, share in a.posterior.items() if share > 0]


def reviewer_verdict(prep: Prep, a: Assessment) -> tuple[str | None, str | None]:
    """good / bad / neutral from reviewers only; an admin's adjudicated rating decides alone; a reply
    waiting for adjudication is unresolved; a disputed one takes the Dawid–Skene label when its
    posterior reaches `min_agreement`."""
    if a.adjudicated is not None:
        return prep.rating_label(a.adjudicated[1]), None
    if a.pending:
        return None, "unresolved"
    if _disputed(a):
        label = max(a.posterior, key=lambda k: (a.posterior[k], k))
        return (label, "resolved") if a.posterior[label] >= prep.options.min_agreement else (None, "unresolved")
    return consensus(a.reviewer_votes, prep.options.min_agreement)


def overall_verdict(prep: Prep, a: Assessment) -> tuple[str | None, str | None]:
    """Reviewers (Dawid–Skene shares when disputed) and end users together (end users weigh
    `end_user_weight`)."""
    if a.adjudicated is not None:
        return prep.rating_label(a.adjudicated[1]), None
    if a.pending:
        return None, "unresolved"
    return consensus(_reviewer_share(a) + a.user_votes, prep.options.min_agreement)


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


def resolve_corrections(prep: Prep, assessments: dict[str, Assessment] | None = None,
                        ) -> dict[str, tuple[str, list[str], list[int]] | None]:
    """Per corrected reply, the correction to train on: (content, correction ids, reviewer ids), or None
    while the reply waits for adjudication (its `Assessment.pending` says why).

    - Corrections by reviewers below the reliability floor are ignored (a reply corrected only by
      them is left out: filters.correction.unreliable_reviewer).
    - Differing corrections are grouped into near-identical versions (`feedback.quality.choose_correction`:
      equal words, or word-set Jaccard ≥ `correction_similarity`); the version whose reviewers weigh most
      wins when it outweighs the next by 1 + `correction_margin`, else the reply waits for adjudication.
    - A correction of a reply another reviewer rated good (or gave a thumbs up) waits for adjudication:
      neither the correction (SFT target, DPO chosen) nor the reply is used until an admin decides.
    - After adjudication: scores judged good keep the reply and drop the corrections; otherwise the
      admin's own correction wins, else the heaviest version.
    """
    assessments = assess(prep) if assessments is None else assessments
    by_message: dict[str, list[tuple]] = defaultdict(list)
    for row in latest_votes(prep.store.corrections, "correction"):
        by_message[row[1]].append(row)
    similarity, margin = prep.options.correction_similarity, prep.options.correction_margin
    out = {}
    for mid, rows in by_message.items():
        a = assessments.get(mid) or Assessment()
        picks = [(r[0], r[2], r[3]) for r in rows]  # (id, reviewer, content)
        chosen, group, state, groups = choose_correction(picks, prep.weight, similarity, margin)
        if a.adjudicated is not None:
            if prep.rating_label(a.adjudicated[1]) == "good":
                prep.drop("correction", "adjudicated_good")
                continue
            admin = [p for p in picks if p[1] == a.adjudicated[2]]
            if admin:
                chosen, group = max(admin, key=lambda p: p[0]), [max(admin, key=lambda p: p[0])]
            elif chosen is None and groups:
                ids = set(groups[0]["correction_ids"])
                group = [p for p in picks if p[0] in ids]
                chosen = max(group, key=lambda p: (prep.weight(p[1]), p[0]))
            if chosen is None:
                prep.drop("correction", "unreliable_reviewer")
                continue
            out[mid] = (chosen[2], sorted(f"correction:{p[0]}" for p in group), sorted({p[1] for p in group}))
            continue
        if state == "unreliable":
            prep.drop("correction", "unreliable_reviewer")
            continue
        correctors = {p[1] for p in picks if prep.weight(p[1]) > 0}
        if a.good_voters - correctors:
            a.pending = "correction_vs_good"
        elif state == "adjudicate":
            a.pending = "corrections_differ"
        prep.conflict("correction", "adjudication" if a.pending else state)
        if a.pending:
            prep.drop("correction", f"awaiting_adjudication_{a.pending}")
            out[mid] = None
            continue
        out[mid] = (chosen[2], [f"correction:{p[0]}" for p in sorted(group)], [p[1] for p in sorted(group)])
    return out
