"""Sessions and hardening: server-side logout, the Secure cookie setting, security headers, audited keys,
reviewer-only progress, an optional metrics key and an owner-only database file."""

import os
import re
import stat
from pathlib import Path

import pytest

from tests.conftest import make_key
from tests.ui.test_session import csrf_of, sign_in


@pytest.fixture
def env(monkeypatch):
    """Change `HITL_*` settings of the running server (read per request)."""
    from core.settings import get_settings

    def set_(**values) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"HITL_{name}", value)
        get_settings.cache_clear()

    return set_


def test_logout_revokes_the_session_server_side(live_server):
    client, _ = sign_in(live_server, make_key("reviewer"))
    cookie = client.cookies["hitl_session"]
    assert client.post("/logout", data={"csrf_token": csrf_of(client)}).status_code == 303
    with live_server.client(cookies={"hitl_session": cookie}, follow_redirects=False) as replay:
        assert replay.get("/ui/api/progress").status_code == 401
        assert replay.get("/review").headers["location"].startswith("/login")
    again, _ = sign_in(live_server, make_key("reviewer"))
    assert again.get("/ui/api/progress").status_code == 200


def test_session_cookie_is_secure_unless_served_as_localhost(live_server, env):
    key = make_key("reviewer")

    def cookie(host: str | None = None) -> str:
        with live_server.client(follow_redirects=False) as client:
            response = client.post("/login", data={"key": key}, headers={"Host": host} if host else None)
            return response.headers["set-cookie"].lower()

    assert "secure" not in cookie() and "secure" in cookie("hitl.example.com")  # behind an ingress: plain http
    env(SESSION_COOKIE_SECURE="false")
    assert "secure" not in cookie("hitl.example.com")
    env(SESSION_COOKIE_SECURE="true")
    assert "secure" in cookie()


def test_security_headers(live_server, admin_key):
    with live_server.client(admin_key) as api:
        for path in ("/login", "/healthz", "/docs"):
            headers = api.get(path).headers
            assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "same-origin", path
        csp = api.get("/login").headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert "content-security-policy" not in api.get("/docs").headers  # Swagger UI's CDN assets
    # the UI's own markup has no inline script or style for the policy to block
    templates = Path(__file__).resolve().parents[2] / "hitl" / "ui" / "templates"
    for page in templates.rglob("*.html"):
        text = page.read_text()
        assert "style=" not in text and "<style" not in text and not re.search(r"\son[a-z]+=", text), page
        assert all("src=" in tag.split(">")[0] for tag in text.split("<script")[1:]), page
    admin, _ = sign_in(live_server, admin_key)
    assert 'style="' not in admin.get("/admin").text


def test_key_creation_and_revocation_are_audited(live_server, api):
    created = api.post("/ui/api/users", json={"name": "otto", "role": "service"}).json()
    assert api.post(f"/ui/api/users/{created['id']}/active", params={"active": "false"}).status_code == 200
    assert api.post(f"/ui/api/users/{created['id']}/active", params={"active": "true"}).status_code == 200
    events = [e for e in api.get("/api/audit", params={"limit": 1000}).json()["data"] if e["entity"] == "user"
              and e["entity_id"] == str(created["id"])]
    assert [e["action"] for e in events] == ["user.create", "user.revoke", "user.reactivate"]
    assert events[1]["before"]["active"] is True and events[1]["after"]["active"] is False
    assert all("key_hash" not in (e["after"] or {}) and e["actor_id"] for e in events)


def test_progress_is_for_reviewers_and_metrics_can_need_a_key(live_server, env, service_key, admin_key):
    with live_server.client(service_key) as service:
        assert service.get("/ui/api/progress").status_code == 403
    with live_server.client(make_key("reviewer")) as reviewer:
        assert reviewer.get("/ui/api/progress").status_code == 200
    with live_server.client() as anonymous:
        assert anonymous.get("/metrics").status_code == 200
        env(METRICS_KEY="scrape-me")
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/metrics", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 401
        assert anonymous.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_sqlite_files_are_the_owners_only(settings):
    from core.db import engine_for

    path = Path(settings.db_url.removeprefix("sqlite:///"))
    with engine_for(settings.db_url).connect():
        assert {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in path.parent.glob(path.name + "*")
                if not p.name.endswith(".lock")} == {f"{path.name}{s}": 0o600 for s in ("", "-wal", "-shm")}
