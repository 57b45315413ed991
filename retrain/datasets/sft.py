"""SFT examples: the conversation up to a reply + the consensus correction, or + the reply itself
when reviewers agree it is good (every rubric dimension ≥ threshold, or a reviewer's thumbs up) and it
was not cut off by max_tokens (training on it would teach the model to stop mid-sentence).

Tool calls keep TRL's tool-calling format (`common.Prep.message`), with the request's `tools` on the row.
`lineage.origin` says which: "correction" (a reviewer's rewrite is the target) or "approved" (the
top-rated reply kept as is)."""

from retrain.datasets.common import Assessment, Example, Prep, lineage, reviewer_verdict


def build(prep: Prep, assessments: dict[str, Assessment], corrections: dict) -> list[Example]:
    out = []
    for mid, resolved in corrections.items():
        if resolved is None:
            prep.drop("sft", "conflict_unresolved")
            continue
        ctx = prep.context("sft", mid)
        if ctx is None:
            continue
        content, ids, reviewers = resolved
        row = {"messages": ctx.prompt + [{"role": "assistant", "content": prep.text(content)}], **ctx.extra(),
               "lineage": lineage(ctx, ids, reviewers, via="correction", origin="correction")}
        out.append(Example("sft", ctx.split, row, mid, ctx.prompt, row["messages"][-1:]))
    for mid, a in assessments.items():
        if mid in corrections or (not a.reviewer_votes and a.adjudicated is None):
            continue  # corrected replies train on their correction; end-user thumbs alone do not make SFT
        verdict, state = reviewer_verdict(prep, a)
        prep.conflict("sft", state)
        if state == "unresolved":
            prep.drop("sft", "conflict_unresolved")
            continue
        if verdict != "good":
            continue
        ctx = prep.context("sft", mid)
        if ctx is None:
            continue
        if prep.store.turn(mid).finish_reason == "length":
            prep.drop("sft", "truncated")
            continue
        row = {"messages": ctx.prompt + [ctx.reply()], **ctx.extra(),
               "lineage": lineage(ctx, a.reviewer_ids, a.reviewers, via="top_rated", origin="approved")}
        out.append(Example("sft", ctx.split, row, mid, ctx.prompt, row["messages"][-1:]))
    return out
