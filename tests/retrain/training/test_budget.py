"""The training budget follows the data: steps and tokens, not epochs."""

import pytest

from retrain.training import budget
from retrain.training.config import load_config
from retrain.training.trainers import train_stage
from tests.retrain.training.helpers import ROWS, fast_config


def test_a_small_snapshot_gets_enough_steps_to_learn():
    sft = load_config().sft
    small = budget.size("sft", sft, rows=25, tokens_per_example=60, width=576)
    # 25 corrections used to give 6 optimizer steps (3 epochs at batch 16); now at least min_examples are seen
    assert small.examples_seen >= min(sft.min_examples, sft.max_passes * 25)
    assert small.examples_per_step == 5 and small.steps >= 40  # at least 5 optimizer steps per pass
    assert small.passes <= sft.max_passes + 1
    assert any("at least" in line for line in small.why)


def test_a_large_snapshot_is_capped_by_tokens():
    sft = load_config(data={"sft": {"max_tokens": 500_000}}).sft
    large = budget.size("sft", sft, rows=100_000, tokens_per_example=200, width=576)
    assert large.tokens <= 500_000 + large.examples_per_step * 200
    assert large.passes < 1
    assert any("capped" in line for line in large.why)


def test_learning_rate_follows_width_and_rank_unless_configured():
    sft = load_config().sft
    small_model, _ = budget.learning_rate("sft", sft, 576)
    big_model, _ = budget.learning_rate("sft", sft, 4096)
    assert big_model == pytest.approx(budget.REFERENCE_LR) and small_model > 5 * big_model
    high_rank, _ = budget.learning_rate("sft", load_config(data={"sft": {"lora_r": 64}}).sft, 4096)
    assert high_rank == pytest.approx(budget.REFERENCE_LR / 2)
    dpo, _ = budget.learning_rate("dpo", load_config().dpo, 576)
    assert dpo == pytest.approx(small_model * budget.PREFERENCE_LR_SHARE)
    fixed, why = budget.learning_rate("sft", load_config(data={"sft": {"learning_rate": 3e-4}}).sft, 576)
    assert fixed == 3e-4 and "configured" in why


def test_the_trainer_runs_the_budget(tiny_model_dir, tmp_path):
    data = fast_config()
    data["sft"] = {k: v for k, v in data["sft"].items() if k not in ("max_steps", "effective_batch_size")}
    data["sft"].update(min_examples=24, max_passes=3, evaluations=2)
    config = load_config(data=data)
    train = [ROWS["sft"](i) for i in range(20)]
    validation = [ROWS["sft"](100 + i) for i in range(2)]
    result = train_stage("sft", config, base_path=tiny_model_dir, merge=[], train=train, eval_rows=validation,
                         out=tmp_path)
    plan = result["budget"]
    assert plan["examples_per_step"] == 4  # a fifth of the 20 rows: at least 5 steps per pass
    assert plan["steps"] == 10 and result["steps"] == 10  # 2 passes (40 examples, above min_examples 24) / 4
    assert len(result["evals"]) == 2 and result["best_step"] in (5, 10)


def test_rows_restating_a_correction_are_counted():
    from retrain.training.plan import restating_rows

    rows = [{"lineage": {"via": "correction", "message_id": "m1"}},  # the correction itself
            {"lineage": {"via": "verdict", "message_id": "m1"}},  # the reply it corrected, labelled bad
            {"lineage": {"via": "verdict", "message_id": "m2"}},  # a thumbs-down nobody corrected
            {"lineage": {"via": "comparison", "message_id": "m3"}}]
    assert restating_rows(rows) == 2


@pytest.mark.parametrize("max_s", [10_000, 0])
def test_the_search_keeps_the_trial_with_the_lowest_validation_loss_within_its_time(max_s, tiny_model_dir,
                                                                                     tmp_path):
    import json

    from retrain.training.trainers import run_stage

    config = load_config(data=fast_config(steps=2, search_lr_factors=[1.0, 0.25], search_max_s=max_s))
    config.sft.min_validation_rows = 1  # the one validation row below may choose
    train = [ROWS["sft"](i) for i in range(8)]
    result = run_stage("sft", config, base_path=tiny_model_dir, merge=[], train=train,
                       eval_rows=[ROWS["sft"](100)], out=tmp_path, search=True)
    trials = result["search"]
    if max_s:
        assert [t["lr_factor"] for t in trials] == [1.0, 0.25]
        assert trials[1]["learning_rate"] == pytest.approx(trials[0]["learning_rate"] * 0.25)
        winner = min(trials, key=lambda t: t["lowest_eval_loss"])
        assert result["chosen_trial"] == winner["trial"]
    else:  # the second trial would not fit in the wall-time bound
        assert "skipped" in trials[1] and result["chosen_trial"] == 0
    kept = json.loads((tmp_path / f"trial-{result['chosen_trial']}" / "result.json").read_text())
    assert (tmp_path / "final").is_dir() and kept["budget"] == result["budget"]


def test_example_tokens_are_counted_in_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    from retrain.training.trainers import mean_tokens, to_trl_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = to_trl_rows("sft", [ROWS["sft"](i) for i in range(4)])
    text = tokenizer.apply_chat_template(rows[0]["prompt"] + rows[0]["completion"], tokenize=False)
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert mean_tokens(tokenizer, rows, cap=1024) == pytest.approx(expected, abs=2)  # not the dict's 2 keys
