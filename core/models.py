"""Tables owned by the infrastructure: API users, their keys and signed-out browser sessions."""

from datetime import UTC, datetime
from enum import StrEnum

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


class UserPublic(UserBase):
    id: int
    active: bool
    created_at: datetime


class UserCreated(UserPublic):
    key: str
