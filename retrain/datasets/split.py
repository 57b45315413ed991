"""Leak-free, persisted three-way split (train / validation / test), grouped by question.

Group key: the question, i.e. the normalized last user turn of an example's context (lower-cased,
contractions expanded, punctuation dropped: "What is the capital of France?" and "what's the capital
of france" are one question). Near duplicates (MinHash LSH over word 3-grams, estimated Jaccard ≥
`BuildOptions.question_similarity`) join one group, so the same question with a differently worded
correction never lands on both sides. Every example of a group shares one split.

Persistence (`SplitAssignment`): a question, once assigned, keeps its group and split forever, so
growth never moves anything, a change of fractions never moves an assigned group (e.g. a train group
into test), and an `as_of` rebuild sees the splits it saw before. A new question that is a near
duplicate of an assigned one joins that group (held-out groups first, when it resembles several).

New groups: conversations and questions are linked (union-find), so a new group that shares a
conversation with an assigned group inherits that group's split (held-out first when there are
several), and new groups linked only to each other form one unit. Units are placed in the order of
sha256(salt:key) by largest deficit: the split whose count of groups is furthest below its target
share after this unit (fixed tie order test, validation, train). 30 new groups at test 0.2 and
validation 0.1 give exactly 6 / 3 / 21. Contexts of a conversation whose (older) groups ended up in
different splits are dropped from the lower split ("test wins over validation wins over train").

Privacy: the table keeps no text, only a sha256 of the normalized question and its MinHash signature
(the feedback domain, where privacy deletions happen, cannot import retrain to delete rows here).
"""

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from core.models import utcnow
from retrain.datasets.cleaning import lsh_buckets, minhash_signatures, shingle_hashes, similar
from retrain.datasets.models import SplitAssignment
from retrain.datasets.schemas import BuildOptions

ORDER = ("test", "validation", "train")  # priority (held out first), and the deficit tie order
RANK = {s: i for i, s in enumerate(ORDER)}
NUM_PERM = 64
MAX_EXISTING_PER_BUCKET = 16  # assigned questions compared per LSH bucket with each new one

_APOSTROPHES = re.compile(r"[’‘`´]")
_CONTRACTIONS = [(re.compile(p), r) for p, r in (
    (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"), (r"\bwon't\b", "will not"), (r"\bshan't\b", "shall not"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'m\b", " am"), (r"'ll\b", " will"), (r"'ve\b", " have"),
    (r"'d\b", " would"), (r"\b(it|that|what|where|who|how|there|here|he|she|when|why)'s\b", r"\1 is"))]
_NON_WORD = re.compile(r"[^\w\s]+")


def question_text(text: str) -> str:
    """The group form of a question: lower-cased, contractions expanded, punctuation dropped."""
    t = _APOSTROPHES.sub("'", text.lower())
    if "'" in t:
        for pattern, repl in _CONTRACTIONS:
            t = pattern.sub(repl, t)
    return " ".join(_NON_WORD.sub(" ", t).split())


def question_hash(norm: str) -> str:
    return hashlib.sha256(f"hitl-question\0{norm}".encode()).hexdigest()


def targets(options: BuildOptions) -> dict[str, float]:
    train = max(0.0, 1.0 - options.validation_fraction - options.test_fraction)
    return {"test": options.test_fraction, "validation": options.validation_fraction, "train": train}


def pick_split(fractions: dict[str, float], counts: Counter, weight: int = 1) -> str:
    """The split furthest below its target share once `weight` more groups are placed (ties: ORDER)."""
    after = sum(counts.values()) + weight
    return max(ORDER, key=lambda s: (round(fractions[s] * after - counts[s], 9), -RANK[s]))  # round: exact ties


@dataclass
class Assignment:
    """question hash -> (group key, split), and what this build added."""

    of: dict[str, tuple[str, str]] = field(default_factory=dict)
    new_groups: Counter = field(default_factory=Counter)
    new_questions: int = 0
    merged_into_assigned: int = 0  # new questions that joined an assigned group as near duplicates
    inherited: int = 0  # new groups that took the split of a group sharing a conversation
    rows: list[dict] = field(default_factory=list)  # SplitAssignment rows of the new questions


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        parent = self.parent
        root = parent.setdefault(x, x)
        while root != parent[root]:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra <= rb else (rb, ra)
            self.parent[hi] = lo


def assign(session: Session, questions: dict[str, str], links: Iterable[tuple[str, str]],
           options: BuildOptions) -> Assignment:
    """Group and split every question (hash -> normalized text); `links` are (conversation id, question
    hash) pairs. Reads only: the new questions' rows are in `Assignment.rows`, for `persist`."""
    conn = session.connection()
    table = SplitAssignment.__table__
    out = Assignment()
    known = {q: (g, s) for q, g, s in conn.execute(
        sa.select(table.c.question_hash, table.c.group_key, table.c.split)) if q in questions}
    out.of.update(known)
    new = sorted(q for q in questions if q not in known)
    out.new_questions = len(new)
    if not new:
        return out

    # near duplicates: new questions among themselves (one cluster) and against assigned ones (join)
    new_sigs = minhash_signatures(*shingle_hashes([questions[q] for q in new]), num_perm=NUM_PERM)
    old_keys, old_sigs = [], np.zeros((0, NUM_PERM), dtype=np.uint32)
    old_rows = conn.execute(sa.select(table.c.group_key, table.c.split, table.c.signature)).all()
    if old_rows:
        old_keys = [(s, g) for g, s, _sig in old_rows]
        old_sigs = np.frombuffer(b"".join(r[2] for r in old_rows), dtype="<u4").reshape(len(old_rows), NUM_PERM)
    sigs = np.concatenate([old_sigs, new_sigs]) if len(old_keys) else new_sigs
    n_old, threshold = len(old_keys), options.question_similarity
    clusters = _UnionFind()
    joins: dict[int, set[tuple[str, str]]] = defaultdict(set)  # new index -> {(split, group)} it resembles
    for bucket in lsh_buckets(sigs, threshold):
        fresh = [int(i) for i in bucket if i >= n_old]
        if not fresh:
            continue
        olds = [int(i) for i in bucket if i < n_old][:MAX_EXISTING_PER_BUCKET]
        for i in fresh[1:]:
            if clusters.find(fresh[0]) != clusters.find(i) and similar(sigs, fresh[0], i, threshold):
                clusters.union(fresh[0], i)
        for i in fresh:
            for o in olds:
                if old_keys[o] not in joins[i] and similar(sigs, i, o, threshold):
                    joins[i].add(old_keys[o])

    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n_old, n_old + len(new)):
        members[clusters.find(i)].append(i)
    fresh_groups: dict[str, list[str]] = {}  # new group key -> its questions
    for cluster in members.values():
        qs = [new[i - n_old] for i in cluster]
        resembles = set().union(*(joins.get(i, set()) for i in cluster))
        if resembles:  # joins the assigned group it resembles (held-out first, then the smallest key)
            split, group = min(resembles, key=lambda sg: (RANK[sg[0]], sg[1]))
            out.of.update((q, (group, split)) for q in qs)
            out.merged_into_assigned += len(qs)
        else:
            fresh_groups[min(qs)] = qs

    # conversations link questions: a new group sharing a conversation with an assigned one inherits its split
    group_of = {q: g for g, qs in fresh_groups.items() for q in qs}
    linked = _UnionFind()
    for conv, q in links:
        linked.union(("g", group_of[q] if q in group_of else out.of[q][0]), ("c", conv))
    assigned_split: dict = {}
    for q, (g, s) in out.of.items():
        root = linked.find(("g", g))
        if root not in assigned_split or RANK[s] < RANK[assigned_split[root]]:
            assigned_split[root] = s
    units: dict = defaultdict(list)
    for g in fresh_groups:
        units[linked.find(("g", g))].append(g)

    fractions = targets(options)
    counts = Counter({s: n for s, n in conn.execute(
        sa.select(table.c.split, sa.func.count(sa.distinct(table.c.group_key))).group_by(table.c.split))})
    salt = options.split_salt
    decided: dict[str, str] = {}
    for root, groups in sorted(units.items(), key=lambda u: hashlib.sha256(f"{salt}:{min(u[1])}".encode()).digest()):
        split = assigned_split.get(root)
        if split is None:
            split = pick_split(fractions, counts, len(groups))
        else:
            out.inherited += len(groups)
        counts[split] += len(groups)
        out.new_groups[split] += len(groups)
        decided.update((g, split) for g in groups)
    for g, qs in fresh_groups.items():
        out.of.update((q, (g, decided[g])) for q in qs)

    now = utcnow()
    out.rows = [{"question_hash": q, "group_key": out.of[q][0], "split": out.of[q][1],
                 "signature": new_sigs[i].astype("<u4").tobytes(), "assigned_at": now} for i, q in enumerate(new)]
    return out


def persist(session: Session, rows: list[dict]) -> None:
    """Insert the new assignments (bulk; flush only). The build calls it at its end, so it holds no
    write lock while it works (SQLite: a paraphrase endpoint on the same database must write meanwhile)."""
    conn = session.connection()
    for start in range(0, len(rows), 5000):
        conn.execute(sa.insert(SplitAssignment.__table__), rows[start: start + 5000])
