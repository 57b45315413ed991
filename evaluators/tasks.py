"""Background jobs of the evaluation domain (the scheduler enqueues them; they open their own session)."""

import logging

from core.db import session_scope
from evaluators import canary
from evaluators.gate import load_policy

log = logging.getLogger(__name__)


def canary_job() -> dict:
    """Every few minutes when canary is on: promote or roll back the challenger once the evidence is clear."""
    policy = load_policy()
    if not policy["canary"].get("enabled"):
        return {"decision": "disabled"}
    with session_scope() as session:
        result = canary.step(session, policy["canary"])
    if result["decision"] not in ("none", "wait"):
        log.info("canary: %s", result.get("reason"))
    return result


def schedule(scheduler, every_minutes: int = 5) -> None:
    """Add the canary check to a running APScheduler (stored by reference, so any process can run it)."""
    scheduler.add_job("evaluators.tasks:canary_job", "interval", minutes=every_minutes, id="hitl-canary",
                      name="canary decision", replace_existing=True)
