"""The training budget of a stage, sized by its data: optimizer steps and tokens, not epochs.

A nightly run usually sees a small, fresh batch of feedback. Counted in epochs at a learning rate meant for
large datasets, 25 corrections gave 6 optimizer steps and taught nothing. So the budget is:

- **Examples per step** from a token budget per step (`batch_tokens` over the mean example length), at most
  a fifth of the train rows so that even a small snapshot gets several steps per pass.
- **Examples seen**: `epochs` passes over a large snapshot, but at least `min_examples` in all (a small one
  repeats its rows, up to `max_passes` times), and at most `max_tokens` tokens.
- **Steps** = examples seen / examples per step; the same count on CPU and GPU (packing changes how rows are
  laid out, not how many examples a step holds).
- **Learning rate** from the model's width and the LoRA rank: 2e-4 is the usual LoRA rate at width 4096 and
  rank 16; it grows as 1/width (µP: the update of a matrix scales with its fan-in) and shrinks as 1/sqrt(rank)
  (the adapter's update norm grows with sqrt(rank) at a fixed alpha/rank). DPO and KTO take a tenth of it.
- **Warm-up**: `warmup_ratio` of the steps, at least one.
- **Validation**: `evaluations` evenly spaced evaluations of the validation loss (early stopping and the kept
  checkpoint use them).
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from retrain.training.config import MethodConfig

REFERENCE_WIDTH, REFERENCE_RANK, REFERENCE_LR = 4096, 16, 2e-4
PREFERENCE_LR_SHARE = 0.1  # DPO / KTO learning rate as a share of SFT's
# A small snapshot gets at least this many optimizer steps per pass. At the same examples seen, 21 FAQ
# corrections of ~25 words on SmolLM2 were 3 of 21 learned with 10 per step (21 steps) and 20 of 21 with 4
# per step (53 steps): more updates, not more compute, is what a small batch of feedback needs.
MIN_STEPS_PER_PASS = 5
LR_RANGE = (1e-5, 2e-3)


@dataclass
class Budget:
    steps: int
    examples_per_step: int
    examples_seen: int
    passes: float
    tokens_per_example: float
    tokens: int
    learning_rate: float
    warmup_steps: int
    eval_steps: int
    why: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate(method: str, opts: MethodConfig, width: int) -> tuple[float, str]:
    """The configured rate, else one that follows the model's width and the LoRA rank."""
    if opts.learning_rate:
        return opts.learning_rate, f"learning rate {opts.learning_rate:g} (configured)"
    lr = REFERENCE_LR * (REFERENCE_WIDTH / width) * math.sqrt(REFERENCE_RANK / opts.lora_r)
    share = 1.0 if method == "sft" else PREFERENCE_LR_SHARE
    lr = min(max(lr * share, LR_RANGE[0]), LR_RANGE[1] * share)
    return lr, (f"learning rate {lr:.2g} = {REFERENCE_LR:g} x width {REFERENCE_WIDTH}/{width} x "
                f"sqrt(rank {REFERENCE_RANK}/{opts.lora_r})" + ("" if method == "sft" else
                                                                 f" x {PREFERENCE_LR_SHARE:g} ({method})"))


def size(method: str, opts: MethodConfig, *, rows: int, tokens_per_example: float, width: int) -> Budget:
    """The budget for `rows` train examples of `tokens_per_example` tokens on a model of hidden size `width`."""
    rows, tpe = max(1, rows), max(1.0, tokens_per_example)
    why = []
    if opts.effective_batch_size:
        per_step = opts.effective_batch_size
        why.append(f"{per_step} examples per step (configured)")
    else:
        per_step = max(1, min(round(opts.batch_tokens / tpe), rows // MIN_STEPS_PER_PASS))
        why.append(f"{per_step} examples per step: {opts.batch_tokens} tokens per step / {tpe:.0f} tokens per "
                   f"example, at most a {MIN_STEPS_PER_PASS}th of the {rows} train rows")
    seen = max(opts.epochs * rows, min(opts.min_examples, opts.max_passes * rows))
    why.append(f"{seen:.0f} examples seen: {opts.epochs:g} passes over {rows} rows, at least {opts.min_examples} "
               f"(up to {opts.max_passes:g} passes)")
    if seen * tpe > opts.max_tokens:
        seen = opts.max_tokens / tpe
        why.append(f"capped at {opts.max_tokens} tokens ({seen:.0f} examples)")
    steps = max(1, math.ceil(seen / per_step))
    if opts.max_steps:
        steps = opts.max_steps
        why.append(f"{steps} steps (configured max_steps)")
    lr, lr_why = learning_rate(method, opts, width)
    why.append(lr_why)
    warmup = max(1, round(opts.warmup_ratio * steps))
    evaluations = max(1, min(opts.evaluations, steps))
    eval_steps = max(1, math.ceil(steps / evaluations))
    why.append(f"{steps} optimizer steps, warm-up {warmup}, validation every {eval_steps} steps")
    return Budget(steps=steps, examples_per_step=per_step, examples_seen=steps * per_step,
                  passes=round(steps * per_step / rows, 2), tokens_per_example=round(tpe, 1),
                  tokens=round(steps * per_step * tpe), learning_rate=lr, warmup_steps=warmup,
                  eval_steps=eval_steps, why=why)
