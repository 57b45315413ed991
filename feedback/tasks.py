"""Background jobs of the feedback domain; they open their own session."""

from sqlmodel import col, func, select

from core import webhooks
from core.db import session_scope
from core.settings import get_settings
from feedback.models import ReviewItem, ReviewItemStatus

EVENT = "review_queue.depth"


def open_items(session) -> int:
    """Open, queued review items (what reviewers have left to claim)."""
    return session.exec(select(func.count()).select_from(ReviewItem).where(
        ReviewItem.status == ReviewItemStatus.open, col(ReviewItem.priority).is_not(None))).one()


def check_queue_depth() -> str | None:
    """`review_queue.depth` when the open queue reaches `webhook_queue_depth` (state `above`) and again when it
    falls below (state `below`): edge-triggered on the state of the last event sent, so a queue that stays deep
    notifies once, whichever process checks. Returns the state notified, if any."""
    threshold = get_settings().webhook_queue_depth
    if threshold <= 0 or not webhooks.subscribed(EVENT):
        return None
    with session_scope() as session:
        depth = open_items(session)
        state = "above" if depth >= threshold else "below"
        last = webhooks.last_payload(session, EVENT)
        if state == ((last or {}).get("data", {}).get("state") or "below"):
            return None
        text = (f"hitl: {depth} review items waiting (threshold {threshold})" if state == "above"
                else f"hitl: review queue back to {depth} items (below {threshold})")
        webhooks.notify(session, EVENT, text, {"depth": depth, "threshold": threshold, "state": state})
        return state
