"""Training overhead: hitl's SFT step (TRL SFTTrainer + LoRA, as a retrain stage builds it) ÷ a plain PyTorch
forward+backward+AdamW step on the same model and the same batches; plus tokens/s and peak memory.

    .venv/bin/python bench/bench_training.py                      # real SmolLM2-135M, CPU
    .venv/bin/python bench/bench_training.py --model PATH --steps 20 --batch 4 --threads 1

Target (PRODUCT.md): ratio <= 1.3 on CPU. The plain loop runs before and after the trainer (half the steps
each) so drift on a shared machine falls on both sides; medians of per-step wall times are compared.
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrain.training import hardware  # noqa: E402
from retrain.training.config import load_config  # noqa: E402
from retrain.training.trainers import lora_config, to_trl_rows, trl_args, trl_classes  # noqa: E402


def rows(n: int) -> list[dict]:
    lines = (ROOT / "retrain/datasets/data/general.jsonl").read_text().splitlines()
    return [{"messages": json.loads(line)["messages"]} for line in lines[:n]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "var/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--steps", type=int, default=16, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    hw = hardware.detect()
    n_steps = args.warmup + args.steps
    config = load_config(data={"sft": {"max_steps": n_steps, "effective_batch_size": args.batch,
                                       "per_device_train_batch_size": args.batch, "max_length": 256},
                               "save_steps": 10**6, "logging_steps": 10**6})
    batch = {"per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False}
    train = to_trl_rows("sft", rows(args.batch * n_steps))
    out = Path("/tmp/hitl-bench-training")
    targs = trl_args("sft", config.sft, config, hw, batch, out, False, train)
    targs.save_strategy = "no"
    tok = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if targs.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(hw.device)

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if hw.device == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if hw.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    _, trainer_cls = trl_classes("sft", hw.device)  # what a retrain stage uses on this device
    trainer = trainer_cls(model=model, args=targs, train_dataset=Dataset.from_list(train), processing_class=tok,
                         peft_config=lora_config(config.sft), callbacks=[StepTimer()])
    batches = [b for _, b in zip(range(n_steps), trainer.get_train_dataloader())]
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    peft_model = trainer.model

    def plain(count: int) -> list[float]:
        """forward + backward + AdamW step on the same PEFT model and batches, nothing else."""
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        peft_model.train()
        out_times = []
        for i in range(count):
            b = {k: v.to(hw.device) for k, v in batches[i % len(batches)].items()
                 if k in ("input_ids", "attention_mask", "labels")}
            if hw.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(hw.device, dtype=torch.bfloat16, enabled=targs.bf16):
                loss = peft_model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if hw.device == "cuda":
                torch.cuda.synchronize()
            out_times.append(time.perf_counter() - t)
        return out_times

    half = args.warmup + args.steps // 2
    before = plain(half)[args.warmup:]
    trainer.train()
    hitl_times = times[args.warmup:]
    after = plain(half)[args.warmup:]
    plain_times = before + after
    hitl_med, plain_med = statistics.median(hitl_times), statistics.median(plain_times)
    mean_tokens = statistics.mean(tokens)
    result = {
        "device": hw.device, "threads": torch.get_num_threads(), "model": Path(args.model).name,
        "batch": args.batch, "mean_tokens_per_batch": round(mean_tokens, 1), "steps": len(hitl_times),
        "precision": "bf16" if targs.bf16 else "fp32",
        "hitl_step_s_median": round(hitl_med, 4), "plain_step_s_median": round(plain_med, 4),
        "ratio_hitl_over_plain": round(hitl_med / plain_med, 3),
        "hitl_tokens_per_s": round(mean_tokens / hitl_med, 1), "plain_tokens_per_s": round(mean_tokens / plain_med, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if hw.device == "cuda":
        result["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result, indent=2))
    print(f"hitl SFT step / plain forward+backward = {result['ratio_hitl_over_plain']} (target <= 1.3)")


if __name__ == "__main__":
    main()
