"""Admin routes: build a snapshot, read its manifest, list snapshots, download its files; export the feedback store."""

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from core.auth import AdminUser
from core.db import SessionDep
from core.settings import Settings, get_settings
from retrain.datasets import export, service
from retrain.datasets.models import DatasetSnapshotPublic, DatasetsPublic
from retrain.datasets.schemas import BuildOptions, SnapshotCreated

router = APIRouter(prefix="/api/datasets", tags=["datasets"])
export_router = APIRouter(tags=["import/export"])
SNAPSHOT_FILE = re.compile(r"(sft|dpo|kto)\.(train|validation|test|anchor)\.(jsonl|parquet)|manifest\.json")
FILE_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet", "json": "application/json"}
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


@router.get("/{snapshot_id}/files/{name}", response_class=FileResponse, responses={
    200: {"description": "The file", "content": {t: {} for t in FILE_TYPES.values()}},
    404: {"description": "No such snapshot, or no such file in it"}})
def download_file(snapshot_id: int, name: str, session: SessionDep, _admin: AdminUser) -> FileResponse:
    """One file of a snapshot: `<kind>.<split>.jsonl` or `.parquet` (kind sft, dpo, kto; split train, validation,
    test, or anchor for sft), or `manifest.json`. The manifest lists the files with their row counts."""
    snap = service.get_snapshot(session, snapshot_id)
    if snap is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dataset snapshot {snapshot_id}")
    path = Path(snap.path) / name
    if not SNAPSHOT_FILE.fullmatch(name) or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"snapshot {snapshot_id} has no file '{name}'")
    return FileResponse(path, media_type=FILE_TYPES[name.rsplit(".", 1)[1]], filename=f"snapshot-{snapshot_id}-{name}")


@export_router.get("/api/export", response_class=StreamingResponse, responses={
    200: {"description": "JSON lines (one reply per line) or a Parquet file; the schema is in the README",
          "content": {t: {} for t in export.MEDIA_TYPES.values()}},
    422: {"description": "A bad filter (unknown format or kind, a time that is not ISO 8601)"}})
def export_feedback(
    session: SessionDep, settings: SettingsDep, _admin: AdminUser,
    fmt: Annotated[Literal["jsonl", "parquet"], Query(alias="format")] = "jsonl",
    since: Annotated[datetime | None, Query(description="Replies written at or after (ISO 8601; UTC if naive)")] = None,
    until: Annotated[datetime | None, Query(description="Replies written before (ISO 8601; UTC if naive)")] = None,
    model_version: Annotated[list[str] | None, Query(description="Replies of these versions (repeat)")] = None,
    kind: Annotated[list[Literal[export.KINDS]] | None, Query(
        description="Replies with feedback of these kinds, or imported (repeat)")] = None,
    reviewer: Annotated[list[int] | None, Query(description="Replies with feedback by these user ids (repeat)")] = None,
) -> Response:
    """The feedback store as training data: one reviewed or imported reply per row with its conversation, model
    version, every rating, thumbs, correction, comparison, flag and comment (reviewer id and reliability) and the
    consensus label; deleted conversations and end users never appear. Loads unchanged with
    `datasets.load_dataset("json" | "parquet", data_files=...)`."""
    where = export.ExportFilter(since=since, until=until, model_versions=model_version, kinds=kind, reviewers=reviewer)
    rows = export.export_rows(session, settings, where)
    name = f"hitl-export.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Export-Rows": str(len(rows))}
    if fmt == "parquet":
        return Response(export.parquet(rows), media_type=export.MEDIA_TYPES[fmt], headers=headers)
    return StreamingResponse(export.jsonl(rows), media_type=export.MEDIA_TYPES[fmt], headers=headers)
