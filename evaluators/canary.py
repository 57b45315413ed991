"""Canary evaluation: compare live feedback on the challenger with the champion over the same window and
promote or roll back automatically once the evidence is clear, with a test that stays valid however
often the canary looks (every tick of the scheduler).

Metrics, per version, on replies written since the challenger was set:
- thumbs_down: end-user thumbs-down share of the end-user thumbs on its replies (lower is better);
- errors: share of its replies that ended in an error (`finish_reason == "error"`; lower is better);
- scores: mean rubric score per reviewer rating (higher is better).

Test: the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis & Walsh (2017),
"Peeking at A/B Tests: Why it matters, and what to do about it" (KDD '17), in its normal
approximation for the difference θ = challenger - champion of two proportions (or means). With the
estimate θ̂_n, its variance V_n = p̂_a(1-p̂_a)/n_a + p̂_b(1-p̂_b)/n_b (p̂ smoothed by +0.5/+1 so that a
rate of 0 has a variance; for scores the sample variances) and a normal mixing distribution
N(θ0, τ²) over the alternative,

    Λ_n = sqrt(V_n / (V_n + τ²)) · exp( τ² (θ̂_n - θ0)² / (2 V_n (V_n + τ²)) )

and the always-valid p-value is p_n = min(1, min_{m ≤ n} 1/Λ_m). Under H0: θ = θ0, Λ_n is a
(approximate) martingale, so P(p_n ever < α) ≤ α: the canary may look after every observation.
Each tick recomputes Λ over every prefix of the merged, time-ordered observations since the canary
started (no state to keep; looking more often than that is impossible). τ (`tau`, per metric) is
the size of effect the test is tuned to find fastest.

Decisions, with α split evenly over the configured metrics (Bonferroni):
- harm: p of θ = 0 below α_m over prefixes where the challenger looked worse → roll back (reject);
- benefit: the same over prefixes where it looked better;
- non-inferiority (metrics with a `margin` δ): H0 θ = δ (worse by the margin) rejected over prefixes
  where θ̂ < δ: the challenger is not worse by δ;
- promote when nothing shows harm and thumbs_down shows benefit or non-inferiority and every other
  metric with a margin shows non-inferiority (or benefit); otherwise wait, up to `max_age_hours`,
  then roll back (no evidence, no promotion). Fewer than `min_samples` observations per version on a
  metric: that metric has no say yet.

Before an automatic promotion the challenger's `parent` must still be the champion: a challenger
trained and gated against a model that is no longer serving is retired (rolled back, rejected) with
that reason instead.
"""

import math
from datetime import UTC, timedelta
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from core import webhooks
from core.models import utcnow
from evaluators import registry
from evaluators.models import AliasAction, AliasEvent
from service.models import Message, ModelAlias, ModelVersion

DEFAULT_METRICS: dict[str, dict[str, Any]] = {
    "thumbs_down": {"tau": 0.05, "margin": 0.02, "lower_is_better": True},
    "errors": {"tau": 0.02, "margin": 0.01, "lower_is_better": True},
    "scores": {"tau": 0.5, "margin": None, "lower_is_better": False},
}


# ---------------------------------------------------------------------------------------------- mSPRT


def msprt_lambda(theta: np.ndarray, variance: np.ndarray, tau: float, theta0: float = 0.0) -> np.ndarray:
    """Mixture likelihood ratio Λ of H0 θ = θ0 against θ ~ N(θ0, τ²), normal approximation."""
    tau2 = tau * tau
    v = np.maximum(variance, 1e-12)
    return np.sqrt(v / (v + tau2)) * np.exp(np.minimum(tau2 * (theta - theta0) ** 2 / (2 * v * (v + tau2)), 700))


def _prefix_stats(values: np.ndarray, group: np.ndarray, binary: bool) -> tuple[np.ndarray, ...]:
    """(n_a, n_b, θ̂ = mean_b - mean_a, V) after each observation of the merged stream (group 1 = challenger)."""
    b = group.astype(bool)
    n_b = np.cumsum(b)
    n_a = np.arange(1, len(values) + 1) - n_b
    s_b, s_a = np.cumsum(np.where(b, values, 0.0)), np.cumsum(np.where(b, 0.0, values))
    with np.errstate(divide="ignore", invalid="ignore"):
        if binary:
            p_a, p_b = (s_a + 0.5) / (n_a + 1), (s_b + 0.5) / (n_b + 1)
            theta = s_b / n_b - s_a / n_a
            var = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
        else:
            q_b, q_a = np.cumsum(np.where(b, values**2, 0.0)), np.cumsum(np.where(b, 0.0, values**2))
            m_a, m_b = s_a / n_a, s_b / n_b
            var_a = np.maximum(q_a / n_a - m_a**2, 0) * n_a / np.maximum(n_a - 1, 1)
            var_b = np.maximum(q_b / n_b - m_b**2, 0) * n_b / np.maximum(n_b - 1, 1)
            theta, var = m_b - m_a, (var_a + 0.25) / n_a + (var_b + 0.25) / n_b  # +0.25: no zero variance
    return n_a, n_b, theta, var


def sequential_test(values, group, *, tau: float, margin: float | None = None, lower_is_better: bool = True,
                    min_samples: int = 30, binary: bool = True) -> dict[str, Any]:
    """Always-valid p-values over a time-ordered stream: `values` (0/1 or scores), `group` (0 champion,
    1 challenger). Returns p_harm, p_benefit, p_noninferior (None without a margin), the current
    estimate and counts. Prefixes with fewer than `min_samples` per version are not looked at."""
    values, group = np.asarray(values, dtype=float), np.asarray(group, dtype=int)
    out: dict[str, Any] = {"n_champion": int((group == 0).sum()), "n_challenger": int((group == 1).sum()),
                           "p_harm": 1.0, "p_benefit": 1.0, "p_noninferior": None if margin is None else 1.0,
                           "champion": None, "challenger": None, "difference": None}
    if out["n_champion"]:
        out["champion"] = float(values[group == 0].mean())
    if out["n_challenger"]:
        out["challenger"] = float(values[group == 1].mean())
    if not len(values):
        return out
    n_a, n_b, theta, var = _prefix_stats(values, group, binary)
    ok = (n_a >= min_samples) & (n_b >= min_samples)
    out["enough"] = bool(ok[-1])
    if not ok.any():
        return out
    theta, var = theta[ok], var[ok]
    worse = theta > 0 if lower_is_better else theta < 0
    better = theta < 0 if lower_is_better else theta > 0
    inv = 1 / msprt_lambda(theta, var, tau)
    out["difference"] = float(theta[-1])
    out["p_harm"] = float(min(1.0, inv[worse].min())) if worse.any() else 1.0
    out["p_benefit"] = float(min(1.0, inv[better].min())) if better.any() else 1.0
    if margin is not None:
        bound = margin if lower_is_better else -margin  # H0: worse by the margin
        inside = theta < bound if lower_is_better else theta > bound
        inv_ni = 1 / msprt_lambda(theta, var, tau, bound)
        out["p_noninferior"] = float(min(1.0, inv_ni[inside].min())) if inside.any() else 1.0
    return out


# ---------------------------------------------------------------------------------------------- data


def _since(session: Session) -> Any:
    event = session.exec(select(AliasEvent).where(AliasEvent.alias == registry.CHALLENGER,
                                                  AliasEvent.action == AliasAction.set)
                         .order_by(col(AliasEvent.id).desc())).first()
    return event.created_at if event else None


def live_streams(session: Session, champion: str, challenger: str, since=None) -> dict[str, tuple[list, list]]:
    """Per metric, the time-ordered (values, groups) of both versions' replies written since `since`."""
    from feedback.models import Rating, Thumbs

    versions = [champion, challenger]
    group = {champion: 0, challenger: 1}
    window = [col(Message.model_version).in_(versions), Message.role == "assistant"]
    if since is not None:
        window.append(Message.created_at >= since)
    streams: dict[str, list[tuple]] = {"thumbs_down": [], "errors": [], "scores": []}
    for version, value, at, rid in session.exec(
            select(Message.model_version, Thumbs.thumbs, Thumbs.created_at, Thumbs.id)
            .join(Thumbs, Thumbs.message_id == Message.id).where(*window, Thumbs.source == "end_user")):
        streams["thumbs_down"].append((_aware(at), rid, float(value == "down"), group[version]))
    for version, reason, at, mid in session.exec(
            select(Message.model_version, Message.finish_reason, Message.created_at, Message.id).where(*window)):
        streams["errors"].append((_aware(at), mid, float(reason == "error"), group[version]))
    for version, scores, at, rid in session.exec(
            select(Message.model_version, Rating.scores, Rating.created_at, Rating.id)
            .join(Rating, Rating.message_id == Message.id).where(*window, Rating.adjudicated == False)):  # noqa: E712
        if scores:
            streams["scores"].append((_aware(at), rid, sum(scores.values()) / len(scores), group[version]))
    out = {}
    for name, rows in streams.items():
        rows.sort(key=lambda r: (r[0], str(r[1])))
        out[name] = ([r[2] for r in rows], [r[3] for r in rows])
    return out


def _metrics(cfg: dict) -> dict[str, dict]:
    merged = {name: dict(spec) for name, spec in DEFAULT_METRICS.items()}
    for name, spec in (cfg.get("metrics") or {}).items():
        if spec is None:  # `metric: null` in the policy switches it off
            merged.pop(name, None)
        else:
            merged.setdefault(name, {"lower_is_better": True}).update(spec)
    return merged


def compare(session: Session, champion: str, challenger: str, cfg: dict, since=None) -> dict[str, Any]:
    """The evidence and the decision: promote | rollback | wait."""
    streams = live_streams(session, champion, challenger, since)
    alpha, min_n = cfg.get("alpha", 0.05), cfg.get("min_samples", 30)
    metrics = _metrics(cfg)
    results = {}
    for name, spec in metrics.items():
        values, groups = streams.get(name, ([], []))
        results[name] = {"test": "mSPRT (Johari et al. 2017), normal mixture", "tau": spec["tau"],
                         "margin": spec.get("margin"), "lower_is_better": spec["lower_is_better"],
                         **sequential_test(values, groups, tau=spec["tau"], margin=spec.get("margin"),
                                           lower_is_better=spec["lower_is_better"], min_samples=min_n,
                                           binary=name != "scores")}
    alpha_m = alpha / max(len(results), 1)  # Bonferroni over the configured metrics
    for r in results.values():
        r["alpha"] = alpha_m
        r["harm"] = r["p_harm"] < alpha_m
        r["benefit"] = r["p_benefit"] < alpha_m
        r["noninferior"] = r["p_noninferior"] is not None and r["p_noninferior"] < alpha_m
    harmed = [n for n, r in results.items() if r["harm"]]
    thumbs = results.get("thumbs_down")
    thumbs_ok = thumbs is not None and (thumbs["benefit"] or thumbs["noninferior"])
    others_ok = all(r["benefit"] or r["noninferior"] for n, r in results.items()
                    if n != "thumbs_down" and r["margin"] is not None)
    decision = "rollback" if harmed else "promote" if thumbs_ok and others_ok else "wait"
    return {"champion": champion, "challenger": challenger, "alpha": alpha, "min_samples": min_n,
            "metrics": results, "harm": harmed, "decision": decision}


# ---------------------------------------------------------------------------------------------- tick


def _why(result: dict) -> str:
    parts = []
    for name, r in result["metrics"].items():
        if r.get("enough") is None:
            continue
        shown = f"{name} {r['challenger']:.3g} vs {r['champion']:.3g}" if r["champion"] is not None \
            and r["challenger"] is not None else name
        parts.append(f"{shown} (p harm={r['p_harm']:.3g}, benefit={r['p_benefit']:.3g}"
                     + (f", non-inferior={r['p_noninferior']:.3g}" if r["p_noninferior"] is not None else "") + ")")
    return "; ".join(parts) or "no data"


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
    why = f"canary {result['decision']}: {_why(result)}"
    if result.get("expired"):
        why += " (expired without evidence)"
    elif result["harm"]:
        why += f" (harm on {', '.join(result['harm'])})"
    if result["decision"] == "promote":
        row = session.get(ModelVersion, challenger.version)
        parent = row.parent if row is not None else None
        if parent != champion.version:
            result["decision"], result["stale"] = "rollback", True
            why = (f"canary retired: the challenger's parent {parent!r} is no longer the champion "
                   f"({champion.version!r}); it was trained and gated against another model. Evidence: {_why(result)}")
    if result["decision"] == "promote":
        registry.promote(session, challenger.version, actor=actor, reason=why)
    elif result["decision"] == "rollback":
        registry.clear_challenger(session, actor=actor, reason=why, reject=True)
        webhooks.notify(session, "canary.rollback", f"hitl: {why}", {
            "challenger": challenger.version, "champion": champion.version, "reason": why,
            "harm": result.get("harm") or [], "expired": bool(result.get("expired")), "stale": bool(result.get("stale"))})
    result["reason"] = why
    return result


def _aware(moment):
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def two_proportion_test(up_a: int, n_a: int, up_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p) for H0: rate_a == rate_b: a fixed-sample test, kept for reports; the canary's
    decisions use `sequential_test` (this one is invalid when looked at repeatedly)."""
    if not n_a or not n_b:
        return 0.0, 1.0
    pooled = (up_a + up_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (up_b / n_b - up_a / n_a) / se
    return z, math.erfc(abs(z) / math.sqrt(2))
