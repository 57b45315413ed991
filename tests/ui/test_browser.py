"""End-to-end tests of the web UI in headless Chromium (Debian `chromium`, driven by Playwright).

Screenshots of the main pages go to `test-artifacts/screenshots/`.
"""

import re
from pathlib import Path

import pytest

from tests.conftest import make_key

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed (apt-get install chromium)"),
    pytest.mark.parametrize("settings", ["sqlite"], indirect=True),  # the UI is database-agnostic
]


@pytest.fixture(autouse=True)
def short_replies(settings, monkeypatch):
    """Candidate replies of the tiny model stay short, and no random calibration sample changes the queue
    counts the tests read (runs before `live_server` reads the settings)."""
    from core.settings import get_settings

    monkeypatch.setenv("HITL_MAX_TOKENS", "12")
    monkeypatch.setenv("HITL_REVIEW_CALIBRATION_RATE", "0")
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(30_000)  # a loaded 2-core CI box
    blocked = []  # the UI must work under the server's Content-Security-Policy
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert not blocked


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, key: str, path: str = "/review") -> None:
    page.goto(path)
    page.wait_for_url(re.compile(r"/login"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(path) + "$"))


def queue_replies(live_server, n: int) -> list[str]:
    """Chat n times through the API and thumbs-down each reply, which puts it at the front of the queue."""
    ids = []
    with live_server.client(make_key("service")) as chat:
        for i in range(n):
            question = ["What is the capital of France?", "How hot does water boil?", "Hello!"][i % 3]
            reply = chat.post("/v1/chat/completions", json={
                "model": "hitl", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": question}]}).json()
            message_id = reply["hitl"]["message_id"]
            assert chat.post("/v1/feedback", json={"message_id": message_id, "thumbs": "down"}).status_code == 201
            ids.append(message_id)
    return ids


def seed_conversation(live_server) -> str:
    """A realistic multi-turn conversation; its first reply is thumbed down (queued). Returns that reply's id."""
    from core.db import session_scope
    from service.models import Conversation, Message

    turns = [("user", "How long should I boil an egg for a soft yolk?"),
             ("assistant", "Boil it for about 12 minutes, then put it in cold water."),
             ("user", "That seems long. Are you sure?"),
             ("assistant", "You are right, sorry: 6 to 7 minutes gives a soft, jammy yolk.")]
    with session_scope() as s:
        conversation = Conversation(end_user="u-42")
        s.add(conversation)
        s.flush()
        rows = [Message(conversation_id=conversation.id, position=i, role=role, content=text,
                        model_version="base" if role == "assistant" else None) for i, (role, text) in enumerate(turns)]
        s.add_all(rows)
        s.flush()
        reply_id = rows[1].id
    with live_server.client(make_key("service")) as client:
        assert client.post("/v1/feedback", json={"message_id": reply_id, "thumbs": "down"}).status_code == 201
    return reply_id


def audit(api, message_id: str) -> dict[str, list[dict]]:
    rows = api.get("/api/audit", params={"message_id": message_id}).json()["data"]
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["action"], []).append(row)
    return found


def fake_run(tmp_path) -> int:
    """A finished retrain run with a log file, written the way the training part records one."""
    from core.db import session_scope
    from retrain.training.models import RetrainRun

    log = tmp_path / "run.log"
    log.write_text("step 5 loss 2.50\nstep 10 loss 1.23\n")
    with session_scope() as s:
        run = RetrainRun(status="failed", reason="manual", error="CUDA out of memory", log_path=str(log),
                         metrics={"sft": {"train_loss": 1.23}}, plan={"methods": ["sft"]})
        s.add(run)
        s.flush()
        return run.id


def test_wrong_key_is_refused(page, live_server):
    page.goto("/review")
    page.wait_for_url(re.compile(r"/login\?next=/review"))
    page.get_by_label("API key").fill("hitl_rev_not-a-real-key")
    with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as response:
        page.get_by_role("button", name="Sign in").click()
    assert response.value.status == 401
    assert page.get_by_role("alert").inner_text() == "That key was not recognised."
    shot(page, "login-refused")
    assert page.context.cookies() == []
    # the pages and the API stay closed without a session
    assert page.goto("/admin").url.endswith("/login?next=/admin")
    assert page.request.post("/api/review/claim").status == 401


def test_review_with_shortcuts_reaches_the_store(page, live_server, api):
    first = seed_conversation(live_server)
    (second,) = queue_replies(live_server, 1)
    sign_in(page, make_key("reviewer", "rita"))

    item = page.locator("#item")
    item.wait_for(state="visible")
    assert page.locator("#item-meta").inner_text() == first
    # the conversation is shown up to the reply under review, not beyond
    assert page.locator("#messages .msg").all_inner_texts()[-1].endswith("then put it in cold water.")
    assert page.locator("#messages .msg").count() == 2 and page.locator(".msg-review").count() == 1
    assert page.locator("#lease-countdown").inner_text() not in {"", "–:––", "expired"}
    assert page.locator("#left-in-queue").inner_text() == "2"
    assert "Ctrl" in page.locator("#shortcuts").inner_text()

    # rate every dimension with the number keys (each moves to the next dimension)
    for key in "453":
        page.keyboard.press(key)
    assert page.locator('input[name="dim-correctness"]:checked').get_attribute("value") == "4"
    assert page.locator('input[name="dim-tone"]:checked').get_attribute("value") == "3"

    # compare two fresh candidates side by side and pick B
    page.keyboard.press("c")
    page.locator("#cand-b-text").filter(has_not_text="Generating").wait_for(timeout=60_000)
    page.keyboard.press("b")
    assert page.locator('.choice[data-choice="b"]').get_attribute("aria-pressed") == "true"

    # edit the correction: the diff against the original is shown
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "correction"
    corrected = "Boil it for 6 to 7 minutes for a soft yolk, then put it in cold water."
    page.locator("#correction").fill(corrected)
    page.locator("#diff ins").first.wait_for()
    assert "6 to 7" in " ".join(page.locator("#diff ins").all_inner_texts())
    assert "12" in " ".join(page.locator("#diff del").all_inner_texts())
    page.keyboard.press("Escape")
    page.keyboard.press("f")
    page.keyboard.press("Space")  # first flag: unsafe
    page.keyboard.press("m")
    page.keyboard.type("Way too long for a soft yolk.")
    shot(page, "review")

    page.keyboard.press("Control+Enter")
    page.wait_for_function("id => document.getElementById('item-meta').textContent === id", arg=second)
    page.wait_for_function("() => document.getElementById('reviewed-today').textContent === '1'")

    # every action is in the feedback store, attributed to the reviewer
    actions = audit(api, first)
    assert actions["correction.create"][0]["after"]["content"] == corrected
    assert actions["rating.create"][0]["after"]["scores"] == {"correctness": 4, "helpfulness": 5, "tone": 3}
    assert actions["rating.create"][0]["after"]["comment"] == "Way too long for a soft yolk."
    assert actions["comparison.create"][0]["after"]["choice"] == "b"
    assert actions["flag.create"][0]["after"]["tags"] == ["unsafe"]
    assert "claim.submitted" in actions

    # incomplete ratings are refused in the page; skipping hands the item back
    page.keyboard.press("1")
    page.keyboard.press("Control+Enter")
    assert "missing: helpfulness, tone" in page.locator("#form-error").inner_text()
    page.keyboard.press("s")
    page.locator("#empty").wait_for(state="visible")
    assert "claim.skipped" in audit(api, second)
    assert page.locator("#empty-title").inner_text() == "The queue is empty"

    # narrow screen
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "review-narrow-empty")


def test_expired_lease_is_handled(page, live_server, api):
    (message_id,) = queue_replies(live_server, 1)
    sign_in(page, make_key("reviewer"))
    page.locator("#item").wait_for(state="visible")
    # the lease runs out (in the store and on the page's clock): the page warns ...
    from sqlmodel import update

    from core.db import session_scope
    from core.models import utcnow
    from feedback.models import ReviewClaim

    with session_scope() as s:
        s.exec(update(ReviewClaim).where(ReviewClaim.message_id == message_id).values(lease_expires_at=utcnow()))
    page.evaluate("() => { window.realNow = Date.now; const t = Date.now(); Date.now = () => t + 3600 * 1000; }")
    page.locator("#banner").filter(has_text="lease").wait_for()
    assert page.locator("#lease-countdown").inner_text() == "expired"
    # ... and a late submit explains what happened and offers the next item instead of failing silently
    for key in "333":
        page.keyboard.press(key)
    page.keyboard.press("Control+Enter")
    page.locator("#banner").filter(has_text="no longer yours").wait_for()
    assert "rating.create" not in audit(api, message_id)
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "review-lease-expired-narrow")
    page.evaluate("() => { Date.now = window.realNow; }")
    page.get_by_role("button", name="Next item").click()
    page.locator("#toast").filter(has_text="unsent work is restored").wait_for()  # nobody else took it
    assert page.locator("#item-meta").inner_text() == message_id and page.locator("#banner").is_hidden()
    assert page.locator('input[name="dim-tone"]:checked').get_attribute("value") == "3"  # the draft survived
    page.keyboard.press("Control+Enter")
    page.locator("#empty").wait_for(state="visible")
    assert audit(api, message_id)["rating.create"][0]["after"]["scores"]["tone"] == 3


def test_admin_dashboard_and_pages(page, live_server, api, admin_key, tmp_path):
    (message_id,) = queue_replies(live_server, 1)
    reviewer = make_key("reviewer", "omar")
    with live_server.client(reviewer) as client:
        assert client.post("/api/review/claim").json()["message_id"] == message_id
        url = f"/api/review/items/{message_id}"
        assert client.post(f"{url}/correction", json={"content": "Paris."}).status_code == 201
        assert client.post(f"{url}/rating", json={"scores": {"correctness": 1, "helpfulness": 1, "tone": 2}}).status_code == 201
        assert client.post(f"{url}/submit").status_code == 200
    # a second opinion that disagrees puts the item into adjudication
    api.post(f"/api/review/items/{message_id}/rating", json={"scores": {"correctness": 5, "helpfulness": 5, "tone": 5}})

    sign_in(page, admin_key, "/admin")
    recent = page.locator("#recent")
    assert message_id in recent.inner_text() and "correction" in recent.inner_text().lower()
    assert page.locator("svg.chart").count() >= 3
    assert "omar" in page.locator("#reviewers").inner_text()
    shot(page, "admin-dashboard")
    recent.get_by_role("link", name=message_id).first.click()
    assert "Paris." in page.locator("#item-feedback").inner_text()
    assert page.locator(".msg-review").count() == 1
    shot(page, "admin-item")
    page.go_back()

    page.get_by_role("navigation", name="Admin sections").get_by_role("link", name="Adjudication").click()
    section = page.locator(f'.adjudicate[data-message-id="{message_id}"]')
    section.locator("summary").click()
    section.locator(".msg-review").wait_for()
    section.locator("select").first.select_option("2")
    shot(page, "admin-adjudication")
    section.get_by_role("button", name="Record final scores").click()
    section.wait_for(state="detached")
    assert "item.adjudicated" in audit(api, message_id)

    page.get_by_role("navigation", name="Admin sections").get_by_role("link", name="Users & keys").click()
    page.get_by_label("Name").fill("new reviewer")
    page.get_by_role("button", name="Create and show key").click()
    page.locator("#new-key-value").filter(has_text="hitl_").wait_for()
    key = page.locator("#new-key-value").inner_text()
    assert key.startswith("hitl_rev_")
    assert live_server.client(key).post("/api/review/claim").status_code in {200, 204}
    shot(page, "admin-users")

    page.get_by_role("navigation", name="Admin sections").get_by_role("link", name="Model registry").click()
    assert "base" in page.locator("#versions").inner_text()
    shot(page, "admin-models")
    page.get_by_role("navigation", name="Admin sections").get_by_role("link", name="Datasets").click()
    if api.get("/api/datasets").status_code != 404:
        page.get_by_role("button", name="Build snapshot now").click()
        page.locator("#snapshots").wait_for()
        snapshot = api.get("/api/datasets").json()["data"][0]
        assert snapshot["hash"][:12] in page.locator("#snapshots").inner_text()
        page.get_by_role("button", name="Manifest").first.click()
        page.locator("pre").filter(has_text=snapshot["hash"]).wait_for()
    shot(page, "admin-datasets")

    run_id = fake_run(tmp_path)
    page.get_by_role("navigation", name="Admin sections").get_by_role("link", name="Retrain runs").click()
    page.get_by_role("link", name=f"#{run_id}").click()
    assert "step 10 loss 1.23" in page.locator("pre").last.inner_text()
    assert "CUDA out of memory" in page.locator(".alert-error").inner_text()
    shot(page, "admin-run")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/admin")
    shot(page, "admin-dashboard-narrow")

    # a reviewer key cannot open the admin pages
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/login"))
    sign_in(page, reviewer, "/review")
    assert page.goto("/admin").status == 403


def test_registry_promote_and_rollback_with_confirmation(page, live_server, api, admin_key, tiny_model_dir):
    if api.get("/api/models").status_code == 404:
        pytest.skip("registry API not mounted")
    from core.db import session_scope
    from service.models import ModelVersion

    with session_scope() as s:
        s.add(ModelVersion(version="v2", base_path=str(tiny_model_dir), status="candidate",
                           gate_report={"passed": True, "decision": "promote", "reasons": ["all gates passed"]}))
    sign_in(page, admin_key, "/admin/models")
    dialogs = []

    def answer(dialog):
        dialogs.append(dialog.message)
        dialog.accept("looks better" if dialog.type == "prompt" else None)

    page.on("dialog", answer)
    page.get_by_role("button", name="Promote").click()
    page.locator("#versions tr", has_text="v2").locator(".badge-accent", has_text="champion").wait_for()
    assert "Promote v2 to champion?" in dialogs[0]
    versions = {v["version"]: v for v in api.get("/api/models").json()["data"]}
    assert "champion" in versions["v2"]["aliases"]
    assert "looks better" in page.locator("#history").inner_text()
    page.locator("#serving-now").filter(has_text="serving: v2").wait_for(timeout=60_000)  # hot-swapped
    page.get_by_text("Gate report for v2").click()
    shot(page, "admin-models-promoted")

    page.get_by_role("button", name="Roll back champion").click()
    page.locator("#versions tr", has_text="base").locator(".badge-accent", has_text="champion").wait_for()
    versions = {v["version"]: v for v in api.get("/api/models").json()["data"]}
    assert "champion" in versions["base"]["aliases"]
