"""GPU training throughput: LoRA SFT on SmolLM2-135M with packing (padding-free), as a retrain stage
configures it on CUDA (bf16, packing, largest batch). Reports tokens/s and MFU.

    .venv/bin/python bench/gpu_train.py                       # on an H100 (target >= 60k tokens/s)
    .venv/bin/python bench/gpu_train.py --steps 30 --max-length 2048 --batch 32
    .venv/bin/python bench/gpu_train.py --allow-cpu --model PATH --steps 3 --batch 2 --max-length 128  # smoke test

MFU = achieved FLOP/s ÷ peak (H100 SXM dense bf16: 989 TFLOP/s; `--peak-tflops`). FLOPs per trained token:
6·N (the usual full fine-tune convention) and 4·N + attention (LoRA: frozen weights need no weight gradient),
with attention 12·layers·hidden·seq_len/2 (causal, mean context of a packed row). Both are printed.
"""

import argparse
import importlib.util
import json
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


def rows(n_rows: int) -> list[dict]:
    lines = (ROOT / "retrain/datasets/data/general.jsonl").read_text().splitlines()
    base = [json.loads(line)["messages"] for line in lines]
    return [{"messages": [dict(m, content=f"{m['content']} ({i})" if m["role"] == "user" else m["content"])
                          for m in base[i % len(base)]]} for i in range(n_rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "var/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="packed rows per device step")
    parser.add_argument("--max-length", type=int, default=2048, help="packed row length")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--attn", default="auto", help="attention implementation (auto: flash_attention_2 if "
                                                        "installed, else sdpa)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()

    hw = hardware.detect()
    if hw.device != "cuda" and not args.allow_cpu:
        sys.exit("no CUDA device (use --allow-cpu for a smoke test)")
    attn = args.attn
    if attn == "auto":
        attn = "flash_attention_2" if hw.device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    n_steps = args.warmup + args.steps
    config = load_config(data={"sft": {"max_steps": n_steps, "effective_batch_size": args.batch,
                                       "per_device_train_batch_size": args.batch, "max_length": args.max_length,
                                       "packing": True},
                               "save_steps": 10**6, "logging_steps": 10**6})
    batch = {"per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False}
    tok = AutoTokenizer.from_pretrained(args.model)
    avg_tokens = 60  # general.jsonl rows are short; make enough rows to fill every packed step
    train = to_trl_rows("sft", rows(int(n_steps * args.batch * args.max_length / avg_tokens * 1.3) + 64))
    targs = trl_args("sft", config.sft, config, hw, batch, Path("/tmp/hitl-gpu-train"), False, train)
    targs.save_strategy = "no"
    targs.packing, targs.padding_free = True, True
    dtype = torch.bfloat16 if targs.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=attn).to(hw.device)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config

    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **k):
            if hw.device == "cuda":
                torch.cuda.synchronize()
            self.t, self.seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, a, state, control, **k):
            if hw.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)
            tokens.append(state.num_input_tokens_seen - self.seen)

    targs.include_num_input_tokens_seen = "non_padding"
    _, trainer_cls = trl_classes("sft", hw.device)
    trainer = trainer_cls(model=model, args=targs, train_dataset=Dataset.from_list(train), processing_class=tok,
                          peft_config=lora_config(config.sft), callbacks=[Timer()])
    if args.compile:
        trainer.model = torch.compile(trainer.model)
    trainer.train()
    step_s = statistics.median(times[args.warmup:])
    tok_step = statistics.median(tokens[args.warmup:]) or args.batch * args.max_length
    tps = tok_step / step_s
    attn_flops = 12 * cfg.num_hidden_layers * cfg.hidden_size * (args.max_length / 2)
    peak = args.peak_tflops * 1e12
    result = {
        "device": hw.name, "attn": attn, "precision": "bf16" if targs.bf16 else "fp32", "packing": True,
        "params": n_params, "batch_rows": args.batch, "max_length": args.max_length,
        "tokens_per_step": tok_step, "step_s_median": round(step_s, 4), "tokens_per_s": round(tps),
        "mfu_6N": round(tps * 6 * n_params / peak, 4), "mfu_lora_4N_plus_attn": round(tps * (4 * n_params + attn_flops) / peak, 4),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if hw.device == "cuda" else None,
    }
    print(json.dumps(result, indent=2))
    print(f"tokens/s = {result['tokens_per_s']} (H100 target >= 60000); MFU(6N) = {result['mfu_6N']:.1%}")


if __name__ == "__main__":
    main()
