"""Optional pairwise judge: a judge model compares champion and candidate replies on held-out prompts, each
pair judged in both orders (position swap; disagreeing orders count as a tie). The gate is a non-inferiority
test: the lower confidence bound of the win rate (bootstrapped over question groups of sft.test) must reach
0.5 - `margin`. The judge's agreement with human comparisons (Cohen's κ) is reported, and below `min_kappa` (or with too
few human comparisons to measure it) the judge is ignored by the gate."""

import math
import os
import re
from collections.abc import Callable

import numpy as np
from sklearn.metrics import cohen_kappa_score
from sqlmodel import Session, select

from evaluators import policy as P
from evaluators.context import Context, row_group
from evaluators.result import EvalResult, bounds, harm_verdict, point, ratio, skipped
from evaluators.scoring import Scorer, split_sft

NAME, METRIC = "judge", "judge win rate of the candidate over the champion (ties count ½)"
Judge = Callable[[list[dict], str, str], str]  # (conversation, reply A, reply B) -> "a" | "b" | "tie"

INSTRUCTIONS = ("You are judging two assistant replies to the same conversation. Decide which reply is more "
                "correct, helpful and appropriate. Answer with exactly one letter: A, B, or T for a tie.")


def judge_messages(conversation: list[dict], first: str, second: str) -> list[dict]:
    shown = "\n".join(f"{m['role']}: {m['content']}" for m in conversation)
    return [{"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": f"Conversation:\n{shown}\n\nReply A:\n{first}\n\nReply B:\n{second}\n\n"
                                        "Which reply is better? Answer A, B or T."}]


def parse_verdict(text: str) -> str:
    match = re.search(r"\b(A|B|T|tie)\b", text.strip(), re.IGNORECASE)
    if not match:
        return "tie"
    letter = match.group(1).lower()
    return {"a": "a", "b": "b"}.get(letter, "tie")


def openai_judge(base_url: str, model: str, api_key: str = "EMPTY") -> Judge:
    """Any OpenAI-compatible endpoint (vLLM, a hosted model, hitl itself)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2)

    def judge(conversation: list[dict], first: str, second: str) -> str:
        reply = client.chat.completions.create(model=model, messages=judge_messages(conversation, first, second),
                                               temperature=0, max_tokens=4)
        return parse_verdict(reply.choices[0].message.content or "")
    return judge


def local_judge(scorer: Scorer) -> Judge:
    """The serving model as judge: the verdict letter it finds most likely."""
    def judge(conversation: list[dict], first: str, second: str) -> str:
        messages = judge_messages(conversation, first, second)
        (a, _), (b, _) = scorer.score([(messages, "A"), (messages, "B")])
        return "a" if a > b + 1e-6 else "b" if b > a + 1e-6 else "tie"
    return judge


def swapped(judge: Judge, conversation: list[dict], x: str, y: str) -> str:
    """'a' when x wins in both orders, 'b' when y does, else 'tie'."""
    first, second = judge(conversation, x, y), judge(conversation, y, x)
    if first == "a" and second == "b":
        return "a"
    if first == "b" and second == "a":
        return "b"
    return "tie"


def agreement(judge: Judge, comparisons: list[dict]) -> tuple[float, int]:
    """Cohen's κ between the judge and human comparisons `{prompt, a, b, choice}`."""
    if not comparisons:
        return math.nan, 0
    human = [c["choice"] for c in comparisons]
    machine = [swapped(judge, c["prompt"], c["a"], c["b"]) for c in comparisons]
    if len(set(human) | set(machine)) < 2:
        return (1.0 if human == machine else math.nan), len(comparisons)
    return float(cohen_kappa_score(human, machine, labels=["a", "b", "tie"])), len(comparisons)


def human_comparisons(session: Session, limit: int = 200) -> list[dict]:
    """Reviewers' pairwise comparisons from the feedback domain, as judge-agreement items."""
    try:
        from feedback.models import Candidate, Comparison
    except ImportError:
        return []
    from service.models import Message
    from service.service import conversation_messages

    items = []
    for comparison in session.exec(select(Comparison).limit(limit)):
        a, b = session.get(Candidate, comparison.candidate_a), session.get(Candidate, comparison.candidate_b)
        message = session.get(Message, comparison.message_id)
        if not (a and b and message):
            continue
        context = [{"role": m.role, "content": m.content}
                   for m in conversation_messages(session, message.conversation_id) if m.position < message.position]
        items.append({"prompt": context, "a": a.content, "b": b.content, "choice": comparison.choice})
    return items


def build_judge(ctx: Context, cfg) -> Judge:
    spec = cfg.judge
    if callable(spec):
        return spec
    if spec == "serving":
        return local_judge(ctx.champion)
    return openai_judge(spec["base_url"], spec["model"], os.environ.get(spec.get("api_key_env", ""), "EMPTY"))


def run(ctx: Context, cfg) -> EvalResult:
    cfg = P.section(NAME, cfg)
    if not cfg.enabled:
        return skipped(NAME, METRIC, "judge disabled in the gate policy", "not_applicable")
    rows = ctx.split("sft", "test", cfg.max_prompts)
    if not rows:
        return skipped(NAME, METRIC, "no held-out prompts (sft.test)")
    judge = build_judge(ctx, cfg)
    prompts = [split_sft(r)[0] for r in rows]
    groups = [row_group(r, i) for i, r in enumerate(rows)]
    cand, champ = ctx.answers(ctx.candidate, prompts, cfg.max_new_tokens), ctx.answers(ctx.champion, prompts, cfg.max_new_tokens)
    verdicts = [swapped(judge, p, c, h) for p, c, h in zip(prompts, cand, champ)]
    scores = np.array([{"a": 1.0, "b": 0.0, "tie": 0.5}[v] for v in verdicts])
    # harm = 0.5 - win rate: its upper bound within `margin` <=> the win rate's lower bound >= 0.5 - margin
    cols = np.stack([scores, np.ones_like(scores)], axis=1)
    harm = ratio(lambda s: 0.5 * s[..., 1] - s[..., 0], lambda s: s[..., 1])
    value = float(scores.mean())
    harm_ci = bounds(cols, harm, groups, confidence=cfg.confidence)
    ci = (0.5 - harm_ci[1], 0.5 - harm_ci[0]) if harm_ci else None
    n_groups = len(set(groups))
    verdict, evidence, why = harm_verdict(point(cols, harm), harm_ci, cfg.margin, n_groups, cfg.min_n)
    kappa, n_human = agreement(judge, ctx.human_comparisons)
    trusted = n_human >= cfg.min_human and not math.isnan(kappa) and kappa >= cfg.min_kappa
    passed = verdict if trusted else None
    note = (why if trusted else f"judge ignored: κ={kappa:.2f} on {n_human} human comparisons "
                                f"(needs κ ≥ {cfg.min_kappa} on ≥ {cfg.min_human})")
    return EvalResult(name=NAME, metric=METRIC, value=value, threshold=0.5 - cfg.margin, passed=passed, ci=ci,
                      n=n_groups, note=note, evidence=evidence, min_n=cfg.min_n, bound=ci[0] if ci else None,
                      confidence=cfg.confidence,
                      details={"kappa": None if math.isnan(kappa) else kappa, "human_comparisons": n_human,
                               "min_kappa": cfg.min_kappa, "trusted": trusted, "margin": cfg.margin,
                               "wins": verdicts.count("a"), "losses": verdicts.count("b"), "ties": verdicts.count("tie")})
