"""Cumulative drift: the candidate against the lineage's base model (the registry root reached by following
`parent`, or the version pinned as `cumulative.reference`) on the general set's answers. Each promotion is
only compared with its champion, so small losses within each margin could add up over many promotions;
this gate bounds the total: the upper confidence bound of the net drop ((lost - gained) / answers the base
got right) must stay within `budget`, whatever the number of promotions in between."""

import numpy as np

from evaluators import policy as P
from evaluators.context import Context
from evaluators.forgetting import DEFAULT_SET, by_category, churn, correctness, load_items, net_drop, set_hash
from evaluators.result import EvalResult, bounds, harm_verdict, point, skipped

NAME, METRIC = "cumulative", "net answer drop on the general set vs the lineage's base model"


def run(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(NAME, cfg)
    if ctx.reference is None:
        return skipped(NAME, METRIC, "insufficient evidence: no reference (base) model resolved for the lineage")
    max_new = cfg.max_new_tokens or P.section("forgetting").max_new_tokens
    items = load_items(cfg.path, cfg.max_examples)
    if not items:
        return skipped(NAME, METRIC, f"insufficient evidence: no general forgetting set ({cfg.path or DEFAULT_SET})")
    ref_ok, ref_answers = correctness(ctx, ctx.reference, items, max_new)
    cand_ok, _ = correctness(ctx, ctx.candidate, items, max_new, ref_answers)
    cols = churn(ref_ok, cand_ok)
    known, lost, gained = int(cols[:, 2].sum()), int(cols[:, 0].sum()), int(cols[:, 1].sum())
    value = point(cols, net_drop)
    ci = bounds(cols, net_drop, confidence=cfg.confidence)
    passed, evidence, verdict = harm_verdict(value, ci, cfg.budget, known, cfg.min_n)
    cand_acc, ref_acc = float(np.mean(cand_ok)), float(np.mean(ref_ok))
    digest = set_hash(items, max_new)
    trend = [{"version": ctx.reference.version, "accuracy": ref_acc, "source": "measured (reference)"}]
    for ancestor in ctx.ancestry:
        if ancestor["version"] == ctx.reference.version:
            continue
        trend.append({"version": ancestor["version"], "accuracy": ancestor.get("accuracy"),
                      "source": "stored gate report" if ancestor.get("set_hash") in (None, digest)
                      else "stored gate report (other set)"})
    trend.append({"version": ctx.candidate.version, "accuracy": cand_acc, "source": "measured (candidate)"})
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=cfg.budget, passed=passed, ci=ci, candidate=cand_acc,
        champion=ref_acc, n=known, evidence=evidence, min_n=cfg.min_n, bound=ci[1] if ci else None,
        confidence=cfg.confidence,
        note=(f"vs {ctx.reference.version}: lost {lost} of its {known} correct answers, gained {gained}; {verdict}"),
        details={"reference": ctx.reference.version, "reference_accuracy": ref_acc, "candidate_accuracy": cand_acc,
                 "set_hash": digest, "answers_known_by_reference": known, "answers_lost": lost,
                 "answers_gained": gained, "budget": cfg.budget, "trend": trend,
                 "per_category": by_category(items, candidate=cand_ok, reference=ref_ok)},
    )
