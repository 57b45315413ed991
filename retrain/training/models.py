"""The retrain run record (SQLModel family)."""

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from core.models import utcnow


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    rejected = "rejected"
    promoted = "promoted"
    insufficient_evidence = "insufficient_evidence"  # gates ran; a required gate lacked data: not promoted


FINISHED = {RunStatus.succeeded, RunStatus.failed, RunStatus.skipped, RunStatus.rejected, RunStatus.promoted,
            RunStatus.insufficient_evidence}


class RunTrigger(StrEnum):
    manual = "manual"
    schedule = "schedule"


class RetrainRunBase(SQLModel):
    status: RunStatus = Field(default=RunStatus.queued, index=True)
    trigger: RunTrigger = RunTrigger.manual
    reason: str | None = Field(default=None, sa_column=Column(Text))
    plan: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    config: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    snapshot_id: int | None = None
    snapshot_hash: str | None = Field(default=None, max_length=64)
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    candidate_version: str | None = Field(default=None, max_length=100)
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    artifacts_path: str | None = Field(default=None, max_length=500)
    log_path: str | None = Field(default=None, max_length=500)
    timings: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error: str | None = Field(default=None, sa_column=Column(Text))
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = Field(default=None, description="Refreshed by the running run's process (its lease)")


class RetrainRun(RetrainRunBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slot: str | None = Field(default=None, max_length=64, unique=True,
                             description="Scheduled fire time this run serves; unique so a slot runs once")
    pid: int | None = Field(default=None, description="Process executing the run")
    created_at: datetime = Field(default_factory=utcnow, index=True)


class RetrainRunPublic(RetrainRunBase):
    id: int
    slot: str | None
    created_at: datetime


class RetrainRunCreated(SQLModel):
    id: int
    status: RunStatus


class RetrainRunsPublic(SQLModel):
    data: list[RetrainRunPublic]
    count: int


# APScheduler's job store table (its SQLAlchemyJobStore schema), created by this domain's migration so that
# the schema stays under Alembic; the scheduler finds it and creates nothing.
SCHEDULER_TABLE = "apscheduler_jobs"
scheduler_jobs = sa.Table(
    SCHEDULER_TABLE, SQLModel.metadata,
    sa.Column("id", sa.Unicode(191), primary_key=True),
    sa.Column("next_run_time", sa.Float(25), index=True),
    sa.Column("job_state", sa.LargeBinary, nullable=False),
)
