"""Every query the dataset builder makes: bulk column reads (no ORM objects), one pass per table."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from feedback.models import Candidate, Comparison, Correction, Deletion, Flag, Rating, Thumbs
from service.models import Conversation, Message

FEEDBACK_TABLES = {"thumbs": Thumbs, "rating": Rating, "correction": Correction, "comparison": Comparison,
                   "flag": Flag, "candidate": Candidate}


@dataclass
class Turn:
    id: str
    position: int
    role: str
    content: str
    finish_reason: str | None = None  # "length": the reply was cut off by max_tokens
    tool_calls: list[dict] | None = None  # an assistant turn's calls (OpenAI's `tool_calls`)
    tool_call_id: str | None = None  # a `tool` turn: the call it answers
    tools: list[dict] | None = None  # a served reply: the request's `tools`


@dataclass
class Store:
    """The part of the feedback store a build reads, as plain tuples and dicts."""

    conversations: dict[str, str | None] = field(default_factory=dict)  # id -> end_user
    turns: dict[str, list[Turn]] = field(default_factory=dict)  # conversation id -> ordered turns
    where: dict[str, tuple[str, int]] = field(default_factory=dict)  # message id -> (conversation id, index)
    thumbs: list[tuple] = field(default_factory=list)  # id, message_id, thumbs, source, user_id
    ratings: list[tuple] = field(default_factory=list)  # id, message_id, reviewer_id, scores, adjudicated
    corrections: list[tuple] = field(default_factory=list)  # id, message_id, reviewer_id, content, original
    candidates: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (message_id, content)
    comparisons: list[tuple] = field(default_factory=list)  # id, message_id, reviewer_id, a, b, choice
    flags: dict[str, list[tuple[int, list[str]]]] = field(default_factory=lambda: defaultdict(list))
    deleted_conversations: set[str] = field(default_factory=set)
    deleted_end_users: set[str] = field(default_factory=set)
    watermark: dict[str, int] = field(default_factory=dict)  # table -> max id read
    served: list[str] = field(default_factory=list)  # the latest assistant replies, newest first (anchor candidates)

    def context(self, message_id: str) -> tuple[str, list[Turn]] | None:
        """(conversation id, turns up to and including the message), or None if it is gone."""
        found = self.where.get(message_id)
        if found is None:
            return None
        conv, index = found
        return conv, self.turns[conv][: index + 1]

    def turn(self, message_id: str) -> Turn:
        conv, index = self.where[message_id]
        return self.turns[conv][index]


def _as_of(model, as_of: datetime | None):
    return [model.created_at <= as_of] if as_of is not None else []


def load_store(session: Session, as_of: datetime | None = None, served: int = 0, also: tuple = ()) -> Store:
    """Read feedback rows (created up to `as_of`), the conversations they point at, and deletions; with
    `served`, also the latest that many assistant replies and their conversations, reviewed or not; with `also`
    (SELECTs of conversation ids), those conversations too."""
    conn = session.connection()
    store = Store()
    t, r, c, cmp, f, cand = (m.__table__ for m in (Thumbs, Rating, Correction, Comparison, Flag, Candidate))

    store.thumbs = conn.execute(sa.select(t.c.id, t.c.message_id, t.c.thumbs, t.c.source, t.c.user_id)
                                .where(*_as_of(Thumbs, as_of))).all()
    store.ratings = conn.execute(sa.select(r.c.id, r.c.message_id, r.c.reviewer_id, r.c.scores, r.c.adjudicated)
                                 .where(*_as_of(Rating, as_of))).all()
    store.corrections = conn.execute(sa.select(c.c.id, c.c.message_id, c.c.reviewer_id, c.c.content, c.c.original)
                                     .where(*_as_of(Correction, as_of))).all()
    store.comparisons = conn.execute(
        sa.select(cmp.c.id, cmp.c.message_id, cmp.c.reviewer_id, cmp.c.candidate_a, cmp.c.candidate_b, cmp.c.choice)
        .where(*_as_of(Comparison, as_of))).all()
    store.candidates = {row[0]: (row[1], row[2]) for row in conn.execute(
        sa.select(cand.c.id, cand.c.message_id, cand.c.content).where(*_as_of(Candidate, as_of)))}
    for fid, mid, tags in conn.execute(sa.select(f.c.id, f.c.message_id, f.c.tags).where(*_as_of(Flag, as_of))):
        store.flags[mid].append((fid, list(tags or [])))

    d = Deletion.__table__
    for conv, user, convs in conn.execute(sa.select(d.c.conversation_id, d.c.end_user, d.c.conversation_ids)):
        if conv:
            store.deleted_conversations.add(conv)
        if user:
            store.deleted_end_users.add(user)
        store.deleted_conversations.update(convs or [])

    targets = sa.union(*(sa.select(m.__table__.c.message_id) for m in (Thumbs, Rating, Correction, Comparison, Flag)))
    m, cv = Message.__table__, Conversation.__table__
    parts = [sa.select(m.c.conversation_id).where(m.c.id.in_(targets)), *also]
    if served:
        latest = (sa.select(m.c.id, m.c.conversation_id).where(m.c.role == "assistant", m.c.from_client.is_(False),
                                                               *_as_of(Message, as_of))
                  .order_by(m.c.created_at.desc(), m.c.id.desc()).limit(served).subquery())
        store.served = list(conn.execute(sa.select(latest.c.id)).scalars())
        parts.append(sa.select(latest.c.conversation_id))
    convs = sa.union(*parts) if len(parts) > 1 else parts[0]
    convs = sa.select(convs.subquery().c.conversation_id).distinct()
    rows = conn.execute(
        sa.select(m.c.conversation_id, m.c.id, m.c.position, m.c.role, m.c.content, m.c.finish_reason, cv.c.end_user,
                  m.c.tool_calls, m.c.tool_call_id, m.c.tools)
        .join(cv, cv.c.id == m.c.conversation_id)
        .where(m.c.conversation_id.in_(convs),  # nor what a deleted end user later wrote into others' conversations
               sa.or_(m.c.end_user.is_(None), m.c.end_user.not_in(store.deleted_end_users)))
        .order_by(m.c.conversation_id, m.c.position)
    )
    for conv, mid, pos, role, content, finish_reason, end_user, tool_calls, tool_call_id, tools in rows:
        turns = store.turns.get(conv)
        if turns is None:
            turns = store.turns[conv] = []
            store.conversations[conv] = end_user
        store.where[mid] = (conv, len(turns))
        turns.append(Turn(mid, pos, role, content, finish_reason, tool_calls, tool_call_id, tools))

    for name, model in FEEDBACK_TABLES.items():
        store.watermark[name] = conn.execute(sa.select(sa.func.max(model.__table__.c.id))).scalar() or 0
    return store
