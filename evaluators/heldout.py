"""Held-out loss and perplexity on the eval split of corrected and top-rated replies (sft.eval)."""

import math

import numpy as np

from evaluators.context import Context
from evaluators.result import EvalResult, bootstrap_ci, check, skipped
from evaluators.scoring import split_sft

NAME, METRIC = "heldout", "relative loss improvement vs champion"


def eval_items(ctx: Context, cfg: dict) -> list[tuple[list[dict], str]]:
    return [split_sft(row) for row in ctx.split("sft", "eval", cfg.get("max_examples"))]


def token_loss(scores: list[tuple[float, int]], idx: np.ndarray | None = None) -> float:
    arr = np.asarray(scores, dtype=float)
    if idx is not None:
        arr = arr[idx]
    return float(-arr[:, 0].sum() / max(arr[:, 1].sum(), 1))


def run(ctx: Context, cfg: dict) -> EvalResult:
    items = eval_items(ctx, cfg)
    if not items:
        return skipped(NAME, METRIC, "no sft.eval rows in the snapshot")
    cand = ctx.losses(ctx.candidate, "sft.eval", items)
    champ = ctx.losses(ctx.champion, "sft.eval", items)

    def improvement(idx=None) -> float:
        base = token_loss(champ, idx)
        return (base - token_loss(cand, idx)) / base if base else 0.0

    value = improvement()
    ci = bootstrap_ci(improvement, len(items))
    threshold = cfg.get("min_relative_improvement", 0.0)
    passed = check(value, at_least=threshold, ci=ci, ci_lower_min=cfg.get("ci_lower_min"))
    cand_loss, champ_loss = token_loss(cand), token_loss(champ)
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=threshold, passed=passed, ci=ci, candidate=cand_loss,
        champion=champ_loss, n=len(items),
        details={"candidate_perplexity": math.exp(min(cand_loss, 50)), "champion_perplexity": math.exp(min(champ_loss, 50)),
                 "ci_lower_min": cfg.get("ci_lower_min")},
        series={"candidate_loss": [-s / max(n, 1) for s, n in cand], "champion_loss": [-s / max(n, 1) for s, n in champ]},
    )
