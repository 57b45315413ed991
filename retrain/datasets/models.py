"""The snapshot record: a content-hashed, immutable dataset on disk."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from core.models import utcnow


class DatasetSnapshotBase(SQLModel):
    hash: str = Field(max_length=64, unique=True, index=True, description="sha256 of the snapshot's rows")
    path: str = Field(max_length=500, description="folder with manifest.json and the JSONL/Parquet files")
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False),
                                   description="{kind: {split: n}}")
    builder_version: str = Field(max_length=20)


class DatasetSnapshot(DatasetSnapshotBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    manifest: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: int | None = Field(default=None, foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow, index=True)


class DatasetSnapshotPublic(DatasetSnapshotBase):
    id: int
    created_at: datetime


class DatasetsPublic(SQLModel):
    data: list[DatasetSnapshotPublic]
    count: int
