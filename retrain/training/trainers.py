"""One training stage (SFT, DPO or KTO) with TRL + PEFT LoRA, restartable from its last checkpoint.

A stage directory holds `checkpoints/checkpoint-N` (every `save_steps`; complete once `trainer_state.json`
is written, which Trainer does last), `best/` (the adapter with the lowest eval loss so far, saved after
each per-epoch evaluation), `final/` (the stage result, appearing atomically) and `result.json`.
A stage whose `final/` exists is done and is not trained again.
"""

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from retrain.training import adapters, budget, dist, hardware
from retrain.training.anchor import anchored, champion_replies, pinned
from retrain.training.config import DPOOptions, KTOOptions, MethodConfig, RetrainConfig, SFTOptions

log = logging.getLogger(__name__)
Sink = Callable[[dict[str, Any]], None]


class LeakageError(AssertionError):
    """Eval data reached the trainer, or train and eval share a conversation."""


# -- data ------------------------------------------------------------------------------------------

def to_trl_rows(method: str, rows: list[dict]) -> list[dict]:
    """Snapshot rows (SEAMS format) → TRL conversational rows; SFT becomes prompt/completion so the loss
    covers only the assistant reply (TRL's completion-only loss)."""
    out = []
    for row in rows:
        if method == "sft":
            messages = row["messages"]
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError("an SFT row must end with the assistant reply")
            out.append({"prompt": messages[:-1], "completion": [messages[-1]]})
        elif method == "dpo":
            out.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
        else:
            out.append({"prompt": row["prompt"], "completion": row["completion"], "label": bool(row["label"])})
    return out


def _key(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "lineage"}, sort_keys=True)


def assert_no_leakage(train: list[dict], eval_rows: list[dict], train_split: str = "train") -> None:
    """Train only on the train split, and no conversation or identical example on both sides."""
    if train_split != "train":
        raise LeakageError(f"training asked for split '{train_split}'; only 'train' may be trained on")
    conv = lambda rows: {(r.get("lineage") or {}).get("conversation_id") for r in rows} - {None}  # noqa: E731
    shared = conv(train) & conv(eval_rows)
    if shared:
        raise LeakageError(f"{len(shared)} conversation(s) in both train and eval, e.g. {sorted(shared)[0]}")
    same = {_key(r) for r in train} & {_key(r) for r in eval_rows}
    if same:
        raise LeakageError(f"{len(same)} identical example(s) in both train and eval")


# -- callbacks -------------------------------------------------------------------------------------

class Recorder(TrainerCallback):
    """Per-step metrics to the run record; the kept adapter after each evaluation; early stopping; wall clock.

    The kept adapter (`best/`) is the latest evaluation whose validation loss is no worse than the champion's
    (the loss before training, `start`) by more than `tolerance`; without a start, than the lowest so far.
    The validation split holds other questions than the train split: their loss bottoms out after a few
    passes, while the corrections themselves are learned over the next ones (what the reviewers asked for).
    Those steps are kept as long as the other questions stay non-inferior to the champion; early stopping
    counts the evaluations beyond that.

    Resume: every evaluation also saves a checkpoint, and the state above lives in `best.json`. A run killed
    between an evaluation and its checkpoint replays the steps since the last checkpoint; an evaluation at or
    before the last recorded one is skipped (it was counted already), except that it stops training again where
    early stopping had stopped it."""

    def __init__(self, stage_dir: Path, sink: Sink | None, tag: str, patience: int, max_wall_s: float | None,
                 save_best: bool = True, tolerance: float = 0.0):
        self.stage_dir, self.sink, self.tag, self.save_best = stage_dir, sink, tag, save_best
        self.tolerance, self.start = tolerance, None
        self.patience, self.deadline = patience, (time.monotonic() + max_wall_s) if max_wall_s else None
        self.state_file = stage_dir / "best.json"
        saved = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.best = saved.get("best_eval_loss", math.inf)  # the lowest validation loss
        self.kept = saved.get("kept", None)  # the evaluation whose adapter is kept
        self.bad_evals = saved.get("bad_evals", 0)
        self.evals: list[dict] = saved.get("evals", [])
        self.last_eval_step = saved.get("last_eval_step", -1)
        self.stop_step = saved.get("stop_step")  # where early stopping stopped, for a replay
        self.stopped_early = False
        self.baseline_file = stage_dir / "baseline.json"
        if self.baseline_file.exists():
            self.start = json.loads(self.baseline_file.read_text())["eval_loss"]
        # the first evaluation is the champion's (eval_on_start): inside train(), so on the DDP-wrapped model (an
        # evaluate() before train() left the ranks' gradients unsynchronised)
        self.measuring_start = False

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and self.sink and logs:
            self.sink({"stage": self.tag, "step": state.global_step, "max_steps": state.max_steps,
                       **{k: v for k, v in logs.items() if isinstance(v, int | float)}})

    def on_step_end(self, args, state, control, **kw):
        # the time left on the rank with the least of it: every rank stops at the same step
        if self.deadline and dist.agree_min(self.deadline - time.monotonic()) < 0:
            control.should_training_stop = True
            self.stopped_early = True

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if self.measuring_start:
            self.measuring_start, self.start = False, loss
            if state.is_world_process_zero:
                self.baseline_file.write_text(json.dumps({"eval_loss": loss}))
            return
        if state.global_step <= self.last_eval_step:  # replayed after a resume
            if self.stop_step is not None and state.global_step >= self.stop_step:
                control.should_training_stop = self.stopped_early = True
            return
        control.should_save = True  # a checkpoint at every evaluation: a resume starts from the latest one
        self.last_eval_step = state.global_step
        self.evals.append({"step": state.global_step, "epoch": state.epoch, "eval_loss": loss})
        self.best = min(self.best, loss)
        reference = self.start if self.start is not None else self.best
        if loss <= reference * (1 + self.tolerance) + 1e-6:
            self.bad_evals, self.kept = 0, self.evals[-1]
            if self.save_best and state.is_world_process_zero and model is not None:
                save_adapter(model, self.stage_dir / "best")
        else:
            self.bad_evals += 1
            if self.patience and self.bad_evals >= self.patience:
                control.should_training_stop = True
                self.stopped_early, self.stop_step = True, state.global_step
        if state.is_world_process_zero:
            self.state_file.write_text(json.dumps({"best_eval_loss": self.best, "kept": self.kept,
                                                   "bad_evals": self.bad_evals, "evals": self.evals,
                                                   "last_eval_step": self.last_eval_step,
                                                   "stop_step": self.stop_step}))
            if self.sink:
                self.sink({"stage": self.tag, "step": state.global_step, "max_steps": state.max_steps,
                           "eval_loss": loss, "epoch": state.epoch})


def save_adapter(model, target: Path) -> None:
    """Write the LoRA adapter atomically (tmp dir, then rename)."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card: not part of the adapter
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.replace(old)
    tmp.replace(target)
    shutil.rmtree(old, ignore_errors=True)


def lora_digest(model) -> str:
    """sha256 of the trainable (LoRA) weights: equal on every rank when DDP kept the replicas in step."""
    digest = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode() + p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (Trainer writes trainer_state.json last)."""
    found = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


# -- one stage -------------------------------------------------------------------------------------

def model_dtype(hw: hardware.Hardware, bf16: bool | None) -> torch.dtype:
    return torch.bfloat16 if hw.device == "cuda" and (hw.bf16 if bf16 is None else bf16) else torch.float32


def trl_classes(method: str, device: str = "cuda"):
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    if method == "sft":
        return SFTConfig, anchored(lean_sft_trainer() if device == "cpu" else SFTTrainer)
    return {"sft": (SFTConfig, SFTTrainer), "dpo": (DPOConfig, DPOTrainer), "kto": (KTOConfig, KTOTrainer)}[method]


def lean_sft_trainer():
    """SFTTrainer with the model's own loss instead of TRL's fused, chunked LM head. The fused head saves GPU
    memory by recomputing the LM-head projection in backward (plus entropy / top-1 metrics); on CPU memory is not
    the limit and that recomputation made a SmolLM2 step ~1.4x a plain forward+backward. Labels are already -100
    outside the assistant reply, so the loss is still completion-only."""
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            keys = ("input_ids", "attention_mask", "position_ids", "labels")
            outputs = model(**{k: inputs[k] for k in keys if k in inputs}, num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return LeanSFTTrainer


def lora_config(opts: MethodConfig):
    from peft import LoraConfig

    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=opts.lora_target_modules, task_type="CAUSAL_LM")


def longest_tokens(tokenizer, rows: list[dict], method: str, cap: int, sample: int = 16) -> int:
    """Token length of the longest examples (by characters), for the batch probe."""
    def text(row):
        parts = [row.get("prompt", []), row.get("completion", []), row.get("chosen", []), row.get("rejected", [])]
        return [m for p in parts for m in p]

    longest = sorted(rows, key=lambda r: -sum(len(m["content"]) for m in text(r)))[:sample]
    n = max((n_tokens(tokenizer, text(r)) for r in longest), default=16)
    return max(8, min(cap, n))


def n_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of a conversation in the chat template (transformers 5 returns a dict of ids and mask)."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def mean_tokens(tokenizer, rows: list[dict], cap: int, sample: int = 2000) -> float:
    """Mean token length of an example (a DPO pair counts its chosen side), over the first `sample` rows."""
    def messages(row):
        return [*row.get("prompt", []), *(row.get("completion") or row.get("chosen") or [])]

    lengths = [min(cap, n_tokens(tokenizer, messages(r))) for r in rows[:sample]]
    return sum(lengths) / len(lengths) if lengths else 16.0


def model_width(base_path: str | Path) -> int:
    config = json.loads((Path(base_path) / "config.json").read_text())
    return int(config.get("hidden_size") or config.get("d_model") or budget.REFERENCE_WIDTH)


def stage_budget(method: str, opts: MethodConfig, tokenizer, rows: list[dict], base_path: str | Path) -> budget.Budget:
    """The stage's budget from its TRL rows (see budget.py)."""
    return budget.size(method, opts, rows=len(rows), tokens_per_example=mean_tokens(tokenizer, rows, opts.max_length),
                       width=model_width(base_path))


def trl_args(method: str, opts: MethodConfig, config: RetrainConfig, hw: hardware.Hardware, batch: dict,
             out: Path, has_eval: bool, train_rows: list[dict], plan: budget.Budget) -> Any:
    config_cls, _ = trl_classes(method, hw.device)
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"), seed=config.seed, report_to=[], disable_tqdm=True,
        learning_rate=plan.learning_rate, max_steps=plan.steps, warmup_steps=plan.warmup_steps,
        lr_scheduler_type=opts.lr_scheduler_type, max_grad_norm=opts.max_grad_norm,
        weight_decay=opts.weight_decay, max_length=opts.max_length,
        per_device_train_batch_size=batch["per_device_train_batch_size"],
        per_device_eval_batch_size=batch["per_device_train_batch_size"],
        gradient_accumulation_steps=batch["gradient_accumulation_steps"],
        gradient_checkpointing=batch["gradient_checkpointing"],
        eval_strategy="steps" if has_eval else "no", eval_steps=plan.eval_steps,
        save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, logging_steps=config.logging_steps, logging_first_step=True,
        dataloader_num_workers=0, **hardware.precision(hw, config.bf16),
    )
    if isinstance(opts, SFTOptions):
        packing = hardware.use_packing(hw, opts.packing)
        kwargs.update(packing=packing, completion_only_loss=True, eval_packing=False)
    if isinstance(opts, DPOOptions):
        kwargs.update(beta=opts.beta, loss_type=[opts.loss_type] if method == "dpo" else opts.loss_type)
    if isinstance(opts, KTOOptions):
        good = sum(r["label"] for r in train_rows)
        bad = len(train_rows) - good
        dw, uw = opts.desirable_weight, opts.undesirable_weight
        if dw is None and uw is None and good and bad:  # balance: dw*good / (uw*bad) = 1
            dw, uw = (1.0, good / bad) if good >= bad else (bad / good, 1.0)
        kwargs.update(beta=opts.beta, desirable_weight=dw or 1.0, undesirable_weight=uw or 1.0)
    kwargs.update(opts.extra)
    return config_cls(**kwargs)


def train_stage(method: str, config: RetrainConfig, **kw) -> dict[str, Any]:
    """Train one LoRA on base+`merge` adapters; return the stage result (written to out/result.json)."""
    from core.settings import get_settings

    threads = config.torch_threads or get_settings().torch_threads
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train_stage(method, config, **kw)
    finally:
        torch.set_num_threads(previous)


def _train_stage(method: str, config: RetrainConfig, *, base_path: str | Path, merge: list[str | Path],
                train: list[dict], eval_rows: list[dict], out: Path, sink: Sink | None = None,
                hw: hardware.Hardware | None = None, tag: str | None = None, anchors: list[dict] | None = None, lr_factor: float = 1.0) -> dict[str, Any]:
    result_file = out / "result.json"
    if result_file.exists() and adapters.is_adapter(out / "final"):
        return json.loads(result_file.read_text()) | {"reused": True}
    from transformers import AutoTokenizer
    from transformers.integrations import TensorBoardCallback
    from torch.utils.tensorboard import SummaryWriter

    started = time.monotonic()
    device = dist.setup()  # the rank's own GPU, before any tensor moves
    hw = hw or hardware.detect()
    tag = tag or method
    opts = getattr(config, method)
    anchors = (anchors or []) if method == "sft" and getattr(opts, "anchor_weight", 0) > 0 else []
    assert_no_leakage(train + anchors, eval_rows)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = adapters.load_merged(base_path, merge, dtype=model_dtype(hw, config.bf16))
    if hw.device == "cuda":
        model = model.to(device)
    anchors = champion_replies(model, tokenizer, anchors, getattr(opts, "anchor_reply_tokens", 0))
    train_ds, eval_ds = to_trl_rows(method, train), to_trl_rows(method, eval_rows)
    plan = stage_budget(method, opts, tokenizer, train_ds, base_path)
    if lr_factor != 1.0:
        plan.learning_rate *= lr_factor
        plan.why.append(f"search trial: learning rate x {lr_factor:g} = {plan.learning_rate:.2g}")
    packing = method == "sft" and hardware.use_packing(hw, getattr(opts, "packing", None))
    # packed rows hold max_length tokens each: as many rows per step as hold the step's tokens
    per_step = max(1, math.ceil(plan.tokens / plan.steps / opts.max_length)) if packing else plan.examples_per_step
    seq_len = opts.max_length if packing else longest_tokens(tokenizer, train_ds, method, opts.max_length)
    batch = hardware.plan_batch(
        model, hw, seq_len=seq_len, effective=per_step, fixed=opts.per_device_train_batch_size,
        cpu_cap=config.cpu_max_batch_size, rows_per_example=2 if method in ("dpo", "kto") else 1,
        gradient_checkpointing=config.gradient_checkpointing)
    args = trl_args(method, opts, config, hw, batch, out, bool(eval_ds), train_ds, plan)
    checkpoint = last_checkpoint(out / "checkpoints")

    from datasets import Dataset

    _, trainer_cls = trl_classes(method, hw.device)
    chooses = len(eval_ds) >= opts.min_validation_rows  # fewer: evaluated for the record, the budget decides
    keep_best = opts.keep == "best" and chooses
    recorder = Recorder(out, sink, tag, opts.early_stopping_patience if eval_ds and keep_best else 0,
                        config.max_wall_s, save_best=keep_best, tolerance=opts.validation_tolerance)
    recorder.measuring_start = args.eval_on_start = bool(eval_ds) and recorder.start is None and checkpoint is None
    callbacks = [recorder]
    others, golden = pinned(anchors)
    if dist.is_main():
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(str(out.parent.parent / "tb" / tag))))
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(train_ds),
                          eval_dataset=Dataset.from_list(eval_ds) if eval_ds else None,
                          processing_class=tokenizer, peft_config=lora_config(opts), callbacks=callbacks,
                          **({"anchor_dataset": Dataset.from_list(to_trl_rows(method, others)),
                              "pinned_dataset": Dataset.from_list(to_trl_rows(method, golden)),
                              "anchor_weight": opts.anchor_weight} if anchors else {}))
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    step = trainer.state.global_step
    baseline = recorder.start
    if eval_ds and recorder.last_eval_step != step:  # e.g. stopped by max_steps between epochs
        trainer.evaluate()
    if dist.is_main() and (not keep_best or not adapters.is_adapter(out / "best")):  # or no eval / improvement
        save_adapter(trainer.model, out / "best")
    ranks = dist.gather({"rank": dist.rank(), "device": str(device), "steps": step, "lora": lora_digest(trainer.model),
                         **{k: batch[k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                  "gradient_checkpointing")}})
    best = recorder.kept["eval_loss"] if recorder.kept and keep_best else (
        recorder.evals[-1]["eval_loss"] if recorder.evals else None)
    underfit = None
    if baseline is not None and best is not None:
        gain = (baseline - best) / max(abs(baseline), 1e-8)
        underfit = {"eval_loss_start": baseline, "eval_loss_best": best, "relative_gain": gain,
                    "underfitting": gain < config.underfit_threshold,
                    "note": (f"validation loss moved only {gain:.1%} (< {config.underfit_threshold:.0%}): "
                             "underfitting; try a higher learning rate or min_examples") if gain < config.underfit_threshold
                    else f"validation loss improved {gain:.1%}"}
    tokens = getattr(trainer.state, "num_input_tokens_seen", 0) or None
    result = {
        "method": method, "tag": tag, "options": asdict(opts), "budget": plan.as_dict(), "batch": batch,
        "hardware": hw.as_dict(),
        "steps": step, "train_loss": output.training_loss, "train_runtime_s": output.metrics.get("train_runtime"),
        "resumed_from": checkpoint.name if checkpoint else None, "best_eval_loss": best,
        "best_step": recorder.kept["step"] if recorder.kept and keep_best else step,
        "lowest_eval_loss": recorder.best if math.isfinite(recorder.best) else None,
        "evals": recorder.evals, "stopped_early": recorder.stopped_early, "underfit": underfit,
        "kept": "best" if keep_best else ("last" if opts.keep != "best" else
                 f"last: {len(eval_ds)} validation rows < min_validation_rows {opts.min_validation_rows}"),
        "anchor_rows": len(anchors), "tokens": tokens, "seconds": round(time.monotonic() - started, 2),
        "packing": bool(getattr(args, "packing", False)), "precision": "bf16" if args.bf16 else
        ("fp16" if args.fp16 else "fp32"), "processes": dist.world_size(), "ranks": ranks,
    }
    if dist.is_main():
        final_tmp = out / "final.partial"
        shutil.rmtree(final_tmp, ignore_errors=True)
        shutil.copytree(out / "best", final_tmp)
        result_file.write_text(json.dumps(result, indent=2, default=str))
        final_tmp.replace(out / "final")
    dist.barrier()  # the next stage (every rank) loads this one's final/
    del trainer, model
    return result


def run_stage(method: str, config: RetrainConfig, *, base_path, merge, train, eval_rows, out: Path,
              sink: Sink | None = None, search: bool = False, hw=None,
              anchors: list[dict] | None = None) -> dict[str, Any]:
    """A stage. With `search` and validation rows, a small learning-rate search: one trial per
    `config.search_lr_factors` (further trials only within `search_max_s`); the trial whose best validation loss
    is lowest becomes the stage."""
    factors = config.search_lr_factors if search and len(eval_rows) >= getattr(config, method).min_validation_rows \
        else [1.0]
    common = dict(base_path=base_path, merge=merge, train=train, eval_rows=eval_rows, sink=sink, hw=hw,
                  anchors=anchors)
    if len(factors) == 1:
        return train_stage(method, config, out=out, lr_factor=factors[0], **common)
    if (out / "result.json").exists() and adapters.is_adapter(out / "final"):
        return json.loads((out / "result.json").read_text()) | {"reused": True}
    started, trials = time.monotonic(), []
    for i, factor in enumerate(factors):
        elapsed = time.monotonic() - started
        last = [t["seconds"] for t in trials if "seconds" in t][-1:]
        # another trial like the last one would not fit (on any rank's clock: all ranks skip it together)
        if dist.agree_any(bool(last) and elapsed + last[0] > config.search_max_s):
            trials.append({"trial": i, "lr_factor": factor,
                           "skipped": f"{elapsed:.0f} s + another trial > search_max_s {config.search_max_s:g} s"})
            continue
        result = train_stage(method, config, out=out / f"trial-{i}", tag=f"{method}-trial{i}", lr_factor=factor,
                             **common)
        trials.append({"trial": i, "lr_factor": factor, "learning_rate": result["budget"]["learning_rate"],
                       "lowest_eval_loss": result["lowest_eval_loss"], "best_step": result.get("best_step"),
                       "seconds": result["seconds"]})
    ran = [t for t in trials if "skipped" not in t]  # the lowest validation loss any step reached wins
    winner = min(ran, key=lambda t: t["lowest_eval_loss"] if t["lowest_eval_loss"] is not None else math.inf)
    best = json.loads((out / f"trial-{winner['trial']}" / "result.json").read_text())
    best |= {"search": trials, "chosen_trial": winner["trial"]}
    if dist.is_main():
        shutil.rmtree(out / "final.partial", ignore_errors=True)
        shutil.copytree(out / f"trial-{winner['trial']}" / "final", out / "final.partial")
        (out / "result.json").write_text(json.dumps(best, indent=2, default=str))
        (out / "final.partial").replace(out / "final")
    dist.barrier()
    return best
