"""Canary evaluation: live feedback per version decides promotion or rollback of the challenger."""

import pytest

from evaluators import canary, registry
from service import service as serving
from service.models import Conversation, Message, ModelAlias, ModelVersion, VersionStatus
from tests.evaluators.conftest import register

CFG = {"alpha": 0.05, "min_samples": 30, "max_age_hours": 168}


@pytest.fixture
def canary_on(session, settings, tiny_model_dir):
    serving.ensure_champion(session, settings)
    register(session, "chal", None, tiny_model_dir)
    registry.set_challenger(session, "chal", actor="test", reason="canary")
    return session


def feedback(session, version: str, up: int, down: int, scores: list[int] = ()) -> None:
    from core.auth import create_user
    from core.models import Role
    from feedback.models import Rating, Thumbs

    reviewer, _ = create_user(session, name=f"rev-{version}-{up}-{down}", role=Role.reviewer)
    for i in range(max(up + down, len(scores))):
        conversation = Conversation()
        session.add(conversation)
        session.flush()
        reply = Message(conversation_id=conversation.id, position=1, role="assistant", content="r", model_version=version)
        session.add(reply)
        session.flush()
        if i < up + down:
            session.add(Thumbs(message_id=reply.id, thumbs="up" if i < up else "down"))
        if i < len(scores):
            session.add(Rating(message_id=reply.id, reviewer_id=reviewer.id, scores={"correctness": scores[i]}))
    session.flush()


def test_better_challenger_is_promoted_worse_one_rolled_back(canary_on, tiny_model_dir):
    s = canary_on
    feedback(s, "base", up=15, down=25)
    feedback(s, "chal", up=32, down=8)
    result = canary.step(s, CFG)
    assert result["decision"] == "promote"
    assert result["thumbs"]["test"].startswith("two-proportion z-test") and result["thumbs"]["p"] < 0.05
    assert result["thumbs"]["challenger_rate"] == 0.8 and result["thumbs"]["n_champion"] == 40
    assert s.get(ModelAlias, "champion").version == "chal" and s.get(ModelAlias, "challenger") is None
    event = registry.history(s, "champion")[0]
    assert event.actor == "canary" and "p=" in event.reason

    register(s, "chal2", None, tiny_model_dir)
    registry.set_challenger(s, "chal2", actor="test")
    feedback(s, "chal", up=30, down=10)  # only feedback since the canary started counts
    feedback(s, "chal2", up=12, down=28)
    result = canary.step(s, CFG)
    assert result["decision"] == "rollback" and result["thumbs"]["n_champion"] == 40
    assert s.get(ModelAlias, "challenger") is None and s.get(ModelAlias, "champion").version == "chal"
    assert s.get(ModelVersion, "chal2").status == VersionStatus.rejected


sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


@sqlite_only
def test_too_little_or_unclear_evidence_waits(canary_on):
    s = canary_on
    feedback(s, "base", up=5, down=5)
    feedback(s, "chal", up=10, down=0)
    assert canary.step(s, CFG)["decision"] == "wait"  # below min_samples
    feedback(s, "base", up=20, down=20)
    feedback(s, "chal", up=21, down=19)
    assert canary.step(s, CFG)["decision"] == "wait"  # enough samples, no significant difference
    assert s.get(ModelAlias, "challenger").version == "chal"
    expired = canary.step(s, CFG | {"max_age_hours": 0})
    assert expired["decision"] == "rollback" and expired["expired"]


@sqlite_only
def test_worse_reviewer_scores_roll_back(canary_on):
    s = canary_on
    feedback(s, "base", up=0, down=0, scores=[4, 5] * 20)
    feedback(s, "chal", up=0, down=0, scores=[2, 3] * 20)
    result = canary.step(s, CFG)
    assert result["decision"] == "rollback" and result["scores"]["test"].startswith("Mann-Whitney")
    assert result["scores"]["p"] < 0.05
