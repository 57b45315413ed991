"""Forgetting guards, both non-inferiority tests against the champion.

General set (`forgetting`): a fixed set of general questions with answer aliases and a one-sentence
reference (evaluators/data/forgetting.jsonl, read through `evaluators.answers`). Both models answer
greedily; an answer is checked with `answers.correct`. The harm is the *net* drop: (answers lost - answers
gained) / answers the champion got right, paired per item. Counting only losses would read churn as
forgetting (a small model's weakly held answers flip both ways under any LoRA update; answers picked for
being right can only get worse), so gains offset losses. The gate passes only when the upper confidence
bound of the net drop is within `answer_margin` and that of the relative loss increase on the references
within `loss_margin`: a drop that is merely "not significant" on a dozen known answers does not pass,
it is insufficient evidence (below `min_n` known answers) or a failure (bound beyond the margin).

Near the training data: the same net drop on the items on the topic of a question the candidate trained on
(`feedback.quality.on_topic`: the item shares at least half of its content words with a train question of the
snapshot, the training set's frequent words aside; anchor rows are held, not taught, and do not count). A
LoRA update moves most what it was trained on, and a diluted loss hides there: 30 corrections teaching wrong
facts can cost a few known answers of a 500-item set. The gate fails when the harm there is established (its
*lower* bound beyond `answer_margin` on at least `result.MIN_BOUND_N` known items); a new domain usually has no
such items, and a few right corrections of general facts rarely lose their neighbours.

Domain set (`domain_forgetting`): the sft.test rows with `lineage.origin == "approved"`, the champion's own
replies that reviewers rated well. The candidate's loss on them may not rise beyond `loss_margin` (upper
bound, bootstrapped over question groups). Not applicable with fewer than `min_n` such rows."""

from collections import defaultdict
from pathlib import Path

import numpy as np

from evaluators import answers
from evaluators import policy as P
from evaluators.context import Context, content_hash, row_group
from evaluators.heldout import nll_columns, token_loss
from evaluators.result import MIN_BOUND_N, EvalResult, bounds, harm_verdict, not_applicable, point, ratio, skipped
from evaluators.scoring import split_sft
from feedback.quality import frequent_words, on_topic, topic_words

NAME, METRIC = "forgetting", "net answer drop on the general set vs champion ((lost - gained) / known)"
DOMAIN, DOMAIN_METRIC = "domain_forgetting", "relative loss increase on approved champion replies (sft.test)"
DEFAULT_SET = answers.DEFAULT_PATH

# statistics over summed columns
net_drop = ratio(lambda s: s[..., 0] - s[..., 1], lambda s: np.maximum(s[..., 2], 1))  # (lost - gained) / known
loss_increase = ratio(lambda s: s[..., 1] - s[..., 0], lambda s: s[..., 0])  # (other - base) / base NLL


def load_items(path: str | None = None, max_examples: int | None = None) -> list[dict]:
    items = list(answers.load_set(path) if path else answers.load_set())
    items = items[:max_examples] if max_examples else items
    return [dict(item, id=str(item.get("id", i))) for i, item in enumerate(items)]


def correctness(ctx: Context, scorer, items: list[dict], max_new_tokens: int,
                guesses: list[str] | None = None) -> tuple[list[bool], list[str]]:
    """Whether each greedy answer of `scorer` is correct, and the answers (cached per version and set);
    `guesses`: another version's answers, to decode faster (`Context.answers`)."""
    replies = ctx.answers(scorer, [item["messages"] for item in items], max_new_tokens, guesses)
    return [answers.correct(item, reply) for item, reply in zip(items, replies)], replies


def churn(base_ok: list[bool], other_ok: list[bool]) -> np.ndarray:
    """Per item: (lost, gained, known by base)."""
    b, o = np.asarray(base_ok, dtype=bool), np.asarray(other_ok, dtype=bool)
    return np.stack([b & ~o, ~b & o, b], axis=1).astype(float).reshape(-1, 3)


def by_category(items: list[dict], **flags: list[bool]) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: {"n": 0, **{k: 0.0 for k in flags}})
    for i, item in enumerate(items):
        row = out[str(item.get("category") or "general")]
        row["n"] += 1
        for key, values in flags.items():
            row[key] += float(values[i])
    return {cat: {"n": row["n"], **{k: row[k] / row["n"] for k in flags}} for cat, row in sorted(out.items())}


def near_training(ctx: Context, items: list[dict]) -> list[int]:
    """Indices of the items on the topic of a question the candidate trained on (the snapshot's train rows)."""
    prompts = [split_sft(r)[0] for r in ctx.split("sft", "train")
               if (r.get("lineage") or {}).get("source") != "anchor"]
    prompts += [r["prompt"] for kind in ("dpo", "kto") for r in ctx.split(kind, "train")]
    topics = [topic_words(p) for p in prompts]
    common = frequent_words(topics)
    topics = list({t - common for t in topics})
    return [i for i, item in enumerate(items) if on_topic(topic_words(item["messages"]) - common, topics)]


def near_verdict(cols: np.ndarray, margin: float, confidence: float) -> dict:
    """The net drop on the items near the training data; `passed` False only when the harm is established."""
    known, lost, gained = (int(cols[:, k].sum()) for k in (2, 0, 1))
    value = point(cols, net_drop) if known else None
    ci = bounds(cols, net_drop, confidence=confidence) if known else None
    failed = known >= MIN_BOUND_N and ci is not None and ci[0] > margin
    verdict = (f"lower bound {ci[0]:.3g} exceeds the margin {margin:g}" if failed else
               f"no established harm ({known} known, lower bound {ci[0]:.3g})" if ci and known >= MIN_BOUND_N else
               f"{known} known items near the training data (a verdict needs {MIN_BOUND_N})")
    return {"items": len(cols), "known": known, "lost": lost, "gained": gained, "net_drop": value,
            "ci": list(ci) if ci else None, "passed": not failed, "verdict": verdict}


def set_hash(items: list[dict], max_new_tokens: int) -> str:
    return content_hash([(i["id"], i["messages"]) for i in items], max_new_tokens)


def _combine(*verdicts: tuple[bool | None, str, str]) -> tuple[bool | None, str]:
    passed = [v[0] for v in verdicts]
    evidence = "insufficient" if any(v[1] == "insufficient" for v in verdicts) else "sufficient"
    if any(p is False for p in passed):
        return False, evidence
    return (True if all(p is True for p in passed) else None), evidence


def run(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(NAME, cfg)
    items = load_items(cfg.path, cfg.max_examples)
    if not items:
        return skipped(NAME, METRIC, "insufficient evidence: no general forgetting set found "
                                     f"({cfg.path or DEFAULT_SET}; set forgetting.path in the gate policy)")
    champ_ok, champ_answers = correctness(ctx, ctx.champion, items, cfg.max_new_tokens)
    cand_ok, cand_answers = correctness(ctx, ctx.candidate, items, cfg.max_new_tokens, champ_answers)
    cols = churn(champ_ok, cand_ok)
    known, lost, gained = int(cols[:, 2].sum()), int(cols[:, 0].sum()), int(cols[:, 1].sum())
    value = point(cols, net_drop)
    ci = bounds(cols, net_drop, confidence=cfg.confidence)
    answers_verdict = harm_verdict(value, ci, cfg.answer_margin, known, cfg.min_n)
    near = near_training(ctx, items)
    near_check = near_verdict(cols[near], cfg.answer_margin, cfg.confidence)
    near_check["lost_prompts"] = [items[i]["messages"][-1]["content"] for i in near if cols[i, 0]][:20]

    refs = [(item["messages"], item["reference"]) for item in items if item.get("reference")]
    loss_value, loss_ci, loss_verdict, cand_loss, champ_loss = None, None, (None, "insufficient", "no references"), None, None
    if refs:
        cand_scores = ctx.losses(ctx.candidate, "general", refs)
        champ_scores = ctx.losses(ctx.champion, "general", refs)
        loss_cols = nll_columns(champ_scores, cand_scores)
        loss_value = point(loss_cols, loss_increase)
        loss_ci = bounds(loss_cols, loss_increase, confidence=cfg.confidence)
        loss_verdict = harm_verdict(loss_value, loss_ci, cfg.loss_margin, len(refs), cfg.min_n)
        cand_loss, champ_loss = token_loss(cand_scores), token_loss(champ_scores)
    passed, evidence = _combine(answers_verdict, loss_verdict)
    if not near_check["passed"]:
        passed = False

    ids = [item["id"] for item in items]
    lost_ids = [ids[i] for i in np.flatnonzero(cols[:, 0])]
    gained_ids = [ids[i] for i in np.flatnonzero(cols[:, 1])]
    cand_acc, champ_acc = float(np.mean(cand_ok)), float(np.mean(champ_ok))
    note = (f"answers: lost {lost} of the {known} the champion knew, gained {gained}: net drop {value:.1%}, "
            f"upper bound {ci[1] if ci else float('nan'):.1%} (margin {cfg.answer_margin:.0%}; {answers_verdict[2]}); "
            f"loss increase {loss_value if loss_value is not None else float('nan'):+.1%}, upper bound "
            f"{loss_ci[1] if loss_ci else float('nan'):+.1%} (margin {cfg.loss_margin:.0%}; {loss_verdict[2]}); "
            f"near the training data: lost {near_check['lost']} of {near_check['known']} known, gained "
            f"{near_check['gained']} ({near_check['verdict']})")
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=cfg.answer_margin, passed=passed, ci=ci,
        candidate=cand_acc, champion=champ_acc, n=known, note=note, evidence=evidence, min_n=cfg.min_n,
        bound=ci[1] if ci else None, confidence=cfg.confidence,
        details={"set": str(cfg.path or DEFAULT_SET), "set_hash": set_hash(items, cfg.max_new_tokens),
                 "items": len(items), "candidate_accuracy": cand_acc, "champion_accuracy": champ_acc,
                 "answers_known_by_champion": known, "answers_lost": lost, "answers_gained": gained,
                 "answer_drop": value, "answer_upper_bound": ci[1] if ci else None, "answer_margin": cfg.answer_margin,
                 "answer_verdict": answers_verdict[2],
                 "loss_increase": loss_value, "loss_ci": list(loss_ci) if loss_ci else None,
                 "loss_margin": cfg.loss_margin, "loss_verdict": loss_verdict[2],
                 "candidate_loss": cand_loss, "champion_loss": champ_loss,
                 "near_training": near_check,
                 "lost_ids": lost_ids, "gained_ids": gained_ids,
                 "lost_prompts": [items[i]["messages"][-1]["content"] for i in np.flatnonzero(cols[:, 0])][:20],
                 "per_category": by_category(items, candidate=cand_ok, champion=champ_ok),
                 "examples": [{"id": ids[i], "champion": champ_answers[i], "candidate": cand_answers[i]}
                              for i in np.flatnonzero(cols[:, 0] + cols[:, 1])][:20]},
    )


def run_domain(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(DOMAIN, cfg)
    rows = ctx.split("sft", "test", cfg.max_examples)
    picked = [i for i, r in enumerate(rows) if (r.get("lineage") or {}).get("origin") == "approved"]
    if len(picked) < cfg.min_n:
        return not_applicable(DOMAIN, DOMAIN_METRIC, f"{len(picked)} approved rows in sft.test (applies from "
                                                     f"{cfg.min_n})")
    items = [split_sft(r) for r in rows]  # the same item set as heldout's: scored once for both
    cand_all = ctx.losses(ctx.candidate, "sft.test", items)
    champ_all = ctx.losses(ctx.champion, "sft.test", items)
    cand, champ = [cand_all[i] for i in picked], [champ_all[i] for i in picked]
    groups = [row_group(rows[i], i) for i in picked]
    cols = nll_columns(champ, cand)
    value = point(cols, loss_increase)
    ci = bounds(cols, loss_increase, groups, confidence=cfg.confidence)
    passed, evidence, verdict = harm_verdict(value, ci, cfg.loss_margin, len(picked), cfg.min_n)
    return EvalResult(
        name=DOMAIN, metric=DOMAIN_METRIC, value=value, threshold=cfg.loss_margin, passed=passed, ci=ci,
        candidate=token_loss(cand), champion=token_loss(champ), n=len(picked), evidence=evidence, min_n=cfg.min_n,
        bound=ci[1] if ci else None, confidence=cfg.confidence, note=verdict,
        details={"rows": len(picked), "groups": len(set(groups))},
        series={"candidate_loss": [-s / max(n, 1) for s, n in cand], "champion_loss": [-s / max(n, 1) for s, n in champ]},
    )
