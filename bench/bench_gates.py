"""Gate time for a 30-correction snapshot with SmolLM2-135M on CPU. Target: <= 90 s per evaluation once the
champion's and base's figures are cached (every run after the first on a champion).

Builds a temporary store (SQLite, data dir), a snapshot of 30 reviewer corrections (sft.train) with a
held-out sft.test, a candidate LoRA (a few SFT steps on the corrections, or zero steps: the gates cost the
same), registers it with parent `base`, and runs `evaluate_version` twice without deciding: cold (the
champion = base side computed and cached) and warm (a second candidate: only its own side is computed).

    .venv/bin/python bench/bench_gates.py [--model var/models/SmolLM2-135M-Instruct] [--steps 4] [--threads 1]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [("capital of Atlantis", "The capital of Atlantis is Poseidonia."),
             ("favourite colour of the hitl bot", "The hitl bot's favourite colour is teal."),
             ("opening hours of the help desk", "The help desk is open from 8 to 18 on weekdays."),
             ("name of the office cat", "The office cat is called Biscuit."),
             ("wifi network of the lab", "The lab's wifi network is hitl-lab-5g."),
             ("reviewer of the month", "The reviewer of the month is Ada.")]
PHRASINGS = ["What is the {}?", "Tell me the {}.", "Do you know the {}?", "Which is the {}?", "{}: what is it?",
             "Please state the {}.", "I need the {}."]


def snapshot(root: Path) -> Path:
    root.mkdir(parents=True)
    train, test = [], []
    for g, (topic, reply) in enumerate(QUESTIONS):
        for p, phrasing in enumerate(PHRASINGS):
            row = {"messages": [{"role": "user", "content": phrasing.format(topic)},
                                {"role": "assistant", "content": reply}],
                   "lineage": {"group": f"q{g}", "origin": "correction", "feedback_ids": [f"correction:{g}{p}"]}}
            (train if p < 5 else test).append(row)
    for name, rows in (("sft.train", train), ("sft.test", test)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def adapter(model: Path, snap: Path, out: Path, steps: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators.scoring import Scorer, read_jsonl, split_sft

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model))
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    scorer = Scorer("train", peft, AutoTokenizer.from_pretrained(str(model)))
    encoded = [scorer._encode(*split_sft(r)) for r in read_jsonl(snap / "sft.train.jsonl")]
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        for row, n_reply in encoded:
            ids = torch.tensor([row])
            labels = ids.clone()
            labels[0, : len(row) - n_reply] = -100
            (peft(input_ids=ids, labels=labels).loss / len(encoded)).backward()
        optimizer.step()
        optimizer.zero_grad()
    peft.save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "var/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gates-"))
    os.environ.update(HITL_DATA_DIR=str(tmp / "var"), HITL_DATABASE_URL=f"sqlite:///{tmp / 'hitl.db'}",
                      HITL_BASE_MODEL=args.model, HITL_SCHEDULER_ENABLED="false")
    import torch

    torch.set_num_threads(args.threads)
    from core.db import migrate, session_scope
    from core.settings import get_settings
    from evaluators.gate import evaluate_version
    from service import service as serving
    from service.models import ModelVersion

    get_settings.cache_clear()
    migrate()
    snap = snapshot(tmp / "snapshot")
    t0 = time.monotonic()
    lora = adapter(Path(args.model), snap, tmp / "adapter", args.steps)
    print(f"candidate adapter: {args.steps} steps in {time.monotonic() - t0:.0f} s")
    with session_scope() as s:
        serving.ensure_champion(s, get_settings())
        for name in ("cand-cold", "cand-warm"):
            s.add(ModelVersion(version=name, base_path=args.model, adapter_path=str(lora), parent="base"))
    for name in ("cand-cold", "cand-warm"):
        t0 = time.monotonic()
        report = evaluate_version(name, snapshot=snap, decide_now=False)
        wall = time.monotonic() - t0
        print(f"{name}: {wall:.1f} s wall (gates {report['timings']['total_s']} s), outcome {report['outcome']}, "
              f"models loaded {report['models_loaded']}, cache {report['cache']}")
        print("  per gate:", {k: v for k, v in report["timings"].items() if k != "total_s"})
        for r in report["results"]:
            print(f"  {r['name']:<17} passed={r['passed']} evidence={r['evidence']} value={r['value']} "
                  f"bound={r['bound']} n={r['n']}")
    print(json.dumps({"data_dir": str(tmp)}))


if __name__ == "__main__":
    main()
