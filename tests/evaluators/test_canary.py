"""Canary evaluation: live feedback per version decides promotion or rollback of the challenger, with a
sequential test (mSPRT) that stays valid however often the canary looks."""

import numpy as np
import pytest

from evaluators import canary, registry
from service import service as serving
from service.models import Conversation, Message, ModelAlias, ModelVersion, VersionStatus
from tests.evaluators.conftest import register

CFG = {"alpha": 0.05, "min_samples": 30, "max_age_hours": 168}


@pytest.fixture
def canary_on(session, settings, tiny_model_dir):
    serving.ensure_champion(session, settings)
    register(session, "chal", None, tiny_model_dir)  # parent "base": the champion
    registry.set_challenger(session, "chal", actor="test", reason="canary")
    return session


def feedback(session, version: str, up: int, down: int, scores: list[int] = (), errors: int = 0) -> None:
    """Replies of `version`: `up + down` with an end-user thumbs each, `scores` rated by a reviewer,
    the first `errors` of them ended in an error; interleaved in time is not needed (the test looks at
    every prefix of the merged stream)."""
    from core.auth import create_user
    from core.models import Role
    from feedback.models import Rating, Thumbs

    reviewer, _ = create_user(session, name=f"rev-{version}-{up}-{down}-{len(scores)}-{errors}", role=Role.reviewer)
    n = max(up + down, len(scores), errors)
    conversations = [Conversation() for _ in range(n)]
    session.add_all(conversations)
    session.flush()
    replies = [Message(conversation_id=c.id, position=1, role="assistant", content="r", model_version=version,
                       finish_reason="error" if i < errors else "stop") for i, c in enumerate(conversations)]
    session.add_all(replies)
    session.flush()
    rows = [Thumbs(message_id=r.id, thumbs="up" if i < up else "down") for i, r in enumerate(replies[: up + down])]
    rows += [Rating(message_id=r.id, reviewer_id=reviewer.id, scores={"correctness": s})
             for r, s in zip(replies, scores)]
    session.add_all(rows)
    session.flush()


def test_harm_rolls_back_better_promotes_stale_parent_is_retired(canary_on, tiny_model_dir):
    s = canary_on
    feedback(s, "base", up=240, down=60)  # 20% thumbs down
    feedback(s, "chal", up=150, down=150)  # 50%: clear harm
    result = canary.step(s, CFG)
    assert result["decision"] == "rollback" and result["harm"] == ["thumbs_down"]
    assert result["metrics"]["thumbs_down"]["test"].startswith("mSPRT")
    assert result["metrics"]["thumbs_down"]["p_harm"] < 0.05 / 3
    assert s.get(ModelAlias, "challenger") is None and s.get(ModelVersion, "chal").status == VersionStatus.rejected
    assert "harm on thumbs_down" in registry.history(s, "challenger")[0].reason

    register(s, "chal2", None, tiny_model_dir)
    registry.set_challenger(s, "chal2", actor="test")
    feedback(s, "base", up=280, down=120)  # only replies since this canary started count: 30% down
    feedback(s, "chal2", up=360, down=40)  # 10% down, no errors in 400 replies: better and non-inferior
    result = canary.step(s, CFG)
    assert result["decision"] == "promote", result["reason"]
    assert result["metrics"]["thumbs_down"]["n_champion"] == 400 and result["metrics"]["thumbs_down"]["benefit"]
    assert result["metrics"]["errors"]["noninferior"]
    assert s.get(ModelAlias, "champion").version == "chal2" and s.get(ModelAlias, "challenger") is None
    event = registry.history(s, "champion")[0]
    assert event.actor == "canary" and "p harm=" in event.reason

    # a challenger whose parent is no longer the champion is never promoted automatically
    register(s, "chal3", None, tiny_model_dir, parent="base")  # trained on base; chal2 serves now
    registry.set_challenger(s, "chal3", actor="test")
    feedback(s, "chal2", up=280, down=120)
    feedback(s, "chal3", up=360, down=40)
    result = canary.step(s, CFG)
    assert result["decision"] == "rollback" and result["stale"]
    assert "parent 'base' is no longer the champion ('chal2')" in result["reason"]
    assert s.get(ModelAlias, "champion").version == "chal2" and s.get(ModelAlias, "challenger") is None
    assert s.get(ModelVersion, "chal3").status == VersionStatus.rejected


sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


@sqlite_only
def test_too_little_or_unclear_evidence_waits(canary_on):
    s = canary_on
    feedback(s, "base", up=5, down=5)
    feedback(s, "chal", up=10, down=0)
    assert canary.step(s, CFG)["decision"] == "wait"  # below min_samples
    feedback(s, "base", up=20, down=20)
    feedback(s, "chal", up=21, down=19)
    assert canary.step(s, CFG)["decision"] == "wait"  # enough samples, no clear difference
    assert s.get(ModelAlias, "challenger").version == "chal"
    expired = canary.step(s, CFG | {"max_age_hours": 0})
    assert expired["decision"] == "rollback" and expired["expired"]


@sqlite_only
def test_errors_and_worse_reviewer_scores_roll_back(canary_on, tiny_model_dir):
    s = canary_on
    feedback(s, "base", up=0, down=0, scores=[4, 5] * 20)
    feedback(s, "chal", up=0, down=0, scores=[2, 3] * 20)
    result = canary.step(s, CFG)
    assert result["decision"] == "rollback" and result["harm"] == ["scores"]
    assert result["metrics"]["scores"]["p_harm"] < 0.05 / 3

    register(s, "chal2", None, tiny_model_dir)
    registry.set_challenger(s, "chal2", actor="test")
    feedback(s, "base", up=100, down=20, errors=1)
    feedback(s, "chal2", up=100, down=20, errors=30)  # 25% of its replies fail
    result = canary.step(s, CFG)
    assert result["decision"] == "rollback" and result["harm"] == ["errors"]


def test_a_a_streams_rarely_decide_despite_peeking_after_every_observation():
    """200 A/A streams of 2,000 thumbs each, looked at after every observation (the strictest
    monitoring): the share that ever decides (harm or benefit) stays at most α (plus simulation slack),
    where a fixed-sample z-test repeated every 50 observations decides far more often."""
    rng = np.random.default_rng(7)
    alpha, decided, naive = 0.05, 0, 0
    for _ in range(200):
        group = rng.integers(0, 2, 2000)
        values = (rng.random(2000) < 0.2).astype(float)
        r = canary.sequential_test(values, group, tau=0.05, min_samples=30)
        decided += r["p_harm"] < alpha or r["p_benefit"] < alpha
        for k in range(100, 2001, 50):
            g, v = group[:k], values[:k]
            _z, p = canary.two_proportion_test(int(v[g == 0].sum()), int((g == 0).sum()),
                                               int(v[g == 1].sum()), int((g == 1).sum()))
            if p < alpha:
                naive += 1
                break
    assert decided / 200 <= alpha + 0.025, decided
    assert naive / 200 > 2 * alpha, naive  # what the old canary's peeking did


def test_msprt_detects_a_clear_harm_and_proves_non_inferiority():
    rng = np.random.default_rng(3)
    group = rng.integers(0, 2, 1500)
    values = (rng.random(1500) < np.where(group == 1, 0.35, 0.2)).astype(float)
    r = canary.sequential_test(values, group, tau=0.05, margin=0.02, min_samples=30)
    assert r["p_harm"] < 0.01 and r["p_benefit"] == 1.0 and r["p_noninferior"] > 0.05
    same = (rng.random(1500) < 0.2).astype(float)
    r = canary.sequential_test(same, group, tau=0.05, margin=0.1, min_samples=30)
    assert r["p_noninferior"] < 0.05 and r["p_harm"] > 0.05
