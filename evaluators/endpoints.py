"""Registry API (admin): list versions, promote, roll back, challenger, alias history, reports, lineage."""

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from sqlmodel import select

from core.auth import AdminUser
from core.db import SessionDep
from core.settings import get_settings
from evaluators import registry
from evaluators.lineage import lineage
from evaluators.models import AliasEventPublic
from evaluators.schemas import (AliasHistory, AliasMove, ModelVersionPublic, ModelVersionsPublic, PromoteRequest,
                                RollbackRequest)
from service.models import ModelAlias

router = APIRouter(prefix="/api/models", tags=["models"])


def _public(row, aliases: list[str]) -> ModelVersionPublic:
    report = row.gate_report or {}
    gate = {k: report.get(k) for k in ("passed", "outcome", "decision", "reasons", "champion", "reference")} if report else None
    return ModelVersionPublic(**row.model_dump(exclude={"gate_report"}), aliases=aliases, gate=gate)


def _moved(session, event) -> AliasMove:
    aliases = {a.alias: a.version for a in session.exec(select(ModelAlias))}
    return AliasMove(champion=aliases.get("champion"), challenger=aliases.get("challenger"),
                     event=AliasEventPublic.model_validate(event))


@router.get("", response_model=ModelVersionsPublic, summary="Model versions with status and aliases")
def list_models(session: SessionDep, _admin: AdminUser) -> ModelVersionsPublic:
    rows = registry.list_versions(session)
    return ModelVersionsPublic(data=[_public(r, a) for r, a in rows], count=len(rows))


@router.get("/history", response_model=AliasHistory, summary="Alias history (who, when, why), newest first")
def alias_history(session: SessionDep, _admin: AdminUser, alias: str | None = None,
                  limit: int = Query(200, ge=1, le=1000)) -> AliasHistory:
    events = registry.history(session, alias, limit)
    return AliasHistory(data=[AliasEventPublic.model_validate(e) for e in events], count=len(events))


@router.post("/rollback", response_model=AliasMove, summary="Restore the previous champion (one transaction)")
def rollback(session: SessionDep, admin: AdminUser, body: RollbackRequest | None = None) -> AliasMove:
    body = body or RollbackRequest()
    event = registry.rollback(session, actor=registry.actor_of(admin), reason=body.reason, to=body.to)
    return _moved(session, event)


@router.post("/{version}/promote", response_model=AliasMove, summary="Make a version the champion (one transaction)")
def promote(version: str, session: SessionDep, admin: AdminUser, body: PromoteRequest | None = None) -> AliasMove:
    body = body or PromoteRequest()
    event = registry.promote(session, version, actor=registry.actor_of(admin), reason=body.reason, force=body.force)
    return _moved(session, event)


@router.post("/{version}/challenger", response_model=AliasMove, summary="Start a canary with this version")
def set_challenger(version: str, session: SessionDep, admin: AdminUser,
                   body: PromoteRequest | None = None) -> AliasMove:
    event = registry.set_challenger(session, version, actor=registry.actor_of(admin),
                                    reason=(body or PromoteRequest()).reason)
    return _moved(session, event)


@router.get("/{version}/report", summary="The stored gate report (JSON, or the HTML page with format=html)")
def report(version: str, session: SessionDep, _admin: AdminUser, format: str = Query("json", pattern="^(json|html)$")):
    row = registry.get_version(session, version)
    if not row.gate_report:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no gate report for '{version}'")
    if format == "html":
        path = Path((row.gate_report.get("report_paths") or {}).get("html", ""))
        if not path.is_file():
            from evaluators.report import render_html

            return HTMLResponse(render_html(row.gate_report))
        return HTMLResponse(path.read_text())
    return row.gate_report


@router.get("/{version}/lineage", summary="version → retrain run → snapshot → feedback rows")
def version_lineage(version: str, session: SessionDep, _admin: AdminUser) -> dict:
    return lineage(session, get_settings(), version)
