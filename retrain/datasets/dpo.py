"""DPO pairs: correction (chosen) vs original (rejected); pairwise comparisons of candidates; and
two rated replies to the same context whose consensus mean scores differ by at least a margin. A reply's tool
calls stay on its turn (TRL's tool-calling format) and the request's `tools` on the row."""

from collections import defaultdict

from retrain.datasets.cleaning import normalize
from retrain.datasets.common import (
    Assessment, Example, Prep, consensus, latest_votes, lineage, mean_score, reviewer_verdict,
)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def build(prep: Prep, assessments: dict[str, Assessment], corrections: dict) -> list[Example]:
    return _from_corrections(prep, corrections) + _from_comparisons(prep) + _from_rating_gaps(prep, assessments)


def _from_corrections(prep: Prep, corrections: dict) -> list[Example]:
    out = []
    for mid, resolved in corrections.items():
        if resolved is None:
            prep.drop("dpo", "conflict_unresolved")
            continue
        ctx = prep.context("dpo", mid)
        if ctx is None:
            continue
        content, ids, reviewers = resolved
        chosen = prep.text(content)
        if normalize(chosen) == normalize(ctx.target) and not ctx.target_calls:
            prep.drop("dpo", "correction_unchanged")
            continue
        row = {"prompt": ctx.prompt, "chosen": _assistant(chosen), "rejected": [ctx.reply()], **ctx.extra(),
               "lineage": lineage(ctx, ids, reviewers, via="correction")}
        out.append(Example("dpo", ctx.split, row, mid))
    return out


def _from_comparisons(prep: Prep) -> list[Example]:
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for row in latest_votes(prep.store.comparisons, "comparison"):
        _id, mid, _reviewer, a, b, _choice = row
        groups[(mid, min(a, b), max(a, b))].append(row)
    out = []
    for (mid, lo, hi), rows in sorted(groups.items()):
        votes = []
        for _id, _mid, reviewer, a, b, choice in rows:
            label = "tie" if choice == "tie" else (a if choice == "a" else b)
            votes.append((label, prep.weight(reviewer)))
        winner, state = consensus(votes, prep.options.min_agreement)
        prep.conflict("dpo", state)
        if winner is None:
            prep.drop("dpo", "conflict_unresolved")
            continue
        if winner == "tie":
            prep.drop("dpo", "comparison_tie")
            continue
        if lo not in prep.store.candidates or hi not in prep.store.candidates:
            prep.drop("dpo", "missing_candidate")
            continue
        ctx = prep.context("dpo", mid)
        if ctx is None:
            continue
        loser = hi if winner == lo else lo
        chosen = prep.text(prep.store.candidates[winner][1])
        rejected = prep.text(prep.store.candidates[loser][1])
        if normalize(chosen) == normalize(rejected):
            prep.drop("dpo", "identical_pair")
            continue
        ids = [f"comparison:{r[0]}" for r in rows]
        row = {"prompt": ctx.prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected), **ctx.extra(),
               "lineage": lineage(ctx, ids, (r[2] for r in rows), via="comparison",
                                  candidate_ids=[winner, loser])}
        out.append(Example("dpo", ctx.split, row, f"{mid}:{lo}:{hi}"))
    return out


def _from_rating_gaps(prep: Prep, assessments: dict[str, Assessment]) -> list[Example]:
    """Pairs the best-scored reply of each (split, identical context) group with every reply scored
    at least `dpo_rating_margin` lower. Replies in conflict or excluded are not paired."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for mid, a in assessments.items():
        if not a.rating_ids or reviewer_verdict(prep, a)[1] == "unresolved":
            continue
        score = mean_score(prep, a)
        ctx = prep.peek(mid)
        if score is None or ctx is None:
            continue
        groups[(ctx.split, prep.prompt_key(ctx.prompt))].append((-score, mid, ctx, a))
    out = []
    for _key, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        members.sort(key=lambda m: (m[0], m[1]))
        best_score, best_mid, best, best_a = members[0]
        for score, mid, ctx, a in members[1:]:
            if score - best_score < prep.options.dpo_rating_margin or normalize(best.said()) == normalize(ctx.said()):
                continue
            row = {"prompt": best.prompt, "chosen": [best.reply()], "rejected": [ctx.reply()], **best.extra(),
                   "lineage": lineage(best, best_a.rating_ids + a.rating_ids, best_a.reviewers | a.reviewers,
                                      via="rating_gap", rejected_message_id=mid,
                                      rejected_conversation_id=ctx.conversation_id,
                                      score_gap=round(score - best_score, 3))}
            out.append(Example("dpo", best.split, row, f"{best_mid}:{mid}"))
    return out
