"""API models of the registry endpoints."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from evaluators.models import AliasEventPublic


class ModelVersionPublic(BaseModel):
    version: str
    status: str
    aliases: list[str]
    base_path: str
    adapter_path: str | None
    checksum: str | None
    parent: str | None
    snapshot_hash: str | None
    run_id: int | None
    created_at: datetime
    gate: dict[str, Any] | None = Field(None, description="Decision summary of the stored gate report: `decision` is promoted, challenger, "
                                        "insufficient_evidence (a required gate lacked data; not promoted) or rejected")


class ModelVersionsPublic(BaseModel):
    data: list[ModelVersionPublic]
    count: int


class PromoteRequest(BaseModel):
    reason: str = Field("", max_length=2000)
    force: bool = Field(False, description="Promote even a version the gates rejected")


class RollbackRequest(BaseModel):
    reason: str = Field("", max_length=2000)
    to: str | None = Field(None, max_length=100, description="Version to restore; default: the previous champion")


class AliasMove(BaseModel):
    champion: str | None
    challenger: str | None
    event: AliasEventPublic


class AliasHistory(BaseModel):
    data: list[AliasEventPublic]
    count: int
