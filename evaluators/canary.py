"""Canary evaluation: compare live feedback on the challenger with the champion over the same window and
promote or roll back automatically once the evidence is clear.

Tests: thumbs-up rate by a two-sided two-proportion z-test (pooled variance); reviewer rubric scores (mean
over dimensions per rating) by a two-sided Mann–Whitney U test. Any significant "worse" rolls the challenger
back; a significant "better" with nothing worse promotes it; otherwise wait (up to `max_age_hours`, then
roll back: no evidence, no promotion)."""

import math
from datetime import timedelta
from typing import Any

from scipy.stats import mannwhitneyu
from sqlmodel import Session, col, select

from core.models import utcnow
from evaluators import registry
from evaluators.models import AliasAction, AliasEvent
from service.models import Message, ModelAlias


def two_proportion_test(up_a: int, n_a: int, up_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p) for H0: rate_a == rate_b."""
    if not n_a or not n_b:
        return 0.0, 1.0
    pooled = (up_a + up_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (up_b / n_b - up_a / n_a) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def _since(session: Session) -> Any:
    event = session.exec(select(AliasEvent).where(AliasEvent.alias == registry.CHALLENGER,
                                                  AliasEvent.action == AliasAction.set)
                         .order_by(col(AliasEvent.id).desc())).first()
    return event.created_at if event else None


def live_feedback(session: Session, versions: list[str], since=None) -> dict[str, dict[str, Any]]:
    """Thumbs and mean rubric score per version, for replies written since `since`."""
    from feedback.models import Rating, Thumbs

    out = {v: {"up": 0, "n": 0, "scores": []} for v in versions}
    thumbs = select(Message.model_version, Thumbs.thumbs).join(Thumbs, Thumbs.message_id == Message.id)
    ratings = select(Message.model_version, Rating.scores).join(Rating, Rating.message_id == Message.id)
    if since is not None:
        thumbs, ratings = thumbs.where(Message.created_at >= since), ratings.where(Message.created_at >= since)
    for version, value in session.exec(thumbs.where(col(Message.model_version).in_(versions))):
        out[version]["n"] += 1
        out[version]["up"] += value == "up"
    for version, scores in session.exec(ratings.where(col(Message.model_version).in_(versions))):
        if scores:
            out[version]["scores"].append(sum(scores.values()) / len(scores))
    return out


def compare(session: Session, champion: str, challenger: str, cfg: dict, since=None) -> dict[str, Any]:
    """The evidence and the decision: promote | rollback | wait."""
    data = live_feedback(session, [champion, challenger], since)
    a, b = data[champion], data[challenger]
    alpha, min_n = cfg.get("alpha", 0.05), cfg.get("min_samples", 30)
    z, p = two_proportion_test(a["up"], a["n"], b["up"], b["n"])
    thumbs = {"test": "two-proportion z-test (two-sided)", "champion_rate": a["up"] / a["n"] if a["n"] else None,
              "challenger_rate": b["up"] / b["n"] if b["n"] else None, "n_champion": a["n"], "n_challenger": b["n"],
              "z": z, "p": p, "enough": a["n"] >= min_n and b["n"] >= min_n}
    scores = {"test": "Mann-Whitney U (two-sided)", "n_champion": len(a["scores"]), "n_challenger": len(b["scores"]),
              "p": 1.0, "enough": len(a["scores"]) >= min_n and len(b["scores"]) >= min_n}
    if scores["enough"]:
        scores["p"] = float(mannwhitneyu(b["scores"], a["scores"], alternative="two-sided").pvalue)
        scores["champion_mean"] = sum(a["scores"]) / len(a["scores"])
        scores["challenger_mean"] = sum(b["scores"]) / len(b["scores"])
    signals = []
    if thumbs["enough"] and p < alpha:
        signals.append("better" if z > 0 else "worse")
    if scores["enough"] and scores["p"] < alpha:
        signals.append("better" if scores["challenger_mean"] > scores["champion_mean"] else "worse")
    decision = "rollback" if "worse" in signals else "promote" if "better" in signals else "wait"
    return {"champion": champion, "challenger": challenger, "alpha": alpha, "min_samples": min_n,
            "thumbs": thumbs, "scores": scores, "decision": decision}


def step(session: Session, cfg: dict, actor: str = "canary") -> dict[str, Any]:
    """One canary tick: decide and apply (promote the challenger, or clear and reject it)."""
    challenger, champion = session.get(ModelAlias, registry.CHALLENGER), session.get(ModelAlias, registry.CHAMPION)
    if challenger is None or champion is None:
        return {"decision": "none"}
    since = _since(session)
    result = compare(session, champion.version, challenger.version, cfg, since)
    expired = since is not None and utcnow() - _aware(since) > timedelta(hours=cfg.get("max_age_hours", 168))
    if result["decision"] == "wait" and expired:
        result["decision"] = "rollback"
        result["expired"] = True
    why = (f"canary {result['decision']}: thumbs p={result['thumbs']['p']:.3g} "
           f"({result['thumbs']['challenger_rate']} vs {result['thumbs']['champion_rate']}), "
           f"scores p={result['scores']['p']:.3g}" + (" (expired)" if result.get("expired") else ""))
    if result["decision"] == "promote":
        registry.promote(session, challenger.version, actor=actor, reason=why)
    elif result["decision"] == "rollback":
        registry.clear_challenger(session, actor=actor, reason=why, reject=True)
    result["reason"] = why
    return result


def _aware(moment):
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
