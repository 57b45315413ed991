"""Conversation log and model registry tables (SQLModel family per entity)."""

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from core.models import utcnow


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class Conversation(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("conv"), primary_key=True, max_length=40)
    end_user: str | None = Field(default=None, index=True, max_length=200, description="OpenAI `user` field")
    forked_from: str | None = Field(default=None, index=True, max_length=40,
                                    description="With `n` > 1: the conversation whose request this one's reply is "
                                                "another choice of (its history is a copy of that one's)")
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class MessageBase(SQLModel):
    role: str = Field(max_length=20)
    content: str = Field(sa_column=Column(Text, nullable=False))
    tool_calls: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON), description="An assistant turn's tool calls (OpenAI's `tool_calls`)")
    tool_call_id: str | None = Field(default=None, max_length=100, description="A `tool` turn: the call it answers")
    tools: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON), description="A served reply: the request's `tools`")


class Message(MessageBase, table=True):
    id: str = Field(default_factory=lambda: new_id("msg"), primary_key=True, max_length=40)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=40, ondelete="CASCADE")
    position: int = Field(description="0-based index of the message in its conversation")
    end_user: str | None = Field(default=None, index=True, max_length=200,
                                 description="`user` of the request that logged it (may differ from the conversation's)")
    from_client: bool = Field(default=False, description="Written by the client (an assistant turn in its history "
                                                         "included), not by a served model")
    model_version: str | None = Field(default=None, index=True, max_length=100)
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    mean_logprob: float | None = Field(default=None, description="Mean token log-prob of the reply (confidence)")
    finish_reason: str | None = Field(default=None, max_length=20)
    params: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class MessagePublic(MessageBase):
    id: str
    position: int
    from_client: bool
    model_version: str | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    mean_logprob: float | None
    finish_reason: str | None
    params: dict[str, Any] | None
    created_at: datetime


class ConversationPublic(SQLModel):
    id: str
    end_user: str | None
    forked_from: str | None = None
    created_at: datetime
    messages: list[MessagePublic]


class VersionStatus(StrEnum):
    candidate = "candidate"
    champion = "champion"
    rejected = "rejected"
    archived = "archived"


class ModelVersion(SQLModel, table=True):
    """A servable model: a base checkpoint plus an optional LoRA adapter."""

    version: str = Field(primary_key=True, max_length=100)
    base_path: str = Field(max_length=500)
    adapter_path: str | None = Field(default=None, max_length=500)
    checksum: str | None = Field(default=None, max_length=64)
    parent: str | None = Field(default=None, max_length=100)
    snapshot_hash: str | None = Field(default=None, max_length=64)
    run_id: int | None = None
    status: VersionStatus = VersionStatus.candidate
    gate_report: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class ModelAlias(SQLModel, table=True):
    """`champion` / `challenger` pointers into the registry."""

    alias: str = Field(primary_key=True, max_length=50)
    version: str = Field(foreign_key="modelversion.version", max_length=100)
    updated_at: datetime = Field(default_factory=utcnow)
