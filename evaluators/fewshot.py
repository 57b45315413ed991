"""Few-shot baseline: the champion prompted with k reviewer corrections as examples, scored on the same
held-out replies, so the report shows whether fine-tuning beat prompting."""

from evaluators.context import Context
from evaluators.heldout import eval_items, token_loss
from evaluators.result import EvalResult, bootstrap_ci, skipped
from evaluators.scoring import split_sft

NAME, METRIC = "fewshot", "relative loss improvement of the candidate over the k-shot champion"


def shots(ctx: Context, k: int) -> list[dict]:
    """k training examples as alternating turns, reviewer corrections first."""
    rows = ctx.split("sft", "train")
    rows.sort(key=lambda r: not any(str(f).startswith("correction")
                                    for f in (r.get("lineage") or {}).get("feedback_ids", [])))
    turns: list[dict] = []
    for row in rows[:k]:
        context, target = split_sft(row)
        turns += [m for m in context if m["role"] != "system"] + [{"role": "assistant", "content": target}]
    return turns


def with_shots(prompt: list[dict], turns: list[dict]) -> list[dict]:
    system = [m for m in prompt[:1] if m["role"] == "system"]
    return system + turns + prompt[len(system):]


def run(ctx: Context, cfg: dict) -> EvalResult:
    items = eval_items(ctx, cfg)
    turns = shots(ctx, cfg.get("k", 4))
    if not items or not turns:
        return skipped(NAME, METRIC, "needs sft.eval rows and sft.train corrections")
    cand = ctx.losses(ctx.candidate, "sft.eval", items)
    fewshot = ctx.champion.score([(with_shots(p, turns), r) for p, r in items])
    zero = ctx.losses(ctx.champion, "sft.eval", items)

    def improvement(idx=None) -> float:
        base = token_loss(fewshot, idx)
        return (base - token_loss(cand, idx)) / base if base else 0.0

    value = improvement()
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=0.0, passed=value > 0, ci=bootstrap_ci(improvement, len(items)),
        candidate=token_loss(cand), champion=token_loss(fewshot), n=len(items),
        details={"k": len(turns) // 2, "fewshot_loss": token_loss(fewshot), "zero_shot_loss": token_loss(zero),
                 "candidate_loss": token_loss(cand), "fine_tuning_beats_prompting": value > 0},
    )
