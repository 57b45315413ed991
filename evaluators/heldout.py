"""Held-out loss and perplexity on the test split of corrected and top-rated replies (sft.test), paired per
row and bootstrapped over question groups (`lineage.group`)."""

import math

import numpy as np

from evaluators import policy as P
from evaluators.context import Context, row_group
from evaluators.result import EvalResult, benefit_verdict, bounds, not_applicable, point, ratio, skipped
from evaluators.scoring import split_sft

NAME, METRIC = "heldout", "relative loss improvement vs champion"


def test_rows(ctx: Context, max_examples: int | None) -> list[dict]:
    return ctx.split("sft", "test", max_examples)


def eval_items(ctx: Context, cfg) -> list[tuple[list[dict], str]]:
    return [split_sft(row) for row in test_rows(ctx, P.section(NAME, cfg).max_examples)]


def token_loss(scores: list[tuple[float, int]], idx: np.ndarray | None = None) -> float:
    arr = np.asarray(scores, dtype=float)
    if idx is not None:
        arr = arr[idx]
    return float(-arr[:, 0].sum() / max(arr[:, 1].sum(), 1))


def nll_columns(base: list[tuple[float, int]], other: list[tuple[float, int]]) -> np.ndarray:
    """Per item: (base NLL, other NLL); both models score the same reply tokens."""
    return np.array([[-b[0], -o[0]] for b, o in zip(base, other)], dtype=float).reshape(-1, 2)


# (base NLL - other NLL) / base NLL over the summed columns: the relative improvement of `other`
improvement = ratio(lambda s: s[..., 0] - s[..., 1], lambda s: s[..., 0])


def run(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(NAME, cfg)
    rows = test_rows(ctx, cfg.max_examples)
    if not rows:
        if not ctx.has_kind("sft"):
            return not_applicable(NAME, METRIC, "the snapshot holds no SFT rows (nothing was fine-tuned on replies)")
        return skipped(NAME, METRIC, f"insufficient evidence: no sft.test rows (needs {cfg.min_n} groups)")
    items = [split_sft(r) for r in rows]
    groups = [row_group(r, i) for i, r in enumerate(rows)]
    n_groups = len(set(groups))
    cand = ctx.losses(ctx.candidate, "sft.test", items)
    champ = ctx.losses(ctx.champion, "sft.test", items)
    cols = nll_columns(champ, cand)
    value = point(cols, improvement)
    ci = bounds(cols, improvement, groups, confidence=cfg.confidence)
    passed, evidence, verdict = benefit_verdict(value, ci, cfg.min_relative_improvement, cfg.lower_bound_min,
                                                n_groups, cfg.min_n)
    cand_loss, champ_loss = token_loss(cand), token_loss(champ)
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=cfg.min_relative_improvement, passed=passed, ci=ci,
        candidate=cand_loss, champion=champ_loss, n=n_groups, evidence=evidence, min_n=cfg.min_n,
        bound=ci[0] if ci else None, confidence=cfg.confidence,
        note=verdict if passed is not True else "",
        details={"candidate_perplexity": math.exp(min(cand_loss, 50)), "champion_perplexity": math.exp(min(champ_loss, 50)),
                 "rows": len(rows), "groups": n_groups, "lower_bound_min": cfg.lower_bound_min},
        series={"candidate_loss": [-s / max(n, 1) for s, n in cand], "champion_loss": [-s / max(n, 1) for s, n in champ]},
    )
