"""Feedback store, review queue, audit log and idempotency records (SQLModel tables).

Every feedback row points at an assistant `message.id` with ON DELETE CASCADE, so deleting a
conversation (privacy request) removes its feedback too; the `Deletion` row that records the request
outlives it so dataset builds exclude the conversation forever.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.models import utcnow

MESSAGE_FK = dict(foreign_key="message.id", index=True, max_length=40, ondelete="CASCADE")


class ThumbsValue(StrEnum):
    up = "up"
    down = "down"


class ThumbsSource(StrEnum):
    end_user = "end_user"
    reviewer = "reviewer"


class ComparisonChoice(StrEnum):
    a = "a"
    b = "b"
    tie = "tie"


class Thumbs(SQLModel, table=True):
    """End-user thumbs up/down (from `POST /v1/feedback`)."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    thumbs: ThumbsValue
    comment: str | None = Field(default=None, sa_column=Column(Text))
    source: ThumbsSource = ThumbsSource.end_user
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Rating(SQLModel, table=True):
    """Rubric rating: Likert 1..5 per dimension. `adjudicated` marks an admin's final decision."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    reviewer_id: int = Field(foreign_key="user.id", index=True)
    scores: dict[str, int] = Field(sa_column=Column(JSON, nullable=False))
    comment: str | None = Field(default=None, sa_column=Column(Text))
    adjudicated: bool = False
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Correction(SQLModel, table=True):
    """The reviewer's edited reply, stored beside a copy of the original and a unified diff."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    reviewer_id: int = Field(foreign_key="user.id", index=True)
    content: str = Field(sa_column=Column(Text, nullable=False))
    original: str = Field(sa_column=Column(Text, nullable=False))
    diff: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Candidate(SQLModel, table=True):
    """An alternative reply generated for the same context (for pairwise comparison)."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    content: str = Field(sa_column=Column(Text, nullable=False))
    model_version: str | None = Field(default=None, max_length=100)
    seed: int | None = None
    created_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)


class Comparison(SQLModel, table=True):
    """Pairwise preference between two candidates of one message."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    reviewer_id: int = Field(foreign_key="user.id", index=True)
    candidate_a: int = Field(foreign_key="candidate.id", ondelete="CASCADE")
    candidate_b: int = Field(foreign_key="candidate.id", ondelete="CASCADE")
    choice: ComparisonChoice
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Flag(SQLModel, table=True):
    """Tags such as unsafe, pii, off_topic."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    reviewer_id: int = Field(foreign_key="user.id", index=True)
    tags: list[str] = Field(sa_column=Column(JSON, nullable=False))
    comment: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Comment(SQLModel, table=True):
    """Free-text reviewer comment on a reply."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    reviewer_id: int = Field(foreign_key="user.id", index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Deletion(SQLModel, table=True):
    """A privacy request. Names a conversation or an end user; kept forever (no FK to the deleted rows).
    `conversation_ids` lists the conversations actually removed when the request ran."""

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str | None = Field(default=None, index=True, max_length=40)
    end_user: str | None = Field(default=None, index=True, max_length=200)
    conversation_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    requested_by: int | None = Field(default=None, foreign_key="user.id")
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------------- queue


class ReviewItemStatus(StrEnum):
    open = "open"  # in the queue (if `priority` is set)
    done = "done"  # received its k reviews
    adjudicated = "adjudicated"


class ReviewItem(SQLModel, table=True):
    """One row per assistant message the queue has looked at. `priority` None = not queued;
    lower is served first: 0.x thumbs-down, 1.x low confidence and gold items, 2.x calibration sample."""

    message_id: str = Field(primary_key=True, foreign_key="message.id", max_length=40, ondelete="CASCADE")
    priority: float | None = None
    reason: str | None = Field(default=None, max_length=20)  # thumbs_down | low_confidence | calibration | gold | manual
    required_reviews: int = 1
    status: ReviewItemStatus = ReviewItemStatus.open
    gold_scores: dict[str, int] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))  # SQL NULL
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (Index("ix_reviewitem_queue", "status", "priority"),)


class ReviewClaimStatus(StrEnum):
    active = "active"  # held while lease_expires_at is in the future
    released = "released"
    submitted = "submitted"
    skipped = "skipped"


class ReviewClaim(SQLModel, table=True):
    """A reviewer's lease on an item. Active and unexpired = held; an expired lease frees the slot."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(**MESSAGE_FK)
    reviewer_id: int = Field(foreign_key="user.id", index=True)
    status: ReviewClaimStatus = ReviewClaimStatus.active
    lease_expires_at: datetime
    reason: str | None = Field(default=None, sa_column=Column(Text))  # skip reason
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    __table_args__ = (Index("ix_reviewclaim_reviewer_status", "reviewer_id", "status"),)


# ---------------------------------------------------------------------------------------------- audit


class AuditEvent(SQLModel, table=True):
    """Every write: who, what, when, before/after. Contents of deleted conversations are redacted."""

    id: int | None = Field(default=None, primary_key=True)
    actor_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    action: str = Field(max_length=50, index=True)
    entity: str = Field(max_length=50)
    entity_id: str | None = Field(default=None, max_length=100)
    message_id: str | None = Field(default=None, index=True, max_length=40)
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class IdempotencyRecord(SQLModel, table=True):
    """First response to a POST carrying `Idempotency-Key`, per user; a retry replays it."""

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", ondelete="CASCADE")
    key: str = Field(max_length=200)
    fingerprint: str = Field(max_length=64)  # sha256 of method, path and body
    status_code: int | None = None
    response: Any = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_user_key"),)


# ---------------------------------------------------------------------------------------------- imports


class ImportedConversation(SQLModel, table=True):
    """The import ledger: one row per imported log record, keyed by a stable hash of the record (or of its
    source id). It marks the conversation's source and makes an import idempotent. It has no foreign key
    and holds no text, so it outlives a privacy deletion: the same file imported again never brings the
    deleted conversation back."""

    key: str = Field(primary_key=True, max_length=64, description="sha256 of the source and the record (or its id)")
    source: str = Field(max_length=20, index=True, description="openai | langfuse")
    conversation_id: str = Field(max_length=40, index=True)
    line: int = Field(description="Line of the record in its file")
    imported_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow)
