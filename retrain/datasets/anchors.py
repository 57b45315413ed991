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

from collections import Counter

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from feedback.quality import tokens
from retrain.datasets.common import Assessment, Example, Prep, lineage, overall_verdict

TOPIC_SHARE = 0.5  # an anchor sharing this share of its content words with an SFT example's question is left out


def topic_words(prompt: list[dict]) -> frozenset[str]:
    """Content words of a prompt's last user turn (English stop words and single characters dropped)."""
    text = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    return frozenset(w for w in tokens(text) if len(w) > 1 and w not in ENGLISH_STOP_WORDS)


def frequent_words(topics: list[frozenset[str]], share: float = 0.25, at_least: int = 3) -> frozenset[str]:
    """Words in at least `share` of the examples' questions (and `at_least` of them): the domain's or a
    template's words ("zsh", "tell ... please"), which say nothing about which question it is."""
    counts = Counter(w for t in topics for w in t)
    return frozenset(w for w, n in counts.items() if n >= max(at_least, share * len(topics)))


def on_topic(words: frozenset[str], topics: list[frozenset[str]]) -> bool:
    return bool(words) and any(len(words & t) >= TOPIC_SHARE * len(words) for t in topics)


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
        row = {"messages": ctx.prompt + [{"role": "assistant", "content": ctx.target}],
               "lineage": lineage(ctx, [], [], source="anchor")}
        out.append(Example("sft", "train", row, f"anchor:{mid}", ctx.prompt, row["messages"][-1:]))
    return out
