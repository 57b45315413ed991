"""Admin routes: build a snapshot, read its manifest, list snapshots."""

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from core.auth import AdminUser
from core.db import SessionDep
from core.settings import Settings, get_settings
from retrain.datasets import service
from retrain.datasets.models import DatasetSnapshotPublic, DatasetsPublic
from retrain.datasets.schemas import BuildOptions, SnapshotCreated

router = APIRouter(prefix="/api/datasets", tags=["datasets"])
SettingsDep = Annotated[Settings, Depends(get_settings)]


@router.post("", response_model=SnapshotCreated, status_code=status.HTTP_201_CREATED,
             responses={200: {"description": "An identical snapshot already existed"},
                        422: {"description": "Bad options, or the build cannot produce what was asked"}})
async def build_dataset(session: SessionDep, settings: SettingsDep, admin: AdminUser, response: Response,
                        options: Annotated[BuildOptions | None, Body(openapi_examples={
                            "nightly": {"value": {}},
                            "with replay": {"value": {"replay_fraction": 0.2, "validation_fraction": 0.1,
                                                      "test_fraction": 0.2}},
                        })] = None) -> SnapshotCreated:
    """Build a snapshot from the feedback store now; identical content returns the existing one."""
    try:
        snap, created = await run_in_threadpool(service.build, session, settings, options or BuildOptions(),
                                                created_by=admin.id)
    except service.DatasetError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return SnapshotCreated(id=snap.id, hash=snap.hash, counts=snap.counts, created=created)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, _admin: AdminUser,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DatasetsPublic:
    snaps = service.list_snapshots(session, limit)
    return DatasetsPublic(data=[DatasetSnapshotPublic.model_validate(s) for s in snaps], count=len(snaps))


@router.get("/{snapshot_id}", responses={404: {"description": "No such snapshot"}})
def get_dataset(snapshot_id: int, session: SessionDep, _admin: AdminUser) -> dict:
    """The snapshot's manifest (counts per kind/split, filters, conflicts, lineage sources, …)."""
    snap = service.get_snapshot(session, snapshot_id)
    if snap is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dataset snapshot {snapshot_id}")
    return {"id": snap.id, "hash": snap.hash, "path": snap.path, "created_at": snap.created_at, **snap.manifest}
