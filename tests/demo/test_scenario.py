"""The demo's answer matching, its shipped data and the report renderer (no server, no model)."""

import json

from demo import scenario
from demo.report import render
from demo.run import snapshot_membership, summarize


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
    """The replay pool and the forgetting set ship with the product; a demo question in either would leak
    its answer into training (or score the demo's own facts as 'general knowledge')."""
    from retrain.datasets.replay import forgetting_set, general_examples

    shipped = {r["messages"][0]["content"].strip().lower() for r in general_examples() + forgetting_set()}
    demo = {i.question.strip().lower() for part in (scenario.load_items(), scenario.load_everyday(),
                                                    scenario.load_general()) for i in part}
    assert not demo & shipped, sorted(demo & shipped)


def _results(tmp_path):
    items = scenario.load_items()[:3]
    general = scenario.load_general()[:2]
    snap = tmp_path / "snap"
    snap.mkdir()
    row = lambda i: {"messages": [{"role": "user", "content": i.question},  # noqa: E731
                                  {"role": "assistant", "content": i.answer}],
                     "lineage": {"source": "feedback", "feedback_ids": ["correction:1"]}}
    (snap / "sft.train.jsonl").write_text("\n".join(json.dumps(row(i)) for i in items[:2]) + "\n")
    (snap / "sft.eval.jsonl").write_text(json.dumps(row(items[2])) + "\n")
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
        "reviews": {"alice": [{"item": i.id, "scores": {"correctness": 1}, "correction": i.answer} for i in items],
                    "mallory": [{"item": items[0].id, "scores": {"correctness": 4}}]},
        "run": {"id": 1, "status": "promoted", "gate": {"results": {  # as evaluators.gate writes it
            "heldout": {"value": 0.2, "champion": 2.0, "candidate": 1.6, "passed": True},
            "forgetting": {"value": 0.02, "champion": 1.0, "candidate": 1.02, "passed": True}}}},
        "promoted": True, "times": {"start server": 3.0, "retrain (LoRA SFT)": 60.0},
    }
    return results, items


def test_summary_counts_train_eval_and_targets(tmp_path):
    results, items = _results(tmp_path)
    assert results["membership"] == {items[0].id: "train", items[1].id: "train", items[2].id: "eval"}
    summary = summarize(results)
    acc = summary["accuracy"]
    assert acc["corrected_train"] == {"n": 2, "before": 0.0, "after": 1.0}
    assert acc["corrected_eval"] == {"n": 1, "before": 0.0, "after": 0.0}
    assert acc["paraphrases"] == {"n": 2, "before": 0.0, "after": 0.5}
    assert summary["targets"]["corrected_train"]["met"] is True
    assert summary["targets"]["paraphrases"]["met"] is True
    assert abs(summary["forgetting_loss_increase"] - 0.02) < 1e-9
    assert summary["targets"]["forgetting_loss_increase"]["met"] is True

    results["summary"] = summary
    page = render(results)
    assert "data:image/png;base64," in page and "Before → after" in page and "NOT met" not in page
