"""Anchor rows: recent replies the champion served that nobody faulted, from the train split only.

Served replies are grouped by question like every other context (split.py), so an anchor's question
group is a train group: it never shares a group (nor, through the conversation link, a conversation)
with validation or test rows.

They are never a training target. Training holds the candidate's next-token distributions to the
champion's on them (`sft.anchor_weight`), so that learning the corrections does not move what the model
already answers well. A reply is left out when it was corrected, judged bad (reviewers and end users
together), flagged with an excluded tag, deleted, or when its prompt is also the prompt of a training
example (the anchor would pull against the example).
"""

from retrain.datasets.common import Assessment, Example, Prep, lineage, overall_verdict


def build(prep: Prep, assessments: dict[str, Assessment], corrections: dict, sft: list[Example],
          limit: int) -> list[Example]:
    faulted = set(corrections) | {mid for mid, a in assessments.items() if overall_verdict(prep, a)[0] == "bad"}
    taken = {prep.prompt_key(e.prompt) for e in sft}
    out: list[Example] = []
    for mid in prep.store.served:
        if len(out) >= limit:
            break
        ctx = prep.peek(mid)
        if mid in faulted or ctx is None or ctx.split != "train" or prep.prompt_key(ctx.prompt) in taken:
            continue
        taken.add(prep.prompt_key(ctx.prompt))
        row = {"messages": ctx.prompt + [{"role": "assistant", "content": ctx.target}],
               "lineage": lineage(ctx, [], [], source="anchor")}
        out.append(Example("sft", "train", row, f"anchor:{mid}", ctx.prompt, row["messages"][-1:]))
    return out
