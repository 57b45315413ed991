"""How much time the review UI itself adds per item: a keyboard-only reviewer in headless Chromium
rates (3 keys), sometimes corrects, submits (Ctrl+Enter) and lands on the next item, N items in a row.

The figure is the machine's share of a reviewer's time (API writes + claim + render); a human's reading
and typing comes on top. Needs /usr/bin/chromium. Run: .venv/bin/python bench/bench_review_ui.py [N]
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "How long should I boil an egg for a soft yolk?"
ANSWER = "Boil it for about 12 minutes, then put it in cold water."


def main(n: int = 10) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hitl-bench-ui-"))
    from tests.factories import build_tiny_model

    os.environ.update(HITL_DATA_DIR=str(tmp / "var"), HITL_DATABASE_URL=f"sqlite:///{tmp / 'hitl.db'}",
                      HITL_BASE_MODEL=str(build_tiny_model(tmp / "model")), HITL_SCHEDULER_ENABLED="false")
    from playwright.sync_api import sync_playwright

    from core.db import migrate, session_scope
    from hitl.app import create_app
    from service.models import Conversation, Message
    from tests.conftest import LiveServer, make_key

    migrate()
    with LiveServer(create_app()) as server:
        ids = []
        with session_scope() as s:
            for i in range(n):
                conversation = Conversation(end_user=f"u{i}")
                s.add(conversation)
                s.flush()
                s.add(Message(conversation_id=conversation.id, position=0, role="user", content=f"{QUESTION} ({i})"))
                reply = Message(conversation_id=conversation.id, position=1, role="assistant", content=ANSWER,
                                model_version="base")
                s.add(reply)
                s.flush()
                ids.append(reply.id)
        with server.client(make_key("service")) as client:
            for message_id in ids:
                client.post("/v1/feedback", json={"message_id": message_id, "thumbs": "down"}).raise_for_status()
        key = make_key("reviewer", "bench")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=server.url)
            started = time.perf_counter()
            page.goto("/review")
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            page.locator("#item").wait_for(state="visible")
            first_item = time.perf_counter() - started
            per_item = []
            for i in range(n):
                t0 = time.perf_counter()
                current = page.locator("#item-meta").inner_text()
                for k in "445":
                    page.keyboard.press(k)
                if i % 2 == 0:  # every other item also gets a correction
                    page.keyboard.press("e")
                    page.locator("#correction").fill("Boil it for 6 to 7 minutes, then put it in cold water.")
                    page.keyboard.press("Escape")
                page.keyboard.press("Control+Enter")
                page.wait_for_function(
                    "id => document.getElementById('item-meta').textContent !== id || "
                    "!document.getElementById('empty').hidden", arg=current)
                per_item.append(time.perf_counter() - t0)
            total = time.perf_counter() - started
            browser.close()
    print(f"items reviewed: {n} (half with a correction), keyboard only, SQLite, headless Chromium")
    print(f"sign-in to first item: {first_item:.2f} s")
    print(f"per item (keys + submit + next item rendered): median {statistics.median(per_item) * 1000:.0f} ms, "
          f"max {max(per_item) * 1000:.0f} ms")
    print(f"total for {n} items: {total:.1f} s  (the 'ten items in five minutes' budget leaves "
          f"{(300 - total) / n:.1f} s per item for the human)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
