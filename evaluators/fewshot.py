"""Few-shot baseline: the champion prompted with k reviewer corrections as examples, scored on the same
held-out replies (sft.test), so the report shows whether fine-tuning beat prompting. Informative only:
it never blocks a promotion. Bootstrapped over question groups."""

from evaluators import policy as P
from evaluators.context import Context, row_group
from evaluators.heldout import improvement, nll_columns, test_rows, token_loss
from evaluators.result import EvalResult, bounds, point, skipped
from evaluators.scoring import split_sft

NAME, METRIC = "fewshot", "relative loss improvement of the candidate over the k-shot champion"


def _is_correction(row: dict) -> bool:
    lineage = row.get("lineage") or {}
    return lineage.get("origin") == "correction" or any(
        str(f).startswith("correction") for f in lineage.get("feedback_ids", []))


def shots(ctx: Context, k: int) -> list[dict]:
    """k training examples as alternating turns, reviewer corrections first."""
    rows = ctx.split("sft", "train")
    rows.sort(key=lambda r: not _is_correction(r))
    turns: list[dict] = []
    for row in rows[:k]:
        context, target = split_sft(row)
        turns += [m for m in context if m["role"] != "system"] + [{"role": "assistant", "content": target}]
    return turns


def with_shots(prompt: list[dict], turns: list[dict]) -> list[dict]:
    system = [m for m in prompt[:1] if m["role"] == "system"]
    return system + turns + prompt[len(system):]


def run(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(NAME, cfg)
    rows = test_rows(ctx, P.section("heldout").max_examples)
    turns = shots(ctx, cfg.k)
    if not rows or not turns:
        return skipped(NAME, METRIC, "needs sft.test rows and sft.train corrections", "not_applicable")
    items = [split_sft(r) for r in rows]
    groups = [row_group(r, i) for i, r in enumerate(rows)]
    cand = ctx.losses(ctx.candidate, "sft.test", items)
    fewshot = ctx.losses(ctx.champion, f"sft.test+{cfg.k}shot", [(with_shots(p, turns), r) for p, r in items])
    zero = ctx.losses(ctx.champion, "sft.test", items)
    cols = nll_columns(fewshot, cand)
    value = point(cols, improvement)
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=0.0, passed=value > 0,
        ci=bounds(cols, improvement, groups, confidence=cfg.confidence), confidence=cfg.confidence,
        candidate=token_loss(cand), champion=token_loss(fewshot), n=len(set(groups)),
        details={"k": len(turns) // 2, "fewshot_loss": token_loss(fewshot), "zero_shot_loss": token_loss(zero),
                 "candidate_loss": token_loss(cand), "fine_tuning_beats_prompting": value > 0},
    )
