"""Tables owned by the infrastructure: API users and their keys."""

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


class UserPublic(UserBase):
    id: int
    active: bool
    created_at: datetime


class UserCreated(UserPublic):
    key: str
