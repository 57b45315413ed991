"""Browser sessions over plain HTTP: sign-in cookie, CSRF on writes, revocation, role checks."""

import re

import pytest

from tests.conftest import make_key


def sign_in(live_server, key: str, next: str = "/review"):
    client = live_server.client(follow_redirects=False)
    response = client.post("/login", data={"key": key, "next": next})
    return client, response


def csrf_of(client) -> str:
    page = client.get("/review")
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)


def rated_reply(live_server) -> str:
    """A logged reply with an end-user thumbs-down and one reviewer rating."""
    with live_server.client(make_key("service")) as chat:
        reply = chat.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        message_id = reply.json()["hitl"]["message_id"]
        assert chat.post("/v1/feedback", json={"message_id": message_id, "thumbs": "down"}).status_code == 201
    with live_server.client(make_key("reviewer")) as reviewer:
        assert reviewer.post("/api/review/claim").json()["message_id"] == message_id
        scores = {"correctness": 2, "helpfulness": 3, "tone": 4}
        assert reviewer.post(f"/api/review/items/{message_id}/rating", json={"scores": scores}).status_code == 201
        assert reviewer.post(f"/api/review/items/{message_id}/submit").status_code == 200
    return message_id


def test_cookie_session_csrf_and_roles(live_server, admin_key):
    # wrong and service keys get no session
    _client, response = sign_in(live_server, "hitl_rev_wrong")
    assert response.status_code == 401 and "hitl_session" not in response.headers.get("set-cookie", "")
    assert sign_in(live_server, make_key("service"))[1].status_code == 403

    client, response = sign_in(live_server, make_key("reviewer"))
    assert response.status_code == 303 and response.headers["location"] == "/review"
    cookie = response.headers["set-cookie"].lower()
    assert "hitl_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/ui/api/progress").status_code == 200  # reads need only the cookie

    # no open redirect, and a reviewer asking for /admin lands on /review
    for target in ["//evil.example", "/\\evil.example", "https://evil.example", "/admin"]:
        assert sign_in(live_server, make_key("reviewer"), target)[1].headers["location"] == "/review"

    # writes with the cookie need the page's CSRF token
    token = csrf_of(client)
    assert client.post("/api/review/claim").status_code == 403
    assert client.post("/api/review/claim", headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert client.post("/api/review/claim", headers={"X-CSRF-Token": token}).status_code in {200, 204}

    # admin pages are for admins
    assert client.get("/admin").status_code == 403
    assert client.get("/ui/api/users").status_code == 403
    admin, _ = sign_in(live_server, admin_key)
    message_id = rated_reply(live_server)
    for path in ["/admin", "/admin/adjudication", "/admin/users", "/admin/datasets", "/admin/runs", "/admin/models",
                 f"/admin/items/{message_id}"]:
        assert admin.get(path).status_code == 200, path
    dashboard = admin.get("/admin").text
    assert message_id in dashboard and "thumbs down" in dashboard
    assert 'aria-label="Thumbs-up rate per model version"' in dashboard  # per-day/per-version SQL ran on this backend
    assert "correctness 2, helpfulness 3, tone 4" in admin.get(f"/admin/items/{message_id}").text
    assert admin.get("/admin/runs/999").status_code == 404
    assert admin.get("/admin/items/msg_nope").status_code == 404

    # sign-out is a CSRF-checked POST
    assert client.post("/logout", data={"csrf_token": "nope"}).status_code == 403
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/review").status_code == 303


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # no SQL beyond the user table here
def test_forged_and_revoked_sessions_and_user_keys(live_server, api):
    client, _ = sign_in(live_server, make_key("reviewer", "leaver"))
    user_id, prefix, issued, signature = client.cookies["hitl_session"].split(".")
    forged = live_server.client(cookies={"hitl_session": f"{int(user_id) - 1}.{prefix}.{issued}.{signature}"})
    assert forged.get("/ui/api/progress").status_code == 401
    assert api.post(f"/ui/api/users/{user_id}/active", params={"active": "false"}).status_code == 200
    assert client.get("/ui/api/progress").status_code == 401
    assert client.get("/review").headers["location"].startswith("/login")

    created = api.post("/ui/api/users", json={"name": "nina", "role": "reviewer"})
    assert created.status_code == 201
    body = created.json()
    assert body["role"] == "reviewer" and body["key"].startswith("hitl_rev_")
    assert api.post("/ui/api/users", json={"name": "", "role": "reviewer"}).status_code == 422
    assert api.post("/ui/api/users", json={"name": "x", "role": "root"}).status_code == 422
    with live_server.client(body["key"]) as nina:
        assert nina.get("/ui/api/progress").json()["reviewed_today"] == 0
