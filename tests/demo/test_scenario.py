"""The demo's answer matching, its shipped data and the report renderer (no server, no model)."""

import inspect
import json
from dataclasses import fields

from demo import run as run_module
from demo import scenario
from demo.report import render
from demo.run import GATE_KEYS, QUICK, Profile, _server_env, anchor_check, snapshot_membership, summarize


def test_match_is_whole_words_case_and_punctuation_insensitive():
    assert scenario.is_correct("It was Richard NIXON.", ("nixon",))
    assert scenario.is_correct("The answer: Bavarian Motor-Works!", ("bavarian motor works",))
    assert scenario.is_correct("Pelé? No — it's Zürich", ("zurich",))
    assert not scenario.is_correct("Nixonville is a town", ("nixon",))
    assert not scenario.is_correct("In 19634 nothing happened", ("1963",))


def test_shipped_data_is_consistent_and_disjoint():
    items, everyday, general = scenario.load_items(), scenario.load_everyday(), scenario.load_general()
    assert len(items) >= 30 and len(everyday) >= 10 and len(general) >= 20
    ids = [i.id for i in items + everyday + general]
    assert len(ids) == len(set(ids))
    sets = [{i.question.lower() for i in part} for part in (items, everyday, general)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for item in everyday:
        assert scenario.is_correct(item.correction, item.keys), item
    for item in items:
        assert item.keys and len(item.paraphrases) >= 1
        assert scenario.is_correct(item.answer, item.keys), item  # the corpus answer counts as correct
        assert scenario.is_correct(item.correction, item.keys), item  # and so does the reviewers' sentence
        assert item.correction != item.answer and item.question not in item.paraphrases


def test_demo_questions_are_not_in_the_products_general_data():
    """The replay pool and the forgetting sets ship with the product. A demo question in the replay pool would
    leak its answer into training; a question end users ask (trivia, everyday: reviewed, then trained on or
    held as anchors) in a forgetting set would let the candidate train on the gate's own prompts. The demo's
    general set is never asked by end users: it may share prompts with the gate's set (both only measure)."""
    from evaluators.forgetting import load_items as gate_forgetting_set
    from retrain.datasets.replay import forgetting_set, general_examples

    def questions(rows: list[dict]) -> set[str]:
        return {m["content"].strip().lower() for r in rows for m in r["messages"] if m["role"] == "user"}

    replay, gate_sets = questions(general_examples()), questions(forgetting_set() + gate_forgetting_set())
    asked = {i.question.strip().lower() for part in (scenario.load_items(), scenario.load_everyday()) for i in part}
    general = {i.question.strip().lower() for i in scenario.load_general()}
    assert not asked & (replay | gate_sets), sorted(asked & (replay | gate_sets))
    assert not general & replay, sorted(general & replay)


def _gate(decision: str = "insufficient_evidence") -> dict:
    """The run's `gate` as the product stores it: `evaluators.gate.gate_summary` of an evaluation report."""
    from evaluators.gate import gate_summary
    from evaluators.result import EvalResult

    results = [
        EvalResult(name="heldout", metric="relative loss improvement vs champion", value=0.2, threshold=0.01,
                   passed=None, ci=(0.1, 0.3), candidate=1.6, champion=2.0, n=3, min_n=5, evidence="insufficient",
                   note="insufficient evidence: only 3 of the 5 needed"),
        EvalResult(name="forgetting", metric="net answer drop on the general set vs champion", value=0.02,
                   threshold=0.1, passed=True, ci=(-0.03, 0.06), candidate=0.44, champion=0.45, n=120, min_n=30,
                   bound=0.06, note="answers: lost 4 of the 120 the champion knew, gained 2"),
    ]
    report = {"passed": decision == "promoted", "outcome": decision, "decision": decision,
              "reasons": ["heldout: insufficient evidence: only 3 of the 5 needed"] if decision != "promoted" else [],
              "not_applicable": ["preference"], "candidate": "v2", "champion": "v1",
              "results": [r.to_dict() for r in results]}
    return gate_summary(report)


def _results(tmp_path, decision: str = "promoted"):
    items = scenario.load_items()[:4]
    general = scenario.load_general()[:2]
    snap = tmp_path / "snap"
    snap.mkdir()
    row = lambda i: {"messages": [{"role": "user", "content": i.question},  # noqa: E731
                                  {"role": "assistant", "content": i.answer}],
                     "lineage": {"source": "feedback", "feedback_ids": ["correction:1"]}}
    (snap / "sft.train.jsonl").write_text("\n".join(json.dumps(row(i)) for i in items[:2]) + "\n")
    (snap / "sft.validation.jsonl").write_text(json.dumps(row(items[2])) + "\n")
    (snap / "sft.test.jsonl").write_text(json.dumps(row(items[3])) + "\n")
    answer = lambda text, ok: {"prompt": "q", "text": text, "version": "v", "correct": ok}  # noqa: E731
    before = {"question": {i.id: answer("no idea", False) for i in items},
              "paraphrase": {f"{i.id}#0": answer("no", False) for i in items},
              "general": {g.id: answer(g.answer, True) for g in general}}
    after = {"question": {i.id: answer(i.answer, k < 2) for k, i in enumerate(items)},
             "paraphrase": {f"{i.id}#0": answer(i.answer, k == 0) for k, i in enumerate(items)},
             "general": {g.id: answer(g.answer, True) for g in general}}
    results = {
        "items": [i.__dict__ for i in items], "general": [g.__dict__ for g in general],
        "before": before, "after": after, "membership": snapshot_membership(str(snap), items),
        "anchors": anchor_check(str(snap), [g.question for g in general]),
        "reviews": {"alice": [{"item": i.id, "scores": {"correctness": 1}, "correction": i.answer} for i in items],
                    "mallory": [{"item": items[0].id, "scores": {"correctness": 4}}]},
        "run": {"id": 1, "status": decision, "candidate_version": "v2", "gate": _gate(decision),
                "metrics": {"steps": [{"stage": "sft", "step": 1, "max_steps": 2, "loss": 2.0},
                                      {"stage": "sft", "step": 2, "max_steps": 2, "loss": 1.5},
                                      {"stage": "sft", "step": 2, "max_steps": 2, "eval_loss": 1.7}]}},
        "promoted": decision == "promoted", "forced": decision != "promoted",
        "times": {"start server": 3.0, "retrain": 60.0},
    }
    return results, items


def test_membership_reads_train_validation_and_test(tmp_path):
    results, items = _results(tmp_path)
    assert results["membership"] == {items[0].id: "train", items[1].id: "train", items[2].id: "validation",
                                     items[3].id: "test"}
    assert results["anchors"] == {"rows": 0, "measured_questions": []}  # no sft.anchor.jsonl: no anchors


def test_anchor_check_finds_measured_questions_among_anchors(tmp_path):
    general = scenario.load_general()[:2]
    (tmp_path / "sft.anchor.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": general[0].question}, {"role": "assistant", "content": "x"}]}) + "\n")
    assert anchor_check(str(tmp_path), [g.question for g in general]) == {
        "rows": 1, "measured_questions": [general[0].question]}


def test_summary_counts_train_heldout_and_targets(tmp_path):
    results, items = _results(tmp_path)
    summary = summarize(results)
    acc = summary["accuracy"]
    assert acc["corrected_train"] == {"n": 2, "before": 0.0, "after": 1.0}
    assert acc["corrected_heldout"] == {"n": 2, "before": 0.0, "after": 0.0}
    assert acc["paraphrases"] == {"n": 2, "before": 0.0, "after": 0.5}
    assert summary["membership_counts"] == {"train": 2, "validation": 1, "test": 1}
    assert set(summary["targets"]) == {"corrected_train", "paraphrases", "general_no_net_drop"}
    assert summary["targets"]["corrected_train"]["met"] is True
    assert summary["targets"]["paraphrases"]["met"] is True
    assert summary["targets"]["general_no_net_drop"]["value"] == 0.0
    assert summary["targets"]["general_no_net_drop"]["met"] is True

    results["summary"] = summary
    page = render(results)
    assert "data:image/png;base64," in page and "Before → after" in page and "NOT met" not in page
    assert "All targets are met." in page


def test_summary_and_report_show_the_gate_decision_and_reasons(tmp_path):
    results, _ = _results(tmp_path, decision="insufficient_evidence")
    summary = summarize(results)
    assert summary["decision"] == summary["run_status"] == "insufficient_evidence"
    assert summary["gate_reasons"] == ["heldout: insufficient evidence: only 3 of the 5 needed"]
    gates = summary["gate"]["gates"]
    assert set(gates) == {"heldout", "forgetting"}
    assert set(gates["heldout"]) == set(GATE_KEYS)
    assert gates["heldout"]["evidence"] == "insufficient" and gates["heldout"]["passed"] is None
    assert gates["forgetting"]["bound"] == 0.06 and gates["forgetting"]["champion"] == 0.45
    assert summary["gate"]["not_applicable"] == ["preference"]

    results["summary"] = summary
    page = render(results)
    assert "insufficient_evidence" in page and "only 3 of the 5 needed" in page
    assert "promoted it by hand" in page


def test_gate_keys_exist_in_the_products_gate_summary():
    """The demo lists gate results by the keys `evaluators.gate.gate_summary` stores; each must exist."""
    stored = _gate()["results"]["heldout"]
    assert set(GATE_KEYS) <= set(stored), set(GATE_KEYS) - set(stored)


def test_demo_runs_on_product_defaults():
    """No training, snapshot or gate override: profiles hold only scenario knobs, the servers get no retrain
    config or gate policy, and the run is started with an empty body."""
    assert {f.name for f in fields(Profile)} == {"items", "everyday", "paraphrases", "general", "compare_budget",
                                                "max_tokens"}
    env = _server_env(QUICK)
    assert not {"HITL_RETRAIN_CONFIG", "HITL_GATE_POLICY"} & set(env)
    source = inspect.getsource(run_module)
    assert 'post("/api/retrain/runs", json={})' in source
    for word in ("HITL_RETRAIN_CONFIG\"", "HITL_GATE_POLICY\"", "snapshot_options", "as_of", "/api/datasets\", json"):
        assert word not in source, word
    # the quick profile corrects enough questions for the default SFT stage (min_rows 8 at a 0.7 train share)
    from retrain.training.config import SFTOptions

    assert QUICK.items * 0.7 >= SFTOptions().min_rows
