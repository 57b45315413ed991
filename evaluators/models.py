"""Registry history: every move of the `champion` / `challenger` aliases (who, when, why)."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from core.models import utcnow


class AliasAction(StrEnum):
    promote = "promote"  # alias moved forward to a new version
    rollback = "rollback"  # champion moved back to the version before it
    set = "set"  # challenger pointed at a version
    clear = "clear"  # challenger removed


class AliasEventBase(SQLModel):
    alias: str = Field(max_length=50, index=True)
    version: str | None = Field(default=None, max_length=100, description="Version the alias points to after")
    previous_version: str | None = Field(default=None, max_length=100, description="Version it pointed to before")
    action: AliasAction
    actor: str = Field(max_length=200, description="Who moved it: user name and id, CLI user or job")
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class AliasEvent(AliasEventBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class AliasEventPublic(AliasEventBase):
    id: int
    created_at: datetime
