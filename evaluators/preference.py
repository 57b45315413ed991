"""Preference accuracy on held-out pairs (dpo.test): does the candidate favour the chosen reply over the
rejected one, and more than the champion does (the DPO implicit reward with the champion as reference)?
Bootstrapped over question groups."""

import numpy as np

from evaluators import policy as P
from evaluators.context import Context, row_group
from evaluators.result import EvalResult, benefit_verdict, bounds, not_applicable, point, ratio, skipped

NAME, METRIC = "preference", "share of pairs where the candidate's chosen-rejected margin beats the champion's"
win_rate = ratio(lambda s: s[..., 0], lambda s: s[..., 1])


def _prompt(row: dict) -> list[dict]:
    prompt = row["prompt"]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _reply(value) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def margins(ctx: Context, scorer, rows: list[dict]) -> np.ndarray:
    chosen = ctx.losses(scorer, "dpo.test.chosen", [(_prompt(r), _reply(r["chosen"])) for r in rows])
    rejected = ctx.losses(scorer, "dpo.test.rejected", [(_prompt(r), _reply(r["rejected"])) for r in rows])
    return np.array([c[0] - r[0] for c, r in zip(chosen, rejected)])


def run(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(NAME, cfg)
    rows = ctx.split("dpo", "test", cfg.max_examples)
    if not rows:
        if not ctx.has_kind("dpo"):
            return not_applicable(NAME, METRIC, "the snapshot holds no DPO pairs")
        return skipped(NAME, METRIC, f"insufficient evidence: no dpo.test pairs (needs {cfg.min_n})")
    groups = [row_group(r, i) for i, r in enumerate(rows)]
    cand, champ = margins(ctx, ctx.candidate, rows), margins(ctx, ctx.champion, rows)
    wins = np.where(cand > champ, 1.0, np.where(cand == champ, 0.5, 0.0))
    cols = np.stack([wins, np.ones_like(wins)], axis=1)
    value = point(cols, win_rate)
    ci = bounds(cols, win_rate, groups, confidence=cfg.confidence)
    passed, evidence, verdict = benefit_verdict(value, ci, cfg.min_win_rate, cfg.lower_bound_min, len(rows), cfg.min_n)
    cand_acc, champ_acc = float((cand > 0).mean()), float((champ > 0).mean())
    if passed and cfg.min_accuracy_delta is not None and cand_acc - champ_acc < cfg.min_accuracy_delta:
        passed, verdict = False, f"accuracy delta {cand_acc - champ_acc:.3g} below {cfg.min_accuracy_delta:g}"
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=cfg.min_win_rate, passed=passed, ci=ci, candidate=cand_acc,
        champion=champ_acc, n=len(rows), evidence=evidence, min_n=cfg.min_n, bound=ci[0] if ci else None,
        confidence=cfg.confidence, note=verdict if passed is not True else "",
        details={"candidate_accuracy": cand_acc, "champion_accuracy": champ_acc, "groups": len(set(groups)),
                 "min_accuracy_delta": cfg.min_accuracy_delta, "mean_margin_gain": float((cand - champ).mean())},
        series={"candidate_margin": cand.tolist(), "champion_margin": champ.tolist()},
    )
