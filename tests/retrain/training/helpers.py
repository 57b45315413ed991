"""Small snapshots in the SEAMS format, written by hand (the dataset builder is tested elsewhere)."""

import json
from pathlib import Path


def sft_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is the capital of France? ({i})"},
                         {"role": "assistant", "content": "The capital of France is Paris."}],
            "lineage": {"conversation_id": f"conv_{i}", "feedback_ids": [f"correction:{i}"], "source": "feedback"}}


def dpo_row(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Hello {i}"}],
            "chosen": [{"role": "assistant", "content": "Hello! How can I help you today?"}],
            "rejected": [{"role": "assistant", "content": "No."}],
            "lineage": {"conversation_id": f"conv_{i}", "source": "feedback"}}


def kto_row(i: int) -> dict:
    good = i % 2 == 0
    return {"prompt": [{"role": "user", "content": f"Thanks {i}"}],
            "completion": [{"role": "assistant", "content": "Thanks for your feedback!" if good else "Whatever."}],
            "label": good, "lineage": {"conversation_id": f"conv_{i}", "source": "feedback"}}


ROWS = {"sft": sft_row, "dpo": dpo_row, "kto": kto_row}


def write_snapshot(path: Path, train: int = 8, eval_: int = 2, kinds=("sft", "dpo", "kto")) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for kind in ("sft", "dpo", "kto"):
        n_train, n_eval = (train, eval_) if kind in kinds else (0, 0)
        for split, ids in (("train", range(n_train)), ("validation", range(1000, 1000 + n_eval))):
            rows = [ROWS[kind](i) for i in ids]
            (path / f"{kind}.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fast_config(snapshot: Path | None = None, steps: int = 2, **extra) -> dict:
    """A run config that trains a handful of steps on the tiny model."""
    method = {"max_steps": steps, "learning_rate": 1e-2, "effective_batch_size": 4, "lora_r": 4, "lora_alpha": 8,
              "max_length": 128}
    config = {"sft": dict(method), "dpo": dict(method), "kto": dict(method, min_rows=4), "logging_steps": 1,
              "save_steps": 1, "evaluate": False, "search_lr_factors": [1.0], "torch_threads": 1}
    if snapshot is not None:
        config["snapshot_path"] = str(snapshot)
    config.update(extra)
    return config
