"""What the machine can do, and the training settings that follow from it.

- Precision (`core.precision`, the rule serving uses too): bf16 mixed precision only on a GPU that runs it
  natively (compute capability >= 8; emulated bf16 is the slow path, as on this project's CPUs, where TRL's
  default `bf16=True` made a step ~14x slower); fp16 with loss scaling on older GPUs; fp32 on CPU. TF32 matmuls
  only at compute capability >= 8.
- Batch size: the largest per-device batch that fits, found with accelerate's `find_executable_batch_size`
  (halves on out-of-memory) on a real forward+backward; on CPU capped by `cpu_max_batch_size` instead (an
  out-of-memory there kills the process rather than raising).
- Gradient checkpointing: only when the probe cannot fit `min_batch` rows without it.
- Several processes: every rank probes its own GPU; all take the smallest batch (and checkpointing if any needs
  it), and accumulation counts the processes, so the examples per optimizer step stay the same.
- Packing (padding-free, position_ids reset per example; transformers builds the block-diagonal mask): on
  CUDA. On CPU examples are padded per batch.
"""

import logging
import os
from dataclasses import asdict, dataclass

import torch

from core import precision as precision_rule
from retrain.training import dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    n_devices: int
    name: str
    bf16: bool
    memory_gb: float | None
    cpu_threads: int
    tf32: bool = False
    capability: str | None = None  # CUDA compute capability, e.g. "9.0"

    def as_dict(self) -> dict:
        return asdict(self)


def detect() -> Hardware:
    """This process's device (under `accelerate launch` the rank's own GPU, once `dist.setup` has set it)."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        rule = precision_rule.of("cuda")
        return Hardware("cuda", torch.cuda.device_count(), props.name, rule.dtype == torch.bfloat16,
                        round(props.total_memory / 2**30, 1), os.cpu_count() or 1, tf32=rule.tf32,
                        capability="{}.{}".format(*rule.capability))
    return Hardware("cpu", 1, "cpu", False, None, torch.get_num_threads())


def precision(hw: Hardware, override: bool | None = None) -> dict:
    """TrainingArguments precision flags for this hardware (`override` forces bf16 on or off)."""
    if hw.device == "cpu":
        return {"bf16": bool(override), "fp16": False, "use_cpu": True}
    bf16 = hw.bf16 if override is None else override
    return {"bf16": bf16, "fp16": not bf16, "tf32": hw.tf32}  # fp16: the Trainer scales the loss


def use_packing(hw: Hardware, override: bool | None = None) -> bool:
    return override if override is not None else hw.device == "cuda"


def find_batch_size(step, start: int, hw: Hardware, cpu_cap: int = 8) -> int:
    """Largest batch `<= start` for which `step(batch_size)` (a forward+backward) runs without OOM."""
    if hw.device == "cpu":
        return max(1, min(start, cpu_cap))
    from accelerate.utils import find_executable_batch_size

    @find_executable_batch_size(starting_batch_size=start)
    def probe(batch_size: int) -> int:
        step(batch_size)
        return batch_size

    try:
        return probe()
    except RuntimeError as exc:  # "No executable batch size found, reached zero."
        log.warning("batch probe: %s", exc)
        return 0
    finally:
        torch.cuda.empty_cache()


def probe_step(model, seq_len: int, rows_per_example: int = 1):
    """A forward+backward on random tokens shaped like the worst-case batch (DPO: 2 rows per example)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size

    def step(batch_size: int) -> None:
        ids = torch.randint(0, vocab, (batch_size * rows_per_example, seq_len), device=device)
        with torch.autocast(device.type, dtype=precision_rule.of(device).dtype, enabled=device.type == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def plan_batch(model, hw: Hardware, *, seq_len: int, effective: int, fixed: int | None, cpu_cap: int,
               rows_per_example: int = 1, gradient_checkpointing: bool | None = None, min_batch: int = 4) -> dict:
    """Per-device batch, accumulation and gradient checkpointing, with the reasons."""
    if fixed:
        batch, gc = fixed, bool(gradient_checkpointing)
        why = f"fixed per-device batch {fixed}"
    elif hw.device == "cpu":
        batch, gc = max(1, min(effective, cpu_cap)), bool(gradient_checkpointing)
        why = f"CPU: batch capped at {cpu_cap} (no OOM probe)"
    else:
        start = max(effective, min_batch)
        gc = bool(gradient_checkpointing)
        if gc:
            model.gradient_checkpointing_enable()
        batch = find_batch_size(probe_step(model, seq_len, rows_per_example), start, hw)
        why = f"largest batch that fits (probe from {start} at {seq_len} tokens)"
        if gradient_checkpointing is None and batch < min_batch:
            model.gradient_checkpointing_enable()
            gc = True
            batch = find_batch_size(probe_step(model, seq_len, rows_per_example), start, hw)
            why += f"; gradient checkpointing on: without it fewer than {min_batch} rows fit"
    if dist.world_size() > 1:  # every rank trains the same micro-batch, or DDP hangs
        ranks_batch, ranks_gc = int(dist.agree_min(batch)), dist.agree_any(gc)
        if (ranks_batch, ranks_gc) != (batch, gc):
            why += f"; the smallest of {dist.world_size()} ranks' batches"
        batch, gc = ranks_batch, ranks_gc
    if hw.device == "cuda" and not fixed:
        if gc:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        if batch == 0:
            raise MemoryError("not even one example fits in GPU memory")
    batch = min(batch, effective) if effective else batch
    devices = dist.world_size() if dist.world_size() > 1 else max(1, hw.n_devices)  # processes, or DataParallel
    accumulation = max(1, -(-effective // (batch * devices)))
    batch = max(1, -(-effective // (accumulation * devices)))  # the same examples per step, in even micro-batches
    return {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
            "gradient_checkpointing": gc, "why": why}
