"""Registry: promotion and rollback are single transactions with a full alias history (who, when, why)."""

import pytest
from fastapi import HTTPException
from sqlmodel import select
from typer.testing import CliRunner

from evaluators import registry
from evaluators.models import AliasEvent
from service import service as serving
from service.models import ModelAlias, ModelVersion, VersionStatus
from tests.conftest import make_key
from tests.evaluators.conftest import register


@pytest.fixture
def versions(session, settings, tiny_model_dir):
    serving.ensure_champion(session, settings)
    for name in ("v1", "v2", "v3"):
        register(session, name, None, tiny_model_dir)
    session.commit()
    return session


def champion_of(session) -> str:
    session.expire_all()
    return session.get(ModelAlias, "champion").version


def test_promote_then_roll_back_step_by_step(versions):
    s = versions
    for name in ("v1", "v2", "v3"):
        registry.promote(s, name, actor="admin:alice#1", reason=f"ship {name}")
    assert champion_of(s) == "v3"
    assert [s.get(ModelVersion, v).status for v in ("base", "v1", "v2", "v3")] == [
        VersionStatus.archived, VersionStatus.archived, VersionStatus.archived, VersionStatus.champion]
    assert registry.rollback(s, actor="admin:bob#2", reason="bad replies").version == "v2"
    assert registry.rollback(s, actor="admin:bob#2").version == "v1"
    assert registry.rollback(s, actor="admin:bob#2").version == "base"
    with pytest.raises(HTTPException) as err:
        registry.rollback(s, actor="admin:bob#2")
    assert err.value.status_code == 409
    registry.promote(s, "v2", actor="admin:alice#1", reason="again")
    assert registry.rollback(s, actor="x").version == "base"  # the stack, not the toggle
    events = registry.history(s, "champion")
    assert [(e.action, e.previous_version, e.version) for e in events[:2]] == [
        ("rollback", "v2", "base"), ("promote", "base", "v2")]
    first = events[-1]
    assert (first.actor, first.reason, first.previous_version, first.version) == ("admin:alice#1", "ship v1", "base", "v1")
    assert all(e.created_at is not None for e in events)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_rejected_version_needs_force_and_errors_are_clean(versions):
    s = versions
    registry.reject(s, "v1")
    with pytest.raises(HTTPException) as err:
        registry.promote(s, "v1", actor="a")
    assert err.value.status_code == 409
    registry.promote(s, "v1", actor="a", reason="override", force=True)
    assert champion_of(s) == "v1"
    with pytest.raises(HTTPException) as err:
        registry.promote(s, "nope", actor="a")
    assert err.value.status_code == 404
    with pytest.raises(HTTPException):
        registry.promote(s, "v1", actor="a")  # already champion


def test_failed_promotion_changes_nothing(versions, settings):
    """One transaction: an error after the alias moved rolls the whole promotion back."""
    from core.db import session_scope

    versions.close()
    with pytest.raises(RuntimeError):
        with session_scope() as s:
            registry.promote(s, "v1", actor="a", reason="half")
            raise RuntimeError("crash between the writes and the commit")
    with session_scope() as s:
        assert s.get(ModelAlias, "champion").version == "base"
        assert s.get(ModelVersion, "v1").status == VersionStatus.candidate
        assert s.get(ModelVersion, "base").status == VersionStatus.champion
        assert s.exec(select(AliasEvent)).first() is None


def test_challenger_is_cleared_when_promoted(versions):
    s = versions
    registry.set_challenger(s, "v1", actor="a", reason="canary")
    assert s.get(ModelAlias, "challenger").version == "v1"
    registry.promote(s, "v1", actor="canary", reason="won")
    assert s.get(ModelAlias, "challenger") is None
    registry.set_challenger(s, "v2", actor="a")
    registry.clear_challenger(s, actor="canary", reason="lost", reject=True)
    assert s.get(ModelAlias, "challenger") is None and s.get(ModelVersion, "v2").status == VersionStatus.rejected
    actions = [(e.alias, e.action) for e in registry.history(s)]
    assert actions[:2] == [("challenger", "clear"), ("challenger", "set")]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_admin_api_promote_and_one_call_rollback(versions, api, live_server):
    versions.close()
    listed = api.get("/api/models").json()
    assert {v["version"] for v in listed["data"]} == {"base", "v1", "v2", "v3"}
    assert next(v for v in listed["data"] if v["version"] == "base")["aliases"] == ["champion"]

    moved = api.post("/api/models/v2/promote", json={"reason": "better on corrections"})
    assert moved.status_code == 200 and moved.json()["champion"] == "v2"
    assert moved.json()["event"]["actor"].startswith("admin:")
    back = api.post("/api/models/rollback", json={"reason": "complaints"})
    assert back.status_code == 200 and back.json()["champion"] == "base"
    assert api.post("/api/models/rollback").status_code == 409

    history = api.get("/api/models/history", params={"alias": "champion"}).json()["data"]
    assert [(e["action"], e["version"], e["reason"]) for e in history] == [
        ("rollback", "base", "complaints"), ("promote", "v2", "better on corrections")]
    assert api.post("/api/models/missing/promote").status_code == 404
    assert "detail" in api.post("/api/models/base/promote").json()
    assert api.get("/api/models/v1/report").status_code == 404
    with live_server.client(make_key("reviewer")) as reviewer:
        assert reviewer.post("/api/models/v1/promote").status_code == 403
        assert reviewer.get("/api/models").status_code == 403


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_cli_list_promote_rollback(versions):
    from hitl.cli import app

    versions.close()
    runner = CliRunner()
    promoted = runner.invoke(app, ["models", "promote", "v3", "--reason", "manual"])
    assert promoted.exit_code == 0, promoted.output
    assert "base -> v3" in promoted.output
    listing = runner.invoke(app, ["models", "list"]).output
    assert "v3" in listing and "champion" in listing
    rolled = runner.invoke(app, ["models", "rollback", "--reason", "oops"])
    assert rolled.exit_code == 0 and "v3 -> base" in rolled.output
    assert "by cli:" in runner.invoke(app, ["models", "history"]).output
    failed = runner.invoke(app, ["models", "promote", "nope"])
    assert failed.exit_code == 1 and "not found" in failed.output
