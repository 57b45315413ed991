"""Forgetting / regression guard: a fixed general-instruction set shipped with the project. The candidate's
loss there may not rise beyond a threshold, and it may not answer fewer of the prompts than the champion.

Loss alone misses forgetting: a candidate that learned a terse style can score *lower* loss on short
references while it stops answering questions it knew. The answer check compares what each model says.

It counts the net change (answers lost minus answers gained, over the champion's correct answers) and
fails only when that drop passes `max_answer_drop` *and* the losses significantly outnumber the gains
(one-sided sign test on the prompts where the two models disagree, McNemar's exact test). A small model's
weakly held answers flip both ways under any LoRA update: on 60 general questions SmolLM2-135M answered
27, a run at lr 5e-4 that learned 9 of 25 corrections lost 8 and gained 9, and one at 1.5e-3 that learned
18 lost 6 and gained 9. Counting only the losses among the champion's correct answers reads that churn as
forgetting (those answers were picked for being right, so they can only get worse) and rejects any
candidate on a set of a dozen known prompts."""

import re
from pathlib import Path

from scipy.stats import binomtest

from evaluators.context import Context
from evaluators.heldout import token_loss
from evaluators.result import EvalResult, bootstrap_ci, check, skipped
from evaluators.scoring import read_jsonl, split_sft

NAME, METRIC = "forgetting", "relative loss increase on the general set vs champion"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = (ROOT / "retrain/datasets/data/forgetting.jsonl", ROOT / "retrain/datasets/data/general.jsonl")


def general_set(cfg: dict) -> tuple[Path | None, list[dict]]:
    """The configured set, else the dataset domain's shipped file (its forgetting part when it marks one)."""
    paths = [Path(cfg["path"])] if cfg.get("path") else list(DEFAULT_SETS)
    for path in paths:
        rows = [r for r in read_jsonl(path) if "messages" in r]
        if rows and any("split" in r for r in rows):
            rows = [r for r in rows if r.get("split") in ("forgetting", "eval", "test")]
        if rows:
            return path, rows[: cfg.get("max_examples") or None]
    return None, []


FILLER = frozenset("a an the of is are was were in on at to for and or it its this that by with as be".split())


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if w not in FILLER}


def states(answer: str, prompt: list[dict], reference: str) -> bool | None:
    """Whether `answer` states the reference: at least half the reference's words that the question does not
    already contain appear in it. None when the reference adds no such word (nothing to check)."""
    asked = words(" ".join(m["content"] for m in prompt if m["role"] == "user"))
    facts = words(reference) - asked
    if not facts:
        return None
    return len(facts & words(answer)) >= len(facts) / 2


def run(ctx: Context, cfg: dict) -> EvalResult:
    path, rows = general_set(cfg)
    if not rows:
        return skipped(NAME, METRIC, "no general set found (set forgetting.path in the gate policy)")
    items = [split_sft(r) for r in rows]
    cand = ctx.losses(ctx.candidate, f"general:{path}", items)
    champ = ctx.losses(ctx.champion, f"general:{path}", items)

    def increase(idx=None) -> float:
        base = token_loss(champ, idx)
        return (token_loss(cand, idx) - base) / base if base else 0.0

    value, ci = increase(), bootstrap_ci(increase, len(items))
    threshold = cfg.get("max_relative_loss_increase", 0.05)
    passed = check(value, at_most=threshold, ci=ci, ci_upper_max=cfg.get("ci_upper_max"))

    details: dict = {"set": str(path), "candidate_loss": token_loss(cand), "champion_loss": token_loss(champ)}
    series = {"candidate_loss": [-s / max(n, 1) for s, n in cand], "champion_loss": [-s / max(n, 1) for s, n in champ]}
    note, n_answers = "", min(cfg.get("answers", 64), len(items))
    if n_answers:
        prompts, refs = [p for p, _ in items[:n_answers]], [r for _, r in items[:n_answers]]
        max_new = cfg.get("max_new_tokens", 48)
        champ_ok = [states(a, p, r) for a, p, r in zip(ctx.champion.generate(prompts, max_new), prompts, refs)]
        cand_ok = [states(a, p, r) for a, p, r in zip(ctx.candidate.generate(prompts, max_new), prompts, refs)]
        known = [i for i, ok in enumerate(champ_ok) if ok]
        lost = [i for i in known if not cand_ok[i]]
        gained = [i for i, ok in enumerate(cand_ok) if ok and not champ_ok[i]]
        drop = (len(lost) - len(gained)) / len(known) if known else 0.0
        max_drop, alpha = cfg.get("max_answer_drop", 0.05), cfg.get("answer_alpha", 0.05)
        p_value = binomtest(len(lost), len(lost) + len(gained), alternative="greater").pvalue if lost else 1.0
        forgot = drop > max_drop and p_value < alpha
        details.update(answers=n_answers, answers_known_by_champion=len(known), answers_lost=len(lost),
                       answers_gained=len(gained), answer_drop=drop, max_answer_drop=max_drop,
                       answer_p_value=p_value, answer_alpha=alpha,
                       lost_prompts=[prompts[i][-1]["content"] for i in lost][:20],
                       gained_prompts=[prompts[i][-1]["content"] for i in gained][:20])
        passed = passed and not forgot
        note = (f"answers: the candidate lost {len(lost)} of the {len(known)} prompts the champion answered and "
                f"gained {len(gained)}: net drop {drop:.0%} (at most {max_drop:.0%}), sign test p = {p_value:.2f} "
                f"({'losses outnumber gains' if p_value < alpha else 'not more losses than churn explains'} "
                f"at {alpha:g})")
    return EvalResult(name=NAME, metric=METRIC, value=value, threshold=threshold, passed=passed, ci=ci,
                      candidate=details["candidate_loss"], champion=details["champion_loss"], n=len(items),
                      note=note, details=details, series=series)
