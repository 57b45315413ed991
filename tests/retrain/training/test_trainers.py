"""Trainers on the tiny model (CPU): each method moves the LoRA weights; guards and chaining are exact."""

import json

import pytest
import torch
from safetensors.torch import load_file

from retrain.training import adapters, hardware
from retrain.training.config import ConfigError, describe, load_config
from retrain.training.plan import make_plan
from retrain.training.trainers import LeakageError, assert_no_leakage, last_checkpoint, train_stage
from tests.retrain.training.helpers import ROWS, fast_config


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_a_stage_changes_the_lora_weights(method, tiny_model_dir, tmp_path):
    config = load_config(data=fast_config(steps=2))
    train = [ROWS[method](i) for i in range(8)]
    result = train_stage(method, config, base_path=tiny_model_dir, merge=[], train=train, eval_rows=[],
                         out=tmp_path / method)
    weights = load_file(tmp_path / method / "final" / "adapter_model.safetensors")
    b = [w for k, w in weights.items() if "lora_B" in k]
    assert b and any(w.abs().sum() > 0 for w in b), "LoRA B starts at zero; training must move it"
    assert result["steps"] == 2 and result["precision"] == "fp32"  # CPU: never bf16
    assert last_checkpoint(tmp_path / method / "checkpoints") is not None
    # a finished stage is not trained again
    again = train_stage(method, config, base_path=tiny_model_dir, merge=[], train=train, eval_rows=[],
                        out=tmp_path / method)
    assert again["reused"] is True


def test_sft_loss_covers_only_the_reply(tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from retrain.training.trainers import to_trl_rows

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = to_trl_rows("sft", [ROWS["sft"](0)])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), processing_class=tok,
                         args=SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to=[],
                                        completion_only_loss=True, gradient_checkpointing=False),
                         train_dataset=Dataset.from_list(rows))
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0]
    trained = tok.decode(labels[labels != -100])
    assert "Paris" in trained and "capital of France?" not in trained


def test_stacked_adapter_equals_merging_one_after_another(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i, (r, alpha) in enumerate([(4, 8), (2, 16)]):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"] if i else
                                          "all-linear"))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        model.save_pretrained(tmp_path / f"a{i}")
        paths.append(tmp_path / f"a{i}")
    stacked = adapters.concat_adapters(paths, tmp_path / "stacked")
    assert json.loads((stacked / "adapter_config.json").read_text())["r"] == 6
    ids = torch.tensor([[1, 5, 9, 20, 40]])
    sequential = adapters.load_merged(tiny_model_dir, paths)(ids).logits
    from service.backends.local import load_model

    served, _ = load_model(tiny_model_dir, stacked, device="cpu")
    torch.testing.assert_close(served(ids).logits, sequential, atol=1e-5, rtol=1e-4)
    assert adapters.checksum(stacked) == adapters.checksum(stacked) and len(adapters.checksum(stacked)) == 64


def test_leakage_guard():
    train = [ROWS["sft"](1), ROWS["sft"](2)]
    assert_no_leakage(train, [ROWS["sft"](3)])
    with pytest.raises(LeakageError, match="conversation"):
        assert_no_leakage(train, [ROWS["sft"](2)])
    with pytest.raises(LeakageError, match="only 'train'"):
        assert_no_leakage(train, [], train_split="eval")


def test_config_yaml_cli_overrides_and_help(tmp_path):
    path = tmp_path / "retrain.yaml"
    path.write_text("sft:\n  learning_rate: 0.001\n  min_examples: 64\nmethods: [sft]\n")
    config = load_config(path, ["sft.learning_rate=3e-4", "dpo.beta=0.2"])
    assert (config.sft.learning_rate, config.sft.min_examples, config.dpo.beta) == (3e-4, 64, 0.2)
    assert config.methods == ["sft"]
    with pytest.raises(ConfigError, match="unknown config field 'sft.learning_rat'"):
        load_config(overrides=["sft.learning_rat=1"])
    assert load_config(overrides=["sft.learning_rate=3e-3"]).sft.learning_rate == 3e-3  # YAML reads it as a string
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(data={"sft": {"learning_rate": "fast"}})
    with pytest.raises(ConfigError, match="unknown method"):
        load_config(data={"methods": ["ppo"]})
    assert all(help_ for _name, _default, help_ in describe())


def test_trainer_extra_takes_only_tuning_knobs(api):
    """A config's `extra` reaches the TRL arguments: paths, uploads and hub access are a 422 naming the key."""
    import dataclasses

    from transformers import TrainingArguments

    from retrain.training.config import EXTRA_ALLOWED

    for key, value in (("output_dir", "/tmp/elsewhere"), ("push_to_hub", True), ("hub_token", "x"),
                       ("report_to", ["wandb"])):
        res = api.post("/api/retrain/runs", json={"config": {"dpo": {"extra": {key: value}}}})
        assert res.status_code == 422 and f"'dpo.extra.{key}' is not allowed" in res.json()["detail"]
    assert api.get("/api/retrain/runs").json()["count"] == 0  # nothing started
    knobs = {"optim": "adamw_torch", "adam_beta2": 0.95, "data_seed": 7}
    assert load_config(data={"sft": {"extra": knobs}}).sft.extra == knobs
    assert EXTRA_ALLOWED <= {f.name for f in dataclasses.fields(TrainingArguments)}


def test_plan_records_what_and_why():
    config = load_config()
    plan = make_plan({"sft": {"train": 40, "validation": 5}, "dpo": {"train": 30}, "kto": {"train": 100}}, config,
                     {"desirable": 50, "undesirable": 50})
    assert [s["method"] for s in plan["stages"]] == ["sft", "dpo"]
    assert "DPO planned" in next(s["reason"] for s in plan["skipped"] if s["method"] == "kto")
    assert plan["search"]["stage"] == "sft"  # a learning-rate search on the first stage, which has validation rows
    only_corrections = make_plan({"sft": {"train": 40}, "dpo": {"train": 30}, "kto": {"train": 60}}, config,
                                 {"desirable": 30, "undesirable": 30}, {"dpo": 30, "kto": 60})
    assert [s["method"] for s in only_corrections["stages"]] == ["sft"]  # SFT already trains on those
    assert all("beyond the corrections" in s["reason"] for s in only_corrections["skipped"])
    assert [s["method"] for s in make_plan({"dpo": {"train": 30}}, config, None, {"dpo": 30})["stages"]] == ["dpo"]
    plan = make_plan({"sft": {"train": 2}, "dpo": {"train": 1}, "kto": {"train": 40, "validation": 4}}, config,
                     {"desirable": 30, "undesirable": 10})
    assert [s["method"] for s in plan["stages"]] == ["kto"]
    assert make_plan({}, config)["stages"] == []


def test_hardware_choices_on_cpu_and_batch_probe():
    cpu = hardware.Hardware("cpu", 1, "cpu", False, None, 2)
    assert hardware.precision(cpu) == {"bf16": False, "fp16": False, "use_cpu": True}
    assert hardware.use_packing(cpu) is False
    assert hardware.find_batch_size(lambda b: None, 64, cpu, cpu_cap=8) == 8
    gpu = hardware.Hardware("cuda", 1, "fake", True, 80.0, 16)
    assert hardware.precision(gpu)["bf16"] is True and hardware.use_packing(gpu) is True

    def step(batch_size):  # pretend only 12 rows fit
        if batch_size > 12:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    import retrain.training.hardware as hw_mod

    original = torch.cuda.empty_cache
    try:
        hw_mod.torch.cuda.empty_cache = lambda: None
        assert 10 <= hardware.find_batch_size(step, 64, gpu) <= 12  # accelerate shrinks x0.9 per OOM
    finally:
        hw_mod.torch.cuda.empty_cache = original


@pytest.mark.parametrize("keep", ["best", "last", "best with too few validation rows"])
def test_keep_chooses_the_best_validation_or_the_last_step(keep, tiny_model_dir, tmp_path):
    config = load_config(data=fast_config(steps=8, save_total_limit=20))
    config.sft.evaluations, config.sft.keep, config.sft.early_stopping_patience = 4, keep.split()[0], 0
    config.sft.min_validation_rows = 3 if "few" in keep else 2  # the split below holds 2 rows
    config.sft.validation_tolerance = 0.0
    config.sft.learning_rate = 0.1  # high enough that the eval split's best comes before the last step
    train = [ROWS["sft"](i) for i in range(8)]
    wrong = [{"messages": [r["messages"][0], {"role": "assistant", "content": "zq xv 9 7 kk"}]} for r in train[:2]]
    result = train_stage("sft", config, base_path=tiny_model_dir, merge=[], train=train, eval_rows=wrong,
                         out=tmp_path)
    evals = {e["step"]: e["eval_loss"] for e in result["evals"]}
    lowest = min(evals.values())  # kept: the latest evaluation within the tolerance of the lowest loss
    best_step = max(s for s, loss in evals.items() if loss <= lowest * (1 + config.sft.validation_tolerance) + 1e-6)
    assert result["best_step"] == (best_step if keep == "best" else result["steps"])
    assert best_step != result["steps"], "eval must be best before the end, else best and last are one adapter"
    assert result["kept"] == {"best": "best", "last": "last"}.get(keep, "last: 2 validation rows < min_validation_rows 3")
    kept = load_file(tmp_path / "final" / "adapter_model.safetensors")
    step = best_step if keep == "best" else result["steps"]
    saved = load_file(tmp_path / "checkpoints" / f"checkpoint-{step}" / "adapter_model.safetensors")
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in kept)


def test_anchor_kl_counts_only_reply_tokens():
    from retrain.training.anchor import anchor_kl

    torch.manual_seed(0)
    champion = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, -100, -100, -100, -100]])
    assert anchor_kl(champion, champion, labels).item() == pytest.approx(0.0, abs=1e-6)
    moved = champion.clone()
    moved[0, 2:4] += torch.randn(2, 11)  # positions 2, 3 predict the reply tokens 3 and 4
    assert anchor_kl(moved, champion, labels).item() > 0.01
    elsewhere = champion.clone()
    elsewhere[0, :1] += 5.0
    elsewhere[1] += 5.0  # the second row has no reply tokens
    assert anchor_kl(elsewhere, champion, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_anchor_rows_hold_the_candidate_to_the_champion(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.training.anchor import anchor_kl

    train = [ROWS["sft"](i) for i in range(8)]
    anchors = [{"messages": [{"role": "user", "content": f"Tell me about animal {i}"},
                             {"role": "assistant", "content": f"Animal {i} is a small mammal that eats seeds."}],
                "lineage": {"conversation_id": f"served_{i}", "source": "anchor"}} for i in range(8)]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [tok.apply_chat_template(a["messages"], tokenize=False) for a in anchors]
    prompts = [tok.apply_chat_template(a["messages"][:1], tokenize=False, add_generation_prompt=True) for a in anchors]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for i, p in enumerate(prompts):
        labels[i, :len(tok(p)["input_ids"])] = -100
    champion = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        champion_logits = champion(**batch).logits

    def drift(weight: float) -> float:
        config = load_config(data=fast_config(steps=6, sft={"max_steps": 6, "learning_rate": 1e-2, "lora_r": 4,
                                                            "lora_alpha": 8, "anchor_weight": weight,
                                                            "anchor_reply_tokens": 0}))  # the replies above
        out = tmp_path / f"w{weight}"
        result = train_stage("sft", config, base_path=tiny_model_dir, merge=[], train=train, eval_rows=[], out=out,
                             anchors=anchors)
        assert result["anchor_rows"] == (8 if weight else 0)  # weight 0: anchors are ignored
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "final").eval()
        with torch.no_grad():
            return anchor_kl(model(**batch).logits, champion_logits, labels).item()

    free, held = drift(0.0), drift(20.0)
    assert free > 0 and held < 0.5 * free, (free, held)
    with pytest.raises(LeakageError):  # an anchor from an eval conversation would leak into the held-out loss
        train_stage("sft", load_config(data=fast_config(sft={"anchor_weight": 1.0})), base_path=tiny_model_dir,
                    merge=[], train=train, eval_rows=[dict(ROWS["sft"](99), lineage={"conversation_id": "served_0"})],
                    out=tmp_path / "leak", anchors=anchors)


def test_golden_anchors_join_every_step(tiny_model_dir, tmp_path, monkeypatch):
    """A golden prompt among 24 served anchors: drawn with them it would be held in a step or two of a run;
    pinned (lineage.origin golden) it is in every step's anchor batch, besides the usual served rows."""
    from transformers import AutoTokenizer

    from retrain.training import anchor

    train = [ROWS["sft"](i) for i in range(8)]
    served = [{"messages": [{"role": "user", "content": f"Tell me about animal {i}"},
                            {"role": "assistant", "content": f"Animal {i} is a small mammal that eats seeds."}],
               "lineage": {"conversation_id": f"served_{i}", "source": "anchor"}} for i in range(24)]
    rule = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                         {"role": "assistant", "content": "The capital of France is Paris."}],
            "lineage": {"source": "anchor", "origin": "golden", "group": "golden:capital-france"}}
    assert anchor.pinned(served + [rule]) == (served, [rule])
    paris = AutoTokenizer.from_pretrained(tiny_model_dir)(" Paris.", add_special_tokens=False)["input_ids"]
    batches: list[list[list[int]]] = []  # per step: the reply tokens of each anchor row

    def spy(student_logits, champion_logits, labels):  # the real KL, its batch recorded
        batches.append([[t for t in row if t != -100] for row in labels.tolist()])
        return kl(student_logits, champion_logits, labels)

    kl = anchor.anchor_kl
    monkeypatch.setattr(anchor, "anchor_kl", spy)
    config = load_config(data=fast_config(steps=6, sft={"max_steps": 6, "anchor_weight": 1.0, "anchor_reply_tokens": 0}))
    result = train_stage("sft", config, base_path=tiny_model_dir, merge=[], train=train, eval_rows=[],
                         out=tmp_path / "out", anchors=served + [rule])
    assert result["anchor_rows"] == 25 and len(batches) >= 6

    def has_paris(row: list[int]) -> bool:
        return any(row[k:k + len(paris)] == paris for k in range(len(row)))

    assert all(sum(map(has_paris, rows)) == 1 and len(rows) >= 2 for rows in batches), batches


def test_anchor_replies_are_the_champions_greedy_replies(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.training.anchor import champion_replies

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    anchors = [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "stored reply"}],
                "lineage": {"source": "anchor"}} for question in ("What is a wavelength", "Hello there, how are you?")]
    anchors.append(anchors[0])  # a repeated prompt gets the same reply
    replied = champion_replies(model, tok, anchors, max_new_tokens=6)
    assert len(replied) == 3 and replied[2] == replied[0]
    for anchor, row in zip(anchors, replied):
        ids = tok.apply_chat_template(anchor["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        alone = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = tok.decode(alone[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert row["messages"][:1] == anchor["messages"][:1] and row["lineage"] == anchor["lineage"]
        assert row["messages"][-1] == {"role": "assistant", "content": expected} != anchor["messages"][-1]
    assert champion_replies(model, tok, anchors, max_new_tokens=0) == anchors


def test_the_kept_evaluation_is_the_latest_within_the_tolerance(tmp_path):
    from types import SimpleNamespace

    from retrain.training.trainers import Recorder

    recorder = Recorder(tmp_path, None, "sft", patience=2, max_wall_s=None, save_best=False, tolerance=0.1)
    kept, stopped = [], []
    for step, loss in enumerate([1.0, 0.5, 0.54, 0.6, 0.62, 0.4], start=1):
        control = SimpleNamespace(should_training_stop=False)
        state = SimpleNamespace(global_step=step, epoch=step, is_world_process_zero=True)
        recorder.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        kept.append(recorder.kept["step"])
        stopped.append(control.should_training_stop)
    # 0.54 is within 10% of 0.5 and later, so it is kept; 0.6 and 0.62 are not; 0.4 is a new lowest
    assert kept == [1, 2, 3, 3, 3, 6]
    assert stopped == [False, False, False, False, True, False]  # two evaluations beyond the tolerance
    assert Recorder(tmp_path, None, "sft", 2, None).kept["step"] == 6  # resumed from best.json

    # with the champion's loss before training as the start, steps are kept while within the tolerance of it
    recorder = Recorder(tmp_path / "start", None, "sft", patience=2, max_wall_s=None, save_best=False,
                        tolerance=0.1)
    recorder.start = 1.0
    (tmp_path / "start").mkdir()
    for step, loss in enumerate([0.6, 0.9, 1.05, 1.2], start=1):
        state = SimpleNamespace(global_step=step, epoch=step, is_world_process_zero=True)
        recorder.on_evaluate(None, state, SimpleNamespace(should_training_stop=False), metrics={"eval_loss": loss})
    assert recorder.kept["step"] == 3  # 1.05 is within 10% of the champion's 1.0, 1.2 is not


def test_compressed_adapter_is_exact_when_the_rank_fits_and_reports_its_error(tiny_model_dir, tmp_path):
    """A stack whose delta has rank 4 (one adapter twice) compresses to rank 4 with no change; to rank 2 it is
    the best rank-2 approximation, with the error it reports."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.backends.local import load_model

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    model.save_pretrained(tmp_path / "a")
    stacked = adapters.concat_adapters([tmp_path / "a", tmp_path / "a"], tmp_path / "stacked")
    ids = torch.tensor([[1, 5, 9, 20, 40]])
    served = load_model(tiny_model_dir, stacked, device="cpu")[0](ids).logits
    exact = adapters.compress_adapter(stacked, 4, tmp_path / "r4")
    assert exact["rank_before"] == 8 and exact["rank"] == 4 and exact["relative_error"] < 1e-6
    assert adapters.adapter_rank(tmp_path / "r4") == 4
    torch.testing.assert_close(load_model(tiny_model_dir, tmp_path / "r4", device="cpu")[0](ids).logits, served,
                               atol=1e-5, rtol=1e-4)

    lossy = adapters.compress_adapter(stacked, 2, tmp_path / "r2")
    weights, original = load_file(tmp_path / "r2" / "adapter_model.safetensors"), load_file(
        stacked / "adapter_model.safetensors")
    dropped = total = 0.0
    for key in (k for k in original if "lora_A" in k):
        b_key = key.replace("lora_A", "lora_B")
        delta = original[b_key].double() @ original[key].double()  # stacked scaling is 1
        approx = weights[b_key].double() @ weights[key].double()
        best = torch.linalg.svdvals(delta)
        torch.testing.assert_close(torch.linalg.matrix_norm(delta - approx), (best[2:] ** 2).sum().sqrt())
        dropped, total = dropped + float(((delta - approx) ** 2).sum()), total + float((delta**2).sum())
    assert 0 < lossy["relative_error"] == pytest.approx((dropped / total) ** 0.5, rel=1e-6)
    assert lossy["worst_module_error"] >= lossy["relative_error"]


def test_chaining_compresses_to_the_fleet_rank_instead_of_merging():
    from core.settings import Settings
    from hitl.pipeline import chaining

    config = load_config(data={})
    fleet, local = Settings(backend="vllm", vllm_max_lora_rank=16), Settings(backend="local")
    assert chaining(config, fleet, 32, has_adapter=True) | {"reason": ""} == {"mode": "compress", "rank": 16,
                                                                                "reason": ""}
    assert chaining(config, fleet, 16, has_adapter=True)["mode"] == "stack"
    assert chaining(config, fleet, config.max_stacked_rank + 1, has_adapter=True)["mode"] == "compress"
    assert chaining(config, local, 32, has_adapter=True)["mode"] == "stack"
    assert chaining(config, local, config.max_stacked_rank + 1, has_adapter=True)["mode"] == "merge"
    assert chaining(load_config(data={"chaining": "merge"}), fleet, 8, has_adapter=True)["mode"] == "merge"


def test_a_stage_killed_mid_way_and_between_an_evaluation_and_its_checkpoint_ends_as_if_never_killed(
        tiny_model_dir, tmp_path, monkeypatch):
    """Killed after step 3 and again right after the evaluation at step 8 (before that step's checkpoint), resumed
    each time: the same steps and evaluations as an uninterrupted stage, none counted twice, the same losses."""
    from retrain.training.trainers import Recorder

    config = load_config(data=fast_config(steps=10, save_steps=5, save_total_limit=20))
    config.sft.evaluations, config.sft.min_validation_rows, config.sft.early_stopping_patience = 5, 2, 0
    train, eval_rows = [ROWS["sft"](i) for i in range(8)], [ROWS["sft"](i) for i in (100, 101)]
    stage = dict(base_path=tiny_model_dir, merge=[], train=train, eval_rows=eval_rows)
    whole = train_stage("sft", config, out=tmp_path / "whole", **stage)

    class Killed(BaseException):
        pass

    on_step_end, on_evaluate = Recorder.on_step_end, Recorder.on_evaluate

    def kill_at_step_3(self, args, state, control, **kw):
        on_step_end(self, args, state, control, **kw)
        if state.global_step == 3:
            raise Killed

    def kill_after_evaluating_step_8(self, args, state, control, **kw):
        on_evaluate(self, args, state, control, **kw)
        if state.global_step == 8:
            raise Killed  # recorded in best.json, checkpoint-8 not written

    out = tmp_path / "killed"
    for point, fault in (("on_step_end", kill_at_step_3), ("on_evaluate", kill_after_evaluating_step_8)):
        monkeypatch.setattr(Recorder, point, fault)
        with pytest.raises(Killed):
            train_stage("sft", config, out=out, **stage)
        monkeypatch.undo()
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-6"  # saved with the evaluation at step 6
    resumed = train_stage("sft", config, out=out, **stage)
    assert resumed["resumed_from"] == "checkpoint-6" and resumed["steps"] == whole["steps"] == 10
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in whole["evals"]] == [2, 4, 6, 8, 10]
    for got, want in zip(resumed["evals"], whole["evals"]):
        assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-3)
    assert resumed["best_step"] == whole["best_step"] and not resumed["stopped_early"]


def test_replayed_evaluations_are_not_counted_again_and_early_stopping_stops_again(tmp_path):
    from types import SimpleNamespace

    from retrain.training.trainers import Recorder

    def evaluate(recorder, step, loss):
        control = SimpleNamespace(should_training_stop=False, should_save=False)
        state = SimpleNamespace(global_step=step, epoch=step, is_world_process_zero=True)
        recorder.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        return control

    first = Recorder(tmp_path, None, "sft", patience=2, max_wall_s=None, save_best=False)
    controls = [evaluate(first, step, loss) for step, loss in ((2, 1.0), (4, 1.2), (6, 1.3))]
    assert [c.should_save for c in controls] == [True] * 3  # a checkpoint at every evaluation
    assert controls[-1].should_training_stop and first.stop_step == 6
    # killed before the final adapter; resumed from checkpoint-4: steps 5 and 6 are replayed
    resumed = Recorder(tmp_path, None, "sft", patience=2, max_wall_s=None, save_best=False)
    replay = evaluate(resumed, 4, 1.25)
    assert not replay.should_training_stop and not replay.should_save and resumed.bad_evals == 2
    assert evaluate(resumed, 6, 1.3).should_training_stop and resumed.stopped_early
    assert [e["step"] for e in resumed.evals] == [2, 4, 6]
