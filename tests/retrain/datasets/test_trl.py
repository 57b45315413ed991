"""The snapshot files load with `datasets` and train unchanged in TRL's SFT, DPO and KTO trainers
(one real optimizer step each on the tiny model)."""

import pytest

from core.db import session_scope
from retrain.datasets import service
from retrain.datasets.schemas import BuildOptions
from tests.retrain.datasets import factories as f


@pytest.fixture
def snapshot(settings):
    with session_scope() as s:
        r1, r2 = f.reviewer(s), f.reviewer(s)
        for i in range(4):
            _c, m = f.conversation(s, "Hi", "Hello!", f"What is {i} + {i}?", f"{i} + {i} is {2 * i + 1}.")
            f.correct(s, m[3], r1, f"{i} + {i} is {2 * i}.")
            _c, m = f.conversation(s, f"Name colour {i}", f"Colour {i} is blue.")
            f.rate(s, m[1], r2, all=5)
            a, b = f.candidate(s, m[1], f"Blue is colour {i}."), f.candidate(s, m[1], "No.")
            f.compare(s, m[1], r1, a.id, b.id, "a")
        snap = service.build_snapshot(s, settings, BuildOptions(validation_fraction=0, test_fraction=0))
        return snap.path, snap.counts


def _load(path, kind):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(f"{path}/{kind}.train.jsonl"), split="train")


def _changed(model, before) -> bool:
    return any(not p.detach().eq(before[n]).all() for n, p in model.named_parameters() if n in before)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_trl_trainers_accept_the_files(snapshot, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    path, counts = snapshot
    none = {"validation": 0, "test": 0}
    assert counts == {"sft": {"train": 8, **none}, "dpo": {"train": 8, **none}, "kto": {"train": 12, **none}}
    datasets = {k: _load(path, k) for k in ("sft", "dpo", "kto")}
    assert {"messages", "lineage"} <= set(datasets["sft"].column_names)
    assert {"prompt", "chosen", "rejected", "lineage"} <= set(datasets["dpo"].column_names)
    assert {"prompt", "completion", "label", "lineage"} <= set(datasets["kto"].column_names)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    common = dict(max_steps=1, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], bf16=False,
                  save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0)
    trainers = {
        "sft": (SFTTrainer, SFTConfig(output_dir=str(tmp_path / "sft"), max_length=256, **common)),
        "dpo": (DPOTrainer, DPOConfig(output_dir=str(tmp_path / "dpo"), max_length=256, **common)),
        "kto": (KTOTrainer, KTOConfig(output_dir=str(tmp_path / "kto"), max_length=256, **common)),
    }
    for kind, (cls, args) in trainers.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = cls(model=model, args=args, train_dataset=datasets[kind], processing_class=tokenizer)
        result = trainer.train()
        assert result.global_step == 1, kind
        assert _changed(model, before), f"{kind}: parameters did not change"
