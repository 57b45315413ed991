"""Preference accuracy on held-out pairs (dpo.eval): does the candidate favour the chosen reply over the
rejected one, and more than the champion does (the DPO implicit reward with the champion as reference)?"""

import numpy as np

from evaluators.context import Context
from evaluators.result import EvalResult, check, mean_ci, skipped

NAME, METRIC = "preference", "share of pairs where the candidate's chosen-rejected margin beats the champion's"


def _prompt(row: dict) -> list[dict]:
    prompt = row["prompt"]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _reply(value) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def margins(ctx: Context, scorer, rows: list[dict]) -> np.ndarray:
    chosen = ctx.losses(scorer, "dpo.eval.chosen", [(_prompt(r), _reply(r["chosen"])) for r in rows])
    rejected = ctx.losses(scorer, "dpo.eval.rejected", [(_prompt(r), _reply(r["rejected"])) for r in rows])
    return np.array([c[0] - r[0] for c, r in zip(chosen, rejected)])


def run(ctx: Context, cfg: dict) -> EvalResult:
    rows = ctx.split("dpo", "eval", cfg.get("max_examples"))
    if not rows:
        return skipped(NAME, METRIC, "no dpo.eval pairs in the snapshot")
    cand, champ = margins(ctx, ctx.candidate, rows), margins(ctx, ctx.champion, rows)
    wins = np.where(cand > champ, 1.0, np.where(cand == champ, 0.5, 0.0))
    value, ci = float(wins.mean()), mean_ci(wins)
    cand_acc, champ_acc = float((cand > 0).mean()), float((champ > 0).mean())
    threshold = cfg.get("min_relative_accuracy", 0.5)
    passed = check(value, at_least=threshold, ci=ci, ci_lower_min=cfg.get("ci_lower_min"))
    min_delta = cfg.get("min_accuracy_delta")
    if min_delta is not None:
        passed = passed and cand_acc - champ_acc >= min_delta
    return EvalResult(
        name=NAME, metric=METRIC, value=value, threshold=threshold, passed=passed, ci=ci, candidate=cand_acc,
        champion=champ_acc, n=len(rows),
        details={"candidate_accuracy": cand_acc, "champion_accuracy": champ_acc, "min_accuracy_delta": min_delta,
                 "mean_margin_gain": float((cand - champ).mean())},
        series={"candidate_margin": cand.tolist(), "champion_margin": champ.tolist()},
    )
