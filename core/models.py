"""Tables owned by the infrastructure: API users, their keys, signed-out browser sessions, webhook deliveries."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(StrEnum):
    admin = "admin"
    reviewer = "reviewer"
    service = "service"


class UserBase(SQLModel):
    name: str = Field(max_length=100, index=True)
    role: Role


class User(UserBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class RevokedSession(SQLModel, table=True):
    """A signed-out browser session: its cookie is refused, even replayed, until it would have expired."""

    token_hash: str = Field(primary_key=True, max_length=64)
    expires_at: datetime


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for its first or next attempt
    delivered = "delivered"
    failed = "failed"  # every attempt failed


class WebhookDelivery(SQLModel, table=True):
    """One event for one URL, and the outcome of its attempts."""

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=40, index=True)  # the same for every URL an event goes to
    event: str = Field(max_length=40, index=True)
    url: str = Field(sa_column=Column(Text, nullable=False))
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: DeliveryStatus = Field(default=DeliveryStatus.pending, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    claimed_until: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class UserPublic(UserBase):
    id: int
    active: bool
    created_at: datetime


class UserCreated(UserPublic):
    key: str
