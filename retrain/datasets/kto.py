"""KTO examples: unpaired desirable/undesirable replies from thumbs and ratings (consensus of
reviewers and end users), plus each consensus correction as desirable. TRL's KTO needs both classes."""

from collections import Counter

from retrain.datasets.common import Assessment, Example, Prep, lineage, overall_verdict
from retrain.datasets.schemas import SPLITS


class MissingClassError(ValueError):
    """A KTO set without desirable or without undesirable examples cannot train."""


def build(prep: Prep, assessments: dict[str, Assessment], corrections: dict) -> list[Example]:
    out = []
    for mid, a in assessments.items():
        verdict, state = overall_verdict(prep, a)
        prep.conflict("kto", state)
        if state == "unresolved":
            prep.drop("kto", "conflict_unresolved")
            continue
        if verdict not in ("good", "bad"):
            continue
        ctx = prep.context("kto", mid)
        if ctx is None:
            continue
        row = {"prompt": ctx.prompt, "completion": [ctx.reply()], **ctx.extra(), "label": verdict == "good",
               "lineage": lineage(ctx, a.reviewer_ids + a.user_ids, a.reviewers, via="verdict")}
        out.append(Example("kto", ctx.split, row, mid, ctx.prompt, row["completion"]))
    for mid, resolved in corrections.items():
        if resolved is None:
            continue  # counted once, above (the correction's bad vote makes the reply's verdict)
        ctx = prep.context("kto", mid)
        if ctx is None:
            continue
        content, ids, reviewers = resolved
        row = {"prompt": ctx.prompt, "completion": [{"role": "assistant", "content": prep.text(content)}],
               **ctx.extra(), "label": True, "lineage": lineage(ctx, ids, reviewers, via="correction")}
        out.append(Example("kto", ctx.split, row, f"{mid}:correction", ctx.prompt, row["completion"]))
    return out


def balance(examples: list[Example]) -> dict[str, dict]:
    """Desirable/undesirable counts and the desirable share per split."""
    counts = Counter((e.split, e.row["label"]) for e in examples)
    report = {}
    for split in SPLITS:
        d, u = counts[(split, True)], counts[(split, False)]
        report[split] = {"desirable": d, "undesirable": u, "desirable_share": round(d / (d + u), 4) if d + u else None}
    return report


def check_classes(report: dict[str, dict]) -> None:
    """Refuse a KTO train split that lacks a class, naming it."""
    train = report["train"]
    missing = [name for name in ("desirable", "undesirable") if train[name] == 0]
    if missing:
        labels = {"desirable": "label=true", "undesirable": "label=false"}
        raise MissingClassError("KTO needs desirable and undesirable examples; the train split has no "
                                + " and no ".join(f"{m} ({labels[m]})" for m in missing) + " examples")
