"""The snapshot record (a content-hashed, immutable dataset on disk) and the persisted split of
every question group (see split.py)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary
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


class SplitAssignment(SQLModel, table=True):
    """One row per distinct normalized question a build has seen: its group and the group's split,
    fixed forever once assigned (growth and changed fractions never move it; `as_of` rebuilds see the
    same splits).

    Privacy: no question text is stored, only a sha256 of the normalized question and its MinHash
    signature (64 x uint32, for matching near duplicates of later questions). A privacy deletion happens
    in the feedback domain, which must not import retrain, so it cannot delete these rows; keeping them
    free of plaintext is what makes that safe."""

    question_hash: str = Field(primary_key=True, max_length=64, description="sha256 of the normalized question")
    group_key: str = Field(max_length=64, index=True, description="question_hash of the group's representative")
    split: str = Field(max_length=16, description="train, validation or test")
    signature: bytes = Field(sa_column=Column(LargeBinary, nullable=False),
                             description="MinHash signature of the question's word 3-grams (uint32, little-endian)")
    assigned_at: datetime = Field(default_factory=utcnow)
