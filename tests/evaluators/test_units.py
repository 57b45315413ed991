"""Evaluator pieces without a database: thresholds, CIs, golden checks, the judge, the canary test, the policy."""

import json
import math

import numpy as np
import pytest

from evaluators import canary, forgetting, gate, golden, judge
from evaluators.context import Context
from evaluators.result import EvalResult, check, mean_ci
from tests.evaluators.conftest import forgetting_item


class StubScorer:
    """Answers from a table; `score` prefers the reply named in `likes`."""

    def __init__(self, version: str, answers: dict[str, str] | None = None, likes: str = "A"):
        self.version, self.answers, self.likes = version, answers or {}, likes

    def generate(self, prompts, max_new_tokens=64, guesses=None):
        return [self.answers.get(p[-1]["content"], "") for p in prompts]

    def score(self, items):
        return [(0.0 if reply == self.likes else -1.0, 1) for _, reply in items]


def test_check_thresholds_and_ci_bounds():
    assert check(0.2, at_least=0.1) and not check(0.05, at_least=0.1)
    assert check(0.03, at_most=0.05) and not check(0.06, at_most=0.05)
    assert check(0.2, at_least=0.0, ci=(0.01, 0.3), ci_lower_min=0.0)
    assert not check(0.2, at_least=0.0, ci=(-0.01, 0.3), ci_lower_min=0.0)
    assert not check(0.2, at_least=0.0, ci=None, ci_lower_min=0.0)
    assert not check(None, at_least=0.0) and not check(math.nan, at_most=1.0)


def test_bootstrap_ci_brackets_the_mean():
    values = np.random.default_rng(1).normal(1.0, 0.5, 400)
    lo, hi = mean_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.2
    assert mean_ci([1.0]) is None


def test_golden_verdicts():
    prompt = {"must_contain": ["Paris"], "must_not_contain": ["London"], "refusal": False}
    assert golden.verdict(prompt, "It is Paris.") == []
    assert golden.verdict(prompt, "London or paris") == ["contains 'London'"]
    assert golden.verdict(prompt, "I'm sorry, I cannot say. Paris") == ["refused"]
    assert golden.verdict({"must_contain": [], "must_not_contain": [], "refusal": True}, "Sure!") == ["did not refuse"]


def test_shipped_golden_file_loads():
    prompts = golden.load_prompts()
    assert len(prompts) >= 4 and any(p["refusal"] is True for p in prompts)
    assert all(p["messages"][-1]["role"] == "user" for p in prompts)


def test_golden_regression_fails_the_gate(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("- {id: a, prompt: 'capital?', must_contain: [Paris]}\n- {id: b, prompt: hi, must_contain: [hello]}\n")
    champion = StubScorer("champ", {"capital?": "Paris.", "hi": "nope"})
    worse = StubScorer("cand", {"capital?": "Lyon.", "hi": "hello"})
    result = golden.run(Context(candidate=worse, champion=champion), {"path": str(path)})
    assert result.passed is False and result.details["regressions"] == ["a"] and result.value == 0.5
    assert result.note == "regressed: a (at most 0)"  # the gate's reason names the prompt
    same = golden.run(Context(candidate=champion, champion=worse), {"path": str(path)})
    assert same.details["regressions"] == ["b"]
    tolerant = golden.run(Context(candidate=worse, champion=champion), {"path": str(path), "max_regressions": 1})
    assert tolerant.passed is True


def _general(tmp_path, facts: dict[str, str]):
    path = tmp_path / "general.jsonl"
    rows = [forgetting_item(i, q, [a], f"It is {a}.") for i, (q, a) in enumerate(facts.items())]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_forgetting_gate_catches_lost_answers_that_loss_misses(tmp_path):
    facts = {"What is the capital of France?": "Paris", "Who wrote Hamlet?": "Shakespeare",
             "What do bees make?": "Honey", "Which planet is the Red Planet?": "Mars",
             "Who painted the Mona Lisa?": "Leonardo", "What is the largest ocean?": "Pacific", "Hi!": "Hello"}
    path = _general(tmp_path, facts)
    asked = list(facts)[:6]
    champion = StubScorer("champ", {q: f"It is {facts[q]}." for q in asked[:5]})  # knows 5 of 6
    terse = StubScorer("cand", {q: "Nixon." for q in asked[:5]} | {asked[5]: "Atlantic."})
    cfg = {"path": str(path), "min_n": 3}
    result = forgetting.run(Context(candidate=terse, champion=champion), cfg)
    assert result.details["loss_increase"] == 0.0  # both stubs score every reply alike: the loss check alone passes
    assert result.details["answers_known_by_champion"] == 5 and result.details["answers_lost"] == 5
    assert result.details["answers_gained"] == 0 and result.value == 1.0
    assert result.details["lost_ids"] == ["q0", "q1", "q2", "q3", "q4"]
    assert result.passed is False and result.bound > 0.10
    assert forgetting.run(Context(candidate=champion, champion=champion), cfg).passed is True


def test_forgetting_reports_per_category_accuracy(tmp_path):
    path = tmp_path / "general.jsonl"
    rows = [forgetting_item(0, "Capital of Peru?", ["Lima"], "Lima.", "capital"),
            forgetting_item(1, "2+2?", ["4"], "4.", "arithmetic"),
            forgetting_item(2, "How do I pick a lock?", [], "I can't help with that.", "refusal", refusal=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    champion = StubScorer("champ", {"Capital of Peru?": "Lima.", "How do I pick a lock?": "I'm sorry, I can't."})
    candidate = StubScorer("cand", {"Capital of Peru?": "Lima.", "2+2?": "4"})
    result = forgetting.run(Context(candidate=candidate, champion=champion), {"path": str(path), "min_n": 1})
    cats = result.details["per_category"]
    assert cats["capital"] == {"n": 1, "candidate": 1.0, "champion": 1.0}
    assert cats["refusal"]["champion"] == 1.0 and cats["refusal"]["candidate"] == 0.0
    assert result.details["lost_ids"] == ["q2"] and result.details["gained_ids"] == ["q1"]


def test_position_swap_turns_a_biased_judge_into_ties():
    always_first = lambda conversation, a, b: "a"  # noqa: E731
    assert judge.swapped(always_first, [], "x", "y") == "tie"
    prefers_long = lambda conversation, a, b: "a" if len(a) > len(b) else "b"  # noqa: E731
    assert judge.swapped(prefers_long, [], "longer", "s") == "a"
    assert judge.swapped(prefers_long, [], "s", "longer") == "b"


def _human(n: int, agree: bool) -> list[dict]:
    items = []
    for i in range(n):
        long_, short = "a much longer reply " * (1 + i % 3), "short"
        human = "a" if (i % 2 == 0) == agree else "b"
        items.append({"prompt": [{"role": "user", "content": f"q{i}"}], "a": long_ if i % 2 == 0 else short,
                      "b": short if i % 2 == 0 else long_, "choice": human})
    return items


def test_judge_is_trusted_only_above_kappa(snapshot_rows):
    prefers_long = lambda conversation, a, b: "a" if len(a) > len(b) else "b"  # noqa: E731
    candidate = StubScorer("cand", {p: "a long and careful answer" for p in snapshot_rows})
    champion = StubScorer("champ", {p: "meh" for p in snapshot_rows})
    cfg = {"enabled": True, "judge": prefers_long, "min_kappa": 0.4, "min_human": 10, "min_n": 4}

    kappa, n = judge.agreement(prefers_long, _human(12, agree=True))
    assert n == 12 and kappa == pytest.approx(1.0)
    trusted = judge.run(_ctx(candidate, champion, _human(12, agree=True)), cfg)
    assert trusted.passed is True and trusted.value == 1.0 and trusted.details["trusted"]

    ignored = judge.run(_ctx(candidate, champion, _human(12, agree=False)), cfg)
    assert ignored.details["kappa"] < 0.4 and ignored.passed is None and "ignored" in ignored.note
    too_few = judge.run(_ctx(candidate, champion, _human(4, agree=True)), cfg)
    assert too_few.passed is None


def _ctx(candidate, champion, human):
    ctx = Context(candidate=candidate, champion=champion, human_comparisons=human)
    ctx.split = lambda kind, split, limit=None: [  # type: ignore[method-assign]
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}]}
        for p in ("q1", "q2", "q3", "q4")]
    return ctx


@pytest.fixture
def snapshot_rows():
    return ["q1", "q2", "q3", "q4"]


def test_local_judge_reads_the_letter_the_model_prefers():
    verdict = judge.local_judge(StubScorer("j", likes="B"))
    assert verdict([{"role": "user", "content": "q"}], "x", "y") == "b"
    assert judge.parse_verdict("B.") == "b" and judge.parse_verdict("Tie") == "tie"
    assert judge.parse_verdict("nonsense") == "tie"


def test_two_proportion_test_matches_the_textbook_value():
    z, p = canary.two_proportion_test(40, 100, 60, 100)
    assert z == pytest.approx(2.8284, abs=1e-3) and p == pytest.approx(0.00468, abs=1e-4)
    assert canary.two_proportion_test(0, 0, 1, 1) == (0.0, 1.0)


def test_required_evaluator_without_data_is_insufficient_evidence_and_a_failure_rejects():
    policy = gate.load_policy()
    ran = EvalResult("heldout", "m", 0.3, 0.0, True)
    missing = EvalResult("preference", "m", None, note="no dpo.test pairs", evidence="insufficient")
    outcome, reasons = gate.decide([ran, missing], policy | {"required": ["heldout", "preference"]})
    assert outcome == "insufficient_evidence" and reasons == ["preference: insufficient evidence (no dpo.test pairs)"]
    assert gate.decide([ran], policy | {"required": ["heldout"]}) == ("passed", [])
    optional_fail = EvalResult("judge", "m", 0.2, 0.5, False)
    assert gate.decide([ran, optional_fail], policy | {"required": ["heldout"]})[0] == "failed"
    failed = EvalResult("forgetting", "m", 0.3, 0.1, False)
    outcome, reasons = gate.decide([ran, missing, failed], policy | {"required": ["heldout", "preference", "forgetting"]})
    assert outcome == "failed" and reasons[0].startswith("forgetting:")  # a failure outranks missing evidence
    absent = EvalResult("preference", "m", None, evidence="not_applicable", note="no DPO pairs")
    assert gate.decide([ran, absent], policy | {"required": ["heldout", "preference"]}) == ("passed", [])


def test_policy_file_overrides_the_default(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("required: [heldout]\nforgetting: {answer_margin: 0.01}\n")
    policy = gate.load_policy(path)
    assert policy["required"] == ["heldout"]
    assert policy["forgetting"]["answer_margin"] == 0.01
    assert policy["forgetting"]["loss_margin"] == 0.05  # untouched keys keep their defaults
    path.write_text("forgetting: {max_answer_drop: 0.01}\n")  # a key the policy does not know
    with pytest.raises(ValueError, match="max_answer_drop"):
        gate.load_policy(path)


def test_canary_job_is_off_unless_the_policy_enables_it(monkeypatch, tmp_path):
    from core.settings import get_settings
    from evaluators.tasks import canary_job

    monkeypatch.setenv("HITL_GATE_POLICY", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("canary: {enabled: false}\n")
    get_settings.cache_clear()
    try:
        assert canary_job() == {"decision": "disabled"}
    finally:
        get_settings.cache_clear()


def test_an_unchanged_candidate_does_no_harm_on_heldout_but_is_not_measurably_better():
    from evaluators import heldout

    same = StubScorer("x")
    ctx = Context(candidate=same, champion=StubScorer("y"))
    ctx.split = lambda kind, split, limit=None: [  # type: ignore[method-assign]
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "B"}]} for i in range(8)]
    policy = gate.load_policy()["heldout"]
    result = heldout.run(ctx, policy)  # the default is a non-inferiority bound; the benefit is preference's
    assert result.value == 0.0 and result.passed is True
    assert heldout.run(ctx, {**policy, "min_relative_improvement": 0.01}).passed is False


def test_forgetting_fails_on_answers_lost_near_the_training_questions(tmp_path):
    """A diluted loss: 6 of 206 known answers (within the whole set's margin) but all of those on the topic
    of the snapshot's train questions, as when corrections teach wrong general facts."""
    facts = {f"What is {a} plus {b}?": str(a + b) for a in range(10, 30) for b in range(40, 50)}
    poisoned = {f"What is the capital of {c}?": c.upper() for c in ("Aland", "Borduria", "Carpania", "Dorland",
                                                                   "Elbonia", "Freedonia")}
    path = _general(tmp_path, facts | poisoned)
    champion = StubScorer("champ", {q: f"It is {a}." for q, a in (facts | poisoned).items()})
    candidate = StubScorer("cand", {q: f"It is {a}." for q, a in facts.items()} | {q: "Berlin." for q in poisoned})
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Berlin."}],
             "lineage": {"group": q}} for q in poisoned]
    rows.append({"messages": [{"role": "user", "content": "What is 12 minus 5?"}, {"role": "assistant", "content": "7"}],
                 "lineage": {"group": "anchor", "source": "anchor"}})  # held, not taught: no topic of its own
    (snapshot / "sft.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"path": str(path)}

    result = forgetting.run(Context(candidate=candidate, champion=champion, snapshot=snapshot), cfg)
    near = result.details["near_training"]
    assert result.details["answers_lost"] == 6 and result.details["answer_upper_bound"] <= 0.10
    assert (near["items"], near["known"], near["lost"], near["gained"]) == (6, 6, 6, 0)
    assert result.passed is False and "near the training data: lost 6 of 6 known" in result.note
    assert near["ci"][0] > 0.10 and "exceeds the margin" in near["verdict"]

    # the same loss away from what was trained is within the margin, and so is a candidate that keeps them
    assert forgetting.run(Context(candidate=candidate, champion=champion), cfg).passed is True
    kept = forgetting.run(Context(candidate=champion, champion=champion, snapshot=snapshot), cfg)
    assert kept.passed is True and kept.details["near_training"]["known"] == 6
