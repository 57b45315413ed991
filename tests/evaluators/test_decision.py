"""Non-inferiority bounds, minimum evidence and the three-way decision, the cumulative gate, the eval cache,
and the run status of an `insufficient_evidence` decision. Stub models: fast, no weights."""

import json

import numpy as np
import pytest

from evaluators import cumulative, forgetting, gate, heldout, preference
from evaluators.context import Context
from evaluators.result import bounds, harm_verdict, point, ratio
from tests.evaluators.conftest import forgetting_item

mean = ratio(lambda s: s[..., 0], lambda s: s[..., 1])


class Counting:
    """Knows the answers in `known` (by question); scores replies as `nll` per token. Counts its calls."""

    def __init__(self, version: str, known: set[str] = frozenset(), nll: float = 1.0):
        self.version, self.known, self.nll = version, set(known), nll
        self.calls = {"generate": 0, "score": 0}

    def generate(self, prompts, max_new_tokens=64, guesses=None):
        self.calls["generate"] += 1
        return [f"It is {p[-1]['content'].split()[-1].rstrip('?')}." if p[-1]["content"] in self.known else "No idea."
                for p in prompts]

    def score(self, items):
        self.calls["score"] += 1
        return [(-self.nll * 4, 4) for _ in items]


def _set(tmp_path, n: int):
    """n capital-style questions whose answer is their last word."""
    questions = [f"Which word ends question {i} zq{i}?" for i in range(n)]
    path = tmp_path / f"general-{n}.jsonl"
    path.write_text("".join(json.dumps(forgetting_item(i, q, [f"zq{i}"], f"It is zq{i}.")) + "\n"
                            for i, q in enumerate(questions)))
    return path, questions


def test_upper_bound_of_a_mean_matches_the_normal_approximation():
    values = np.random.default_rng(3).binomial(1, 0.2, 400).astype(float)
    cols = np.stack([values, np.ones_like(values)], axis=1)
    lo, hi = bounds(cols, mean, confidence=0.95)
    se = values.std() / np.sqrt(len(values))
    assert point(cols, mean) == pytest.approx(values.mean())
    assert hi == pytest.approx(values.mean() + 1.645 * se, abs=0.01) and lo < values.mean() < hi
    assert bounds(cols[:1], mean) is None  # one group: nothing to resample


def test_bootstrap_resamples_groups_not_rows():
    """Ten copies of each of 5 questions are 5 pieces of evidence, not 50: the bound is as wide as 5 rows'."""
    rng = np.random.default_rng(0)
    five = rng.normal(0, 1, 5)
    cols5 = np.stack([five, np.ones(5)], axis=1)
    copies = np.repeat(cols5, 10, axis=0)
    by_row = bounds(copies, mean)
    by_group = bounds(copies, mean, groups=np.repeat(np.arange(5), 10))
    alone = bounds(cols5, mean)
    assert by_group == pytest.approx(alone, abs=1e-9)
    assert by_row[1] - by_row[0] < 0.5 * (by_group[1] - by_group[0])


def test_harm_verdict_needs_an_upper_bound_within_the_margin_and_enough_items():
    assert harm_verdict(0.0, (-0.05, 0.05), 0.10, 100, 30)[:2] == (True, "sufficient")
    assert harm_verdict(0.0, (-0.05, 0.12), 0.10, 100, 30)[:2] == (False, "sufficient")  # not significant != pass
    assert harm_verdict(0.0, (-0.05, 0.05), 0.10, 12, 30)[:2] == (None, "insufficient")
    assert harm_verdict(0.5, (0.3, 0.7), 0.10, 12, 30)[:2] == (False, "insufficient")  # harm established anyway


def test_lost_four_of_thirteen_known_fails(tmp_path):
    path, qs = _set(tmp_path, 40)
    champion = Counting("champ", set(qs[:13]))
    candidate = Counting("cand", set(qs[4:13]))  # lost 4, gained 0: net drop 31%
    result = forgetting.run(Context(candidate=candidate, champion=champion), {"path": str(path), "min_n": 10})
    assert (result.details["answers_lost"], result.details["answers_gained"], result.n) == (4, 0, 13)
    assert result.value == pytest.approx(4 / 13) and result.passed is False and result.bound > 0.10
    assert gate.decide([result], {"required": ["forgetting"]})[0] == "failed"


def test_churn_within_the_margin_passes_given_enough_items(tmp_path):
    path, qs = _set(tmp_path, 300)
    champion = Counting("champ", set(qs[:150]))
    candidate = Counting("cand", set(qs[5:155]))  # lost 5, gained 5 of 150 known
    result = forgetting.run(Context(candidate=candidate, champion=champion), {"path": str(path)})
    assert (result.details["answers_lost"], result.details["answers_gained"]) == (5, 5)
    assert result.value == 0.0 and result.bound <= 0.10 and result.passed is True
    assert result.evidence == "sufficient"
    few = forgetting.run(Context(candidate=candidate, champion=Counting("champ2", set(qs[:20]))), {"path": str(path)})
    assert few.passed is None and few.evidence == "insufficient"  # 20 known < min_n 30: never a pass


def _snapshot(tmp_path, n_test: int, *, dpo: bool = True):
    root = tmp_path / f"snap-{n_test}"
    root.mkdir()

    def sft(i, split):
        return {"messages": [{"role": "user", "content": f"{split} q{i}"}, {"role": "assistant", "content": "A"}],
                "lineage": {"group": f"g{i}", "origin": "correction"}}
    (root / "sft.train.jsonl").write_text("".join(json.dumps(sft(i, "train")) + "\n" for i in range(6)))
    (root / "sft.test.jsonl").write_text("".join(json.dumps(sft(i, "test")) + "\n" for i in range(n_test)))
    if dpo:
        pair = {"prompt": "q", "chosen": "A", "rejected": "B", "lineage": {"group": "g"}}
        (root / "dpo.train.jsonl").write_text(json.dumps(pair) + "\n")
    return root


def test_two_test_rows_give_insufficient_evidence_and_missing_dpo_is_not_applicable(tmp_path):
    better, worse = Counting("cand", nll=0.5), Counting("champ", nll=1.0)
    ctx = Context(candidate=better, champion=worse, snapshot=_snapshot(tmp_path, 2, dpo=False))
    held = heldout.run(ctx, {})
    assert held.value == pytest.approx(0.5) and held.passed is None and held.evidence == "insufficient"
    assert held.n == 2 and held.min_n == 5
    pref = preference.run(ctx, {})
    assert pref.evidence == "not_applicable" and pref.passed is None
    outcome, reasons = gate.decide([held, pref], {"required": ["heldout", "preference"]})
    assert outcome == "insufficient_evidence" and reasons[0].startswith("heldout: insufficient evidence; has 2, needs 5")

    dpo_ctx = Context(candidate=better, champion=worse, snapshot=_snapshot(tmp_path, 6))
    pref = preference.run(dpo_ctx, {})  # DPO trained but no dpo.test pairs: missing evidence, not exempt
    assert pref.evidence == "insufficient" and pref.passed is None
    assert heldout.run(dpo_ctx, {}).passed is True  # 6 groups, all better


def test_cumulative_gate_compares_with_the_base_not_the_champion(tmp_path):
    path, qs = _set(tmp_path, 200)
    base = Counting("base", set(qs[:100]))
    champion = Counting("v1", set(qs[:88]))  # drifted 12% from the base, within its own margin
    candidate = Counting("v2", set(qs[:80]))  # another 9% from the champion: 20% from the base
    ctx = Context(candidate=candidate, champion=champion, reference=base,
                  ancestry=[{"version": "base", "accuracy": None}, {"version": "v1", "accuracy": 0.44}])
    cfg = {"path": str(path), "max_new_tokens": 32}
    local = forgetting.run(ctx, {"path": str(path), "min_n": 30, "answer_margin": 0.15})
    drift = cumulative.run(ctx, cfg)
    assert local.value == pytest.approx(8 / 88) and local.passed is True
    assert drift.details["reference"] == "base" and drift.value == pytest.approx(0.20)
    assert drift.passed is False and drift.bound > 0.15
    assert [t["version"] for t in drift.details["trend"]] == ["base", "v1", "v2"]
    assert drift.details["trend"][0]["accuracy"] == 0.5 and drift.details["trend"][-1]["accuracy"] == 0.4
    assert cumulative.run(Context(candidate=candidate, champion=champion), cfg).evidence == "insufficient"
    from evaluators.report import _trend

    assert "<svg" in _trend([drift.to_dict()])


def test_cached_champion_and_base_sides_are_not_recomputed(tmp_path):
    path, qs = _set(tmp_path, 40)
    cfg = {"path": str(path), "min_n": 5, "max_new_tokens": 32}  # the cumulative gate decodes the same way

    def once(candidate_version: str):
        champion, base, candidate = Counting("champ", set(qs[:30])), Counting("base", set(qs[:30])), \
            Counting(candidate_version, set(qs[:30]))
        ctx = Context(candidate=candidate, champion=champion, reference=base, cache_dir=tmp_path / "eval-cache")
        results = [forgetting.run(ctx, cfg), cumulative.run(ctx, {"path": str(path), "max_new_tokens": 32,
                                                                   "min_n": 5})]
        return results, champion, base, candidate

    results, champion, base, candidate = once("cand-1")
    assert champion.calls == {"generate": 1, "score": 1} and base.calls["generate"] == 1
    assert [r.passed for r in results] == [True, True]
    results, champion, base, candidate = once("cand-2")  # the next run: only the candidate's side is computed
    assert champion.calls == {"generate": 0, "score": 0} and base.calls == {"generate": 0, "score": 0}
    assert candidate.calls == {"generate": 1, "score": 1}
    assert [r.passed for r in results] == [True, True]
    other = forgetting.run(Context(candidate=Counting("cand-3"), champion=champion,
                                   cache_dir=tmp_path / "eval-cache"), cfg | {"max_new_tokens": 8})
    assert champion.calls["generate"] == 1 and other.details["items"] == 40  # other decoding: another cache entry


def test_pipeline_maps_insufficient_evidence_to_the_run_status(monkeypatch):
    import evaluators.gate as gate_module
    from hitl import pipeline
    from retrain.training.models import FINISHED, RunStatus

    for decision, status in (({"decision": "insufficient_evidence", "passed": False}, RunStatus.insufficient_evidence),
                             ({"decision": "rejected", "passed": False}, RunStatus.rejected),
                             ({"decision": "promoted", "passed": True}, RunStatus.promoted),
                             ({"decision": "challenger", "passed": True}, RunStatus.succeeded)):
        monkeypatch.setattr(gate_module, "evaluate_and_decide", lambda run_id, d=decision: d)
        assert pipeline.gate(1) == (status, decision)
    assert RunStatus.insufficient_evidence in FINISHED


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_insufficient_evidence_keeps_the_candidate_and_is_stored_on_the_run(settings, tiny_model_dir):
    from core.db import session_scope
    from retrain.training.models import RetrainRun, RunStatus
    from service import service as serving
    from service.models import ModelVersion, VersionStatus
    from tests.evaluators.conftest import register

    with session_scope() as s:
        serving.ensure_champion(s, settings)
        register(s, "thin-1", None, tiny_model_dir)
        run = RetrainRun(status=RunStatus.insufficient_evidence, candidate_version="thin-1")
        s.add(run)
        s.flush()
        run_id = run.id
    report = {"candidate": "thin-1", "champion": "base", "outcome": "insufficient_evidence", "passed": False,
              "reasons": ["heldout: insufficient evidence; has 2, needs 5"], "results": []}
    with session_scope() as s:
        assert gate.apply_decision(s, report, gate.load_policy(), "test") == "insufficient_evidence"
    with session_scope() as s:
        version = s.get(ModelVersion, "thin-1")
        assert version.status == VersionStatus.candidate and version.gate_report["decision"] == "insufficient_evidence"
        assert serving.champion(s).version == "base"
        assert s.get(RetrainRun, run_id).status == RunStatus.insufficient_evidence


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_champion_side_is_measured_once_per_version(settings, general_set, golden_file):
    """What the pipeline calls before training: the base's side of the general set and golden prompts goes
    into the eval cache once; the gates after training then compute only the candidate's side."""
    policy = gate.load_policy(overrides={"forgetting": {"path": str(general_set), "max_new_tokens": 8},
                                         "golden": {"path": str(golden_file)}})
    first = gate.measure_champion(settings, policy)
    assert first["champion"] == "base" and first["reference"] == "base" and first["cache"]["computed"] >= 3
    assert any((settings.data_dir / "eval-cache" / "base").glob("answers-*.json"))
    again = gate.measure_champion(settings, policy)
    assert again["cache"]["computed"] == 0 and again["cache"]["disk_hits"] >= 3
