"""Anchor rows: recent replies the champion served that nobody faulted, from the train split only.

Served replies are grouped by question like every other context (split.py), so an anchor's question
group is a train group: it never shares a group (nor, through the conversation link, a conversation)
with validation or test rows.

They are never a training target. Training holds the candidate's next-token distributions to the
champion's on them (`sft.anchor_weight`), so that learning the corrections does not move what the model
already answers well. A reply is left out when it was corrected, judged bad (reviewers and end users
together), flagged with an excluded tag, deleted, or when its question is on the topic of an SFT example: the same
prompt, or a rewording that shares at least half of its content words, the domain's frequent words aside
("Which startup files does zsh read?" beside the correction of "What startup files does zsh use?"). Such an anchor would hold the
champion's old answer while the example teaches the new one: in a harness run, 19 served paraphrases of
corrected zsh questions became anchors and the candidate learned 13 of 21 corrections.
"""

from feedback.quality import frequent_words, on_topic, topic_words
from retrain.datasets.common import Assessment, Example, Prep, lineage, overall_verdict


def build(prep: Prep, assessments: dict[str, Assessment], corrections: dict, sft: list[Example],
          limit: int) -> list[Example]:
    faulted = set(corrections) | {mid for mid, a in assessments.items() if overall_verdict(prep, a)[0] == "bad"}
    taken = {prep.prompt_key(e.prompt) for e in sft}
    topics = [topic_words(e.prompt) for e in sft]
    common = frequent_words(topics)
    topics = list({t - common for t in topics})
    out: list[Example] = []
    for mid in prep.store.served:
        if len(out) >= limit:
            break
        ctx = prep.peek(mid)
        if mid in faulted or ctx is None or ctx.split != "train" or prep.prompt_key(ctx.prompt) in taken:
            continue
        if on_topic(topic_words(ctx.prompt) - common, topics):
            continue
        taken.add(prep.prompt_key(ctx.prompt))
        row = {"messages": ctx.prompt + [ctx.reply()], **ctx.extra(),
               "lineage": lineage(ctx, [], [], source="anchor")}
        out.append(Example("sft", "train", row, f"anchor:{mid}", ctx.prompt, row["messages"][-1:]))
    return out
