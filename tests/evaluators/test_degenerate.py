"""Degenerate candidates through the real trainer (`train_stage`, TRL + PEFT LoRA) and the real gates
(`evaluate_version`): each is rejected, or held as insufficient evidence, with the gate named in the reasons.

The tiny random model knows nothing, so the module first teaches it 16 one-word facts with `train_stage("sft")`:
that adapter is the champion (registered and promoted, parent `base`). Every candidate is a further
`train_stage` on the champion (`merge=[champion]`), stacked into one adapter with `concat_adapters` as
`hitl/pipeline.py::train` does (chaining `stack`), and registered with the champion as parent:

- empty output: SFT whose replies are empty -> it answers nothing -> forgetting / cumulative fail -> rejected;
- poisoning: SFT on the same questions with the answers swapped -> forgetting / cumulative fail -> rejected;
- reversed DPO: DPO on pairs whose chosen / rejected replies are swapped -> preference fails -> rejected;
- a 2-row eval set: a harmless candidate (a few small steps on the facts it already knows) with a snapshot whose
  sft.test holds 2 question groups -> heldout insufficient -> insufficient_evidence, nothing moves.

A fifth test drives `run_gates` with crafted answers: a candidate that loses 4 of 13 known answers is rejected.
"""

from pathlib import Path

import pytest

from core.db import session_scope
from evaluators import gate, registry
from evaluators.gate import evaluate_version, load_policy
from service import service as serving
from service.models import ModelAlias, ModelVersion, VersionStatus
from tests.evaluators.conftest import forgetting_item, register, write_jsonl

sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)

# Words the tiny tokenizer was trained on (tests/factories.py CORPUS): short token sequences.
WORDS = ["Paris", "fox", "dog", "water", "brown", "lazy", "quick", "help", "today", "better", "question",
         "feedback", "degrees", "Celsius", "France", "capital"]
FACTS = [(f"What is word {i}?", word) for i, word in enumerate(WORDS)]
SWAPPED = [(q, WORDS[(i + 1) % len(WORDS)]) for i, (q, _) in enumerate(FACTS)]  # every answer another fact's
NEW = [("What is word 16?", "jumps"), ("What is word 17?", "Thanks")]  # taught by the 2-row eval set's candidate
SYSTEM = [{"role": "system", "content": "Answer with one word."}]  # dpo.test prompts: other rows than dpo.train

# LoRA on the tiny model: with its tied embeddings at init scale (~0.02) the logits stay near uniform and
# whether a fact comes out on top depended on the CPU's arithmetic (1 of 16 on one machine, 15 on another).
# This module's tiny model has embeddings 5x larger: 800 constant-rate steps get all 16 facts.
METHOD = {"effective_batch_size": 16, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "max_length": 64,
          "warmup_ratio": 0.0, "lr_scheduler_type": "constant"}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model with sharper logits (embeddings x5), for this module's trained champion and candidates."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.factories import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("sharp-tiny-model"))
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(5.0)
    model.save_pretrained(path)
    return path


def _config(steps: int, lr: float):
    from retrain.training.config import from_dict

    method = dict(METHOD, max_steps=steps, learning_rate=lr)
    return from_dict({"sft": method, "dpo": method, "logging_steps": 100, "save_steps": 10_000,
                      "search_lr_factors": [1.0], "torch_threads": 1})


def _sft(question: str, answer: str, group: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "lineage": {"group": group, "source": "feedback", "origin": "correction"}}


def _dpo(question: str, chosen: str, rejected: str, group: str, system: bool = False) -> dict:
    return {"prompt": [*(SYSTEM if system else []), {"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "lineage": {"group": group, "source": "feedback"}}


def _snapshot(root: Path, **splits: list[dict]) -> Path:
    root.mkdir(parents=True)
    for name, rows in splits.items():
        write_jsonl(root / f"{name.replace('_', '.')}.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> dict:
    """The champion adapter, the stacked candidates and their snapshots (trained once for the module)."""
    from retrain.training.adapters import concat_adapters
    from retrain.training.trainers import train_stage

    root = tmp_path_factory.mktemp("degenerate")
    general = write_jsonl(root / "facts.jsonl",
                          [forgetting_item(i, q, [a], a) for i, (q, a) in enumerate(FACTS)])
    golden = root / "golden.yaml"  # a neutral golden prompt: no regression possible, golden is not under test
    golden.write_text("prompts:\n  - id: neutral\n    prompt: Hello!\n    must_not_contain: ['#####']\n"
                      "    max_tokens: 8\n")

    facts = [_sft(q, a, f"fact-{i}") for i, (q, a) in enumerate(FACTS)]
    champion = train_stage("sft", _config(800, 1e-2), base_path=tiny_model_dir, merge=[], train=facts,
                           eval_rows=[], out=root / "champion")
    champion_adapter = root / "champion" / "final"

    def candidate(name: str, method: str, rows: list[dict], steps: int, lr: float) -> Path:
        train_stage(method, _config(steps, lr), base_path=tiny_model_dir, merge=[champion_adapter], train=rows,
                    eval_rows=[], out=root / name / "stage")
        return concat_adapters([champion_adapter, root / name / "stage" / "final"], root / name / "candidate")

    out = {"general": general, "golden": golden, "champion": champion_adapter, "champion_steps": champion["steps"]}
    out["empty"] = candidate("empty", "sft", [_sft(q, "", f"fact-{i}") for i, (q, _) in enumerate(FACTS)], 150, 1e-2)
    out["empty_snapshot"] = _snapshot(root / "snap-empty", sft_train=[_sft(q, "") for q, _ in FACTS])
    poison = [_sft(q, a, f"fact-{i}") for i, (q, a) in enumerate(SWAPPED)]
    out["poison"] = candidate("poison", "sft", poison, 400, 1e-2)
    out["poison_snapshot"] = _snapshot(root / "snap-poison", sft_train=poison)
    # reviewers' pairs say "right over wrong"; the degenerate DPO stage trained on them reversed
    right_over_wrong = [_dpo(q, a, w, f"fact-{i}") for i, ((q, a), (_, w)) in enumerate(zip(FACTS, SWAPPED))]
    reversed_pairs = [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in right_over_wrong]
    out["reversed"] = candidate("reversed", "dpo", reversed_pairs, 100, 1e-2)
    out["reversed_snapshot"] = _snapshot(
        root / "snap-reversed", dpo_train=right_over_wrong,
        dpo_test=[_dpo(q, a, w, f"fact-{i}", system=True) for i, ((q, a), (_, w)) in enumerate(zip(FACTS, SWAPPED))])
    # a sound candidate: two new facts (replaying the known ones); its 2 test rows ask the new ones again with a
    # system prompt (other rows than the train split), where it does better than the champion
    new = [_sft(q, a, f"new-{i}") for i, (q, a) in enumerate(NEW)]
    out["thin"] = candidate("thin", "sft", facts + new, 5, 1e-4)  # barely moves: 40 steps at 1e-2 lost facts on some CPUs
    held = [dict(row, messages=[*SYSTEM, *row["messages"]]) for row in new]
    out["thin_snapshot"] = _snapshot(root / "snap-thin", sft_train=facts + new, sft_test=held)
    return out


@pytest.fixture
def policy(trained) -> dict:
    # Evidence minimums fitted to the module's 16-fact general set (the default 30 known answers would need
    # a set the tiny model cannot learn in seconds); margins, budget and confidence stay the defaults.
    # The cumulative reference is pinned to the trained champion: the registry root `base` is the random
    # tiny model, which knows none of the facts, so drift against it could never be measured.
    general = str(trained["general"])
    return load_policy(overrides={
        "forgetting": {"path": general, "min_n": 10, "max_new_tokens": 8, "batch_size": 16},
        "cumulative": {"min_n": 10, "reference": "champ"},
        "golden": {"path": str(trained["golden"])},
    })


def _setup(settings, tiny_model_dir: Path, trained: dict, name: str) -> None:
    """`base` (registry root), then the trained champion promoted over it, then the candidate `name`."""
    with session_scope() as s:
        serving.ensure_champion(s, settings)
        register(s, "champ", trained["champion"], tiny_model_dir)
        registry.promote(s, "champ", actor="test", reason="trained on the facts")
    with session_scope() as s:
        register(s, name, trained[name], tiny_model_dir, parent="champ")


def _evaluate(settings, tiny_model_dir, trained, policy, name: str) -> tuple[dict, dict]:
    _setup(settings, tiny_model_dir, trained, name)
    report = evaluate_version(name, snapshot=trained[f"{name}_snapshot"], policy=policy, actor="test")
    results = {r["name"]: r for r in report["results"]}
    champ_known = results["forgetting"]["details"]["answers_known_by_champion"]
    assert champ_known >= 10, f"the champion learned only {champ_known} of {len(FACTS)} facts"
    return report, results


def _assert_rejected(report: dict, name: str, gates: tuple[str, ...]) -> None:
    assert report["decision"] == "rejected" and not report["passed"], report["reasons"]
    assert any(r.startswith(f"{g}:") for r in report["reasons"] for g in gates), report["reasons"]
    with session_scope() as s:
        assert s.get(ModelVersion, name).status == VersionStatus.rejected
        assert s.get(ModelAlias, "champion").version == "champ"


@sqlite_only
def test_empty_output_candidate_is_rejected_for_forgetting(settings, tiny_model_dir, trained, policy):
    report, results = _evaluate(settings, tiny_model_dir, trained, policy, "empty")
    forgetting, cumulative = results["forgetting"], results["cumulative"]
    answers = [e["candidate"] for e in forgetting["details"]["examples"]]
    assert answers and all(a == "" for a in answers), answers  # it answers nothing
    assert forgetting["passed"] is False and forgetting["candidate"] == 0.0
    assert forgetting["details"]["answers_lost"] == forgetting["details"]["answers_known_by_champion"]
    assert cumulative["passed"] is False and cumulative["details"]["reference"] == "champ"
    _assert_rejected(report, "empty", ("forgetting",))
    assert any(r.startswith("cumulative:") for r in report["reasons"])


@sqlite_only
def test_poisoned_candidate_is_rejected_for_forgetting(settings, tiny_model_dir, trained, policy):
    report, results = _evaluate(settings, tiny_model_dir, trained, policy, "poison")
    forgetting = results["forgetting"]
    assert forgetting["passed"] is False and forgetting["bound"] > forgetting["threshold"], forgetting["note"]
    assert forgetting["details"]["answers_lost"] >= forgetting["details"]["answers_known_by_champion"] // 2
    assert results["cumulative"]["passed"] is False
    _assert_rejected(report, "poison", ("forgetting", "cumulative"))


@sqlite_only
def test_reversed_dpo_candidate_is_rejected_for_preference(settings, tiny_model_dir, trained, policy):
    report, results = _evaluate(settings, tiny_model_dir, trained, policy, "reversed")
    preference = results["preference"]
    assert preference["n"] == len(FACTS) and preference["evidence"] == "sufficient"
    assert preference["passed"] is False and preference["value"] < 0.5, preference
    assert preference["candidate"] < preference["champion"]  # it now prefers the wrong answers more often
    assert results["heldout"]["evidence"] == "not_applicable"  # no SFT rows in this snapshot
    _assert_rejected(report, "reversed", ("preference",))


@sqlite_only
def test_two_row_eval_set_is_insufficient_evidence_naming_heldout(settings, tiny_model_dir, trained, policy):
    report, results = _evaluate(settings, tiny_model_dir, trained, policy, "thin")
    heldout = results["heldout"]
    assert heldout["n"] == 2 and heldout["min_n"] == 5 and heldout["passed"] is None, heldout
    assert heldout["evidence"] == "insufficient"
    assert results["forgetting"]["passed"] is not False and results["cumulative"]["passed"] is not False, (
        results["forgetting"]["note"], results["cumulative"]["note"])
    assert report["decision"] == "insufficient_evidence" and not report["passed"], report["reasons"]
    assert any(r.startswith("heldout: insufficient evidence; has 2, needs 5") for r in report["reasons"])
    with session_scope() as s:
        assert s.get(ModelVersion, "thin").status == VersionStatus.candidate
        assert s.get(ModelAlias, "champion").version == "champ"


class Crafted:
    """Answers the questions in `known` with their last word; scores every reply alike."""

    def __init__(self, version: str, known: set[str]):
        self.version, self.known, self.loaded = version, known, True

    def generate(self, prompts, max_new_tokens=64, guesses=None):
        return [f"It is {p[-1]['content'].split()[-1].rstrip('?')}." if p[-1]["content"] in self.known else "No idea."
                for p in prompts]

    def score(self, items):
        return [(-4.0, 4) for _ in items]


def test_losing_four_of_thirteen_known_answers_is_rejected_through_run_gates(tmp_path, monkeypatch):
    from core.settings import Settings

    questions = [f"Which word ends question {i} zq{i}?" for i in range(40)]
    general = write_jsonl(tmp_path / "general.jsonl", [forgetting_item(i, q, [f"zq{i}"], f"It is zq{i}.")
                                                       for i, q in enumerate(questions)])
    golden = tmp_path / "golden.yaml"
    golden.write_text("prompts:\n  - id: neutral\n    prompt: Hello!\n    must_not_contain: ['#####']\n")
    knows = {"champ": set(questions[:13]), "cand": set(questions[4:13])}  # lost 4 of 13, gained none
    monkeypatch.setattr(gate, "_scorer", lambda row, settings, batch: Crafted(row.version, knows[row.version]))
    # 13 known answers: min_n lowered to 10 to reach a sufficient-evidence verdict (margins are the defaults)
    policy = load_policy(overrides={"forgetting": {"path": str(general), "min_n": 10},
                                    "cumulative": {"min_n": 10}, "golden": {"path": str(golden)}})
    champ, cand = ModelVersion(version="champ", base_path="-"), ModelVersion(version="cand", base_path="-")
    report = gate.run_gates(cand, champ, None, policy, settings=Settings(data_dir=tmp_path / "var"), reference=champ)
    results = {r["name"]: r for r in report["results"]}
    forgetting = results["forgetting"]
    details = forgetting["details"]
    assert (details["answers_lost"], details["answers_gained"], forgetting["n"]) == (4, 0, 13)
    assert forgetting["value"] == pytest.approx(4 / 13) and forgetting["bound"] > 0.10
    assert forgetting["passed"] is False and forgetting["evidence"] == "sufficient"
    assert results["cumulative"]["passed"] is False  # the champion is the pinned reference here: the same loss
    assert report["outcome"] == "failed" and not report["passed"]
    assert any(r.startswith("forgetting: net answer drop") for r in report["reasons"]), report["reasons"]
