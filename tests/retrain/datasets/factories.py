"""Rows straight into the database (fast): users, conversations with messages, feedback of every kind."""

import itertools

from sqlmodel import Session

from core.auth import create_user
from core.models import Role
from feedback.models import Candidate, Comparison, Correction, Deletion, Flag, Rating, Thumbs
from service.models import Conversation, Message

_seq = itertools.count()


def reviewer(session: Session, name: str | None = None) -> int:
    user, _key = create_user(session, name=name or f"rev-{next(_seq)}", role=Role.reviewer)
    return user.id


def conversation(session: Session, *turns: str, end_user: str | None = None,
                 system: str | None = None) -> tuple[str, list[str]]:
    """A conversation alternating user/assistant turns (starting with user); returns (id, message ids)."""
    conv = Conversation(end_user=end_user)
    session.add(conv)
    session.flush()
    rows = [("system", system)] if system else []
    rows += [("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(turns)]
    ids = []
    for pos, (role, text) in enumerate(rows):
        msg = Message(conversation_id=conv.id, position=pos, role=role, content=text,
                      model_version="v0" if role == "assistant" else None)
        session.add(msg)
        ids.append(msg.id)
    session.flush()
    return conv.id, ids


def _add(session: Session, row):
    session.add(row)
    session.flush()
    return row


def rate(session, message_id, reviewer_id, *, adjudicated=False, **scores):
    scores = scores or {"correctness": 5, "helpfulness": 5, "tone": 5}
    if len(scores) == 1 and "all" in scores:
        scores = {d: scores["all"] for d in ("correctness", "helpfulness", "tone")}
    return _add(session, Rating(message_id=message_id, reviewer_id=reviewer_id, scores=scores, adjudicated=adjudicated))


def thumbs(session, message_id, value="up", *, source="end_user", user_id=None):
    return _add(session, Thumbs(message_id=message_id, thumbs=value, source=source, user_id=user_id))


def correct(session, message_id, reviewer_id, content, original="(original)"):
    return _add(session, Correction(message_id=message_id, reviewer_id=reviewer_id, content=content,
                                    original=original, diff=""))


def candidate(session, message_id, content, seed=0):
    return _add(session, Candidate(message_id=message_id, content=content, seed=seed))


def compare(session, message_id, reviewer_id, a, b, choice):
    return _add(session, Comparison(message_id=message_id, reviewer_id=reviewer_id, candidate_a=a, candidate_b=b,
                                    choice=choice))


def flag(session, message_id, reviewer_id, *tags):
    return _add(session, Flag(message_id=message_id, reviewer_id=reviewer_id, tags=list(tags)))


def delete_request(session, *, conversation_id=None, end_user=None):
    return _add(session, Deletion(conversation_id=conversation_id, end_user=end_user))
