"""Thin routes: start a retrain run, read runs (admin)."""

from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from core.auth import AdminUser
from core.db import SessionDep
from retrain.training import service, tasks
from retrain.training.config import ConfigError
from retrain.training.models import RetrainRunCreated, RetrainRunPublic, RetrainRunsPublic

router = APIRouter(prefix="/api/retrain", tags=["retrain"])


class RunRequest(BaseModel):
    config: dict[str, Any] | None = Field(
        None, description="RetrainConfig overrides, e.g. {\"methods\": [\"sft\"], \"sft\": {\"max_steps\": 50}}")


@router.post("/runs", response_model=RetrainRunCreated, status_code=status.HTTP_202_ACCEPTED,
             summary="Start a retrain run now (ignores the new-feedback minimum, respects the lock)")
async def start_run(_user: AdminUser, body: RunRequest | None = None):
    try:
        run = await run_in_threadpool(tasks.start_manual_run, body.config if body else None)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except tasks.RetrainBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return RetrainRunCreated(id=run.id, status=run.status)


@router.get("/runs", response_model=RetrainRunsPublic, summary="Retrain runs, newest first")
def list_runs(session: SessionDep, _user: AdminUser, limit: int = Query(50, ge=1, le=500),
              offset: int = Query(0, ge=0)):
    data, count = service.list_runs(session, limit, offset)
    return RetrainRunsPublic(data=[RetrainRunPublic.model_validate(r) for r in data], count=count)


@router.get("/runs/{run_id}", response_model=RetrainRunPublic,
            summary="A run: status, plan, metrics, candidate version and gate decision")
def get_run(run_id: int, session: SessionDep, _user: AdminUser):
    return service.get_run(session, run_id)
