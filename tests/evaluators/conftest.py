"""Fixtures of the evaluation tests: a snapshot in the SEAMS format, and tiny LoRA candidates really trained
on it (a few optimizer steps on CPU): `good` learns the reviewers' corrections, `flipped` learns the same
pairs with the labels flipped. Both get the same replay of general data, as the retrain pipeline mixes in."""

import json
from pathlib import Path

import pytest

# Reviewer corrections: prompt paraphrases -> corrected reply (chosen) vs the model's original (rejected).
FACTS = [
    (["What is the capital of France?", "Tell me the capital of France.", "France: what is the capital?",
      "Which is the capital of France?"], "The capital of France is Paris.",
     "The quick brown fox jumps over the lazy dog."),
    (["What is the boiling point of water?", "Water boils at what degrees?", "When does water boil?",
      "Tell me when water boils."], "Water boils at 100 degrees Celsius.",
     "Please tell me more about your question."),
]
GENERAL = [
    (["Hello!", "Hello, how are you?", "Hello there!", "Hi! Hello!"], "Hello! How can I help you today?"),
    (["Thanks for your help.", "Thanks!", "Thank you for the help.", "Thanks, that was helpful."],
     "Thanks for your feedback, I will try to do better."),
]
TRAIN, EVAL = slice(0, 3), slice(3, 4)  # per fact: three prompts to train on, one held out


def _sft(prompt: str, reply: str, ids: list[str], group: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
            "lineage": {"feedback_ids": ids, "reviewer_ids": [1], "conversation_id": None, "message_id": None,
                        "source": "feedback" if ids else "replay", "group": group,
                        "origin": "correction" if ids else None}}


def _dpo(prompt: str, chosen: str, rejected: str, ids: list[str], group: str | None = None) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "lineage": {"feedback_ids": ids, "reviewer_ids": [1], "source": "feedback", "group": group}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_snapshot(root: Path, correction_ids: list[int] | None = None) -> Path:
    """A snapshot folder: sft/dpo train+test JSONL with lineage (one question group per fact), and a manifest."""
    root.mkdir(parents=True, exist_ok=True)
    counter = iter(correction_ids or range(1, 1000))
    rows: dict[str, list[dict]] = {"sft.train": [], "sft.test": [], "dpo.train": [], "dpo.test": []}
    for fact, (prompts, chosen, rejected) in enumerate(FACTS):
        for split, part in (("train", TRAIN), ("test", EVAL)):
            for prompt in prompts[part]:
                ids = [f"correction:{next(counter)}"]
                rows[f"sft.{split}"].append(_sft(prompt, chosen, ids, f"fact-{fact}"))
                rows[f"dpo.{split}"].append(_dpo(prompt, chosen, rejected, ids, f"fact-{fact}"))
    for prompts, reply in GENERAL:  # replay rows (not feedback) in the training split only
        rows["sft.train"] += [_sft(p, reply, []) for p in prompts[TRAIN]]
    for name, data in rows.items():
        write_jsonl(root / f"{name}.jsonl", data)
    (root / "manifest.json").write_text(json.dumps({"counts": {k: len(v) for k, v in rows.items()}}))
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a loaded 2-core machine run ~10x faster on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_serving_thread(monkeypatch):
    """The live server's model on one thread too (read when the app starts)."""
    monkeypatch.setenv("HITL_TORCH_THREADS", "1")


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory) -> Path:
    return build_snapshot(tmp_path_factory.mktemp("snapshot"))


def forgetting_item(i: int, question: str, answers: list[str], reference: str, category: str = "general",
                    **extra) -> dict:
    """A row of the general forgetting set (the format of evaluators/data/forgetting.jsonl)."""
    return {"id": f"q{i}", "category": category, "messages": [{"role": "user", "content": question}],
            "answers": answers, "reference": reference, "source": "test", **extra}


@pytest.fixture(scope="session")
def general_set(tmp_path_factory) -> Path:
    """The forgetting set: held-out prompts of the general replies (disjoint from the replay rows)."""
    rows = [forgetting_item(i, p, ["help"], reply) for i, (p, reply) in
            enumerate((p, reply) for prompts, reply in GENERAL for p in prompts[EVAL])]
    return write_jsonl(tmp_path_factory.mktemp("general") / "forgetting.jsonl", rows)


@pytest.fixture(scope="session")
def golden_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "golden.yaml"
    path.write_text("prompts:\n  - id: capital\n    prompt: What is the capital of France?\n"
                    "    must_contain: [Paris]\n    max_tokens: 24\n")
    return path


def train_adapter(base: Path, rows: list[tuple[list[dict], str]], out: Path, steps: int = 40, lr: float = 1.5e-2,
                  seed: int = 0) -> Path:
    """LoRA on every linear layer, full-batch AdamW, loss on the reply tokens only. The tiny random model's
    output scale is tied to its near-zero embeddings, so the head and norms train too (`modules_to_save`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(base, rows, out, steps, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _train(base: Path, rows: list[tuple[list[dict], str]], out: Path, steps: int, lr: float, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evaluators.scoring import Scorer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                modules_to_save=["lm_head", "norm"]))
    scorer = Scorer("train", model, None)
    from transformers import AutoTokenizer

    scorer.tokenizer = AutoTokenizer.from_pretrained(str(base))
    encoded = [scorer._encode(p, r) for p, r in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = scorer.tokenizer.pad_token_id
    ids = torch.full((len(encoded), width), pad)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (row, n_reply) in enumerate(encoded):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        labels[i, len(row) - n_reply: len(row)] = torch.tensor(row[len(row) - n_reply:])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return out


def training_rows(snapshot: Path, flipped: bool) -> list[tuple[list[dict], str]]:
    """SFT on the corrections (or, flipped, on the rejected originals) plus the replay rows."""
    from evaluators.scoring import read_jsonl, split_sft

    rows = []
    for row in read_jsonl(snapshot / "sft.train.jsonl"):
        prompt, reply = split_sft(row)
        if flipped and row["lineage"]["source"] == "feedback":
            reply = next(rejected for _, chosen, rejected in FACTS if chosen == reply)
        rows.append((prompt, reply))
    return rows


@pytest.fixture(scope="session")
def good_adapter(tiny_model_dir, snapshot, tmp_path_factory) -> Path:
    return train_adapter(tiny_model_dir, training_rows(snapshot, False), tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="session")
def flipped_adapter(tiny_model_dir, snapshot, tmp_path_factory) -> Path:
    return train_adapter(tiny_model_dir, training_rows(snapshot, True), tmp_path_factory.mktemp("flipped"))


@pytest.fixture
def policy(general_set, golden_file) -> dict:
    from evaluators.gate import load_policy

    return load_policy(overrides=TINY_POLICY | {"forgetting": TINY_POLICY["forgetting"] | {"path": str(general_set)},
                                                "golden": {"path": str(golden_file)}})


# The tiny random model knows no general answers and the fixture snapshot holds two question groups:
# minimum evidence is lowered to what the fixtures have (the statistics themselves are unchanged).
TINY_POLICY = {"forgetting": {"max_new_tokens": 12, "min_n": 0}, "cumulative": {"min_n": 0},
               "heldout": {"min_n": 2}, "preference": {"min_n": 2}}


def register(session, version: str, adapter: Path | None, base: Path, **kw):
    from service.models import ModelVersion

    row = ModelVersion(version=version, base_path=str(base), adapter_path=str(adapter) if adapter else None,
                       parent=kw.pop("parent", "base"), **kw)
    session.add(row)
    session.flush()
    return row
