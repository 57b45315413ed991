"""Forgetting / regression guard: a fixed general-instruction set shipped with the project. The candidate's
loss there may not rise, and its greedy answers may not drift from the references, beyond a threshold."""

import re
from collections import Counter
from pathlib import Path

import numpy as np

from evaluators.context import Context
from evaluators.heldout import token_loss
from evaluators.result import EvalResult, bootstrap_ci, check, mean_ci, skipped
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


def token_f1(answer: str, reference: str) -> float:
    a, b = re.findall(r"\w+", answer.lower()), re.findall(r"\w+", reference.lower())
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


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
    n_answers = min(cfg.get("answers", 16), len(items))
    if n_answers:
        prompts, refs = [p for p, _ in items[:n_answers]], [r for _, r in items[:n_answers]]
        max_new = cfg.get("max_new_tokens", 48)
        cand_f1 = np.array([token_f1(a, r) for a, r in zip(ctx.candidate.generate(prompts, max_new), refs)])
        champ_f1 = np.array([token_f1(a, r) for a, r in zip(ctx.champion.generate(prompts, max_new), refs)])
        drop = float(champ_f1.mean() - cand_f1.mean())
        max_drop = cfg.get("max_answer_drop", 0.05)
        details.update(answer_f1_candidate=float(cand_f1.mean()), answer_f1_champion=float(champ_f1.mean()),
                       answer_f1_drop=drop, answer_f1_drop_ci=mean_ci(champ_f1 - cand_f1), max_answer_drop=max_drop,
                       answers=n_answers)
        passed = passed and drop <= max_drop
    return EvalResult(name=NAME, metric=METRIC, value=value, threshold=threshold, passed=passed, ci=ci,
                      candidate=details["candidate_loss"], champion=details["champion_loss"], n=len(items),
                      details=details, series=series)
