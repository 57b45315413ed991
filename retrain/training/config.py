"""Training configuration: one dataclass per method (mapped onto TRL's SFTConfig / DPOConfig / KTOConfig),
a run-level dataclass, YAML files and `key=value` overrides, and the scheduler's environment settings.

Precedence: dataclass defaults < YAML file (`HITL_RETRAIN_CONFIG` or `--config`) < `--set a.b=value` flags
< the API body. Hardware-dependent fields (precision, batch size, packing, gradient checkpointing) default
to `None` = decided by `hardware.py` for the machine the run lands on.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.settings import get_settings


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class MethodConfig:
    """Fields every method shares. A few more TrainingArguments tuning knobs go in `extra` (EXTRA_ALLOWED)."""

    learning_rate: float | None = _help(
        "Peak learning rate (after warm-up); None: from the model's width and the LoRA rank (budget.py).",
        default=None)
    epochs: float = _help("Passes over a large snapshot (a small one gets more: min_examples).", default=2.0)
    min_examples: int = _help("Train examples seen at least, so a small snapshot still learns (its rows repeat).",
                              default=256)
    max_passes: float = _help("Most passes over a small snapshot.", default=10.0)
    max_tokens: int = _help("Most tokens seen in the stage: caps a large snapshot.", default=2_000_000)
    batch_tokens: int = _help("Tokens per optimizer step; examples per step = this / mean example tokens, at most "
                              "half the train rows.", default=2048)
    max_steps: int | None = _help("Fix the number of optimizer steps (None: from the budget).", default=None)
    effective_batch_size: int | None = _help(
        "Fix the examples per optimizer step (None: from batch_tokens); reached with the largest per-device batch "
        "that fits + accumulation.", default=None)
    per_device_train_batch_size: int | None = _help(
        "Fix the per-device batch (None: the largest that fits, found by accelerate).", default=None)
    evaluations: int = _help("Validation-loss evaluations over the stage (early stopping and the kept checkpoint "
                             "use them).", default=5)
    max_length: int = _help("Longest tokenized example; longer ones are truncated.", default=1024)
    warmup_ratio: float = _help("Fraction of steps with linear learning-rate warm-up.", default=0.1)
    lr_scheduler_type: str = _help("Learning-rate schedule after warmup (transformers name).", default="cosine")
    max_grad_norm: float = _help("Gradient clipping norm.", default=1.0)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha (scaling = alpha / r).", default=32)
    lora_dropout: float = _help("Dropout on the LoRA path.", default=0.05)
    lora_target_modules: list[str] | str = _help(
        "Modules that get LoRA ('all-linear' or a list of names).", default="all-linear")
    early_stopping_patience: int = _help(
        "Stop when the validation loss has not improved for this many evaluations; 0: never.", default=2)
    keep: str = _help("Adapter that becomes the candidate: 'best' (the latest evaluation within "
                      "validation_tolerance of the champion's validation loss) or 'last' (the final step; early "
                      "stopping off).", default="best")
    validation_tolerance: float = _help(
        "Relative validation loss above the champion's (before training) that still counts as no worse. The "
        "validation split holds other questions: once their loss stops improving, further steps learn the "
        "corrections themselves (what reviewers asked for); they are kept while the other questions stay within "
        "this of the champion.", default=0.10)
    min_validation_rows: int = _help(
        "Fewest validation rows that may choose: the kept checkpoint, early stopping and the search's trial. With "
        "fewer (3 rows of a 30-question snapshot), a choice would follow noise, so the budget decides: the last "
        "step is kept.", default=10)
    min_rows: int = _help("The plan trains this method only with at least this many train rows.", default=8)
    extra: dict[str, Any] = _help(
        "Extra keyword arguments passed to the TRL config (e.g. {optim: adamw_torch_fused}); only tuning knobs: "
        "optimizer settings and seeds, never paths, uploads or hub access (EXTRA_ALLOWED).", default_factory=dict)


@dataclass
class SFTOptions(MethodConfig):
    """Supervised fine-tuning on corrected / top-rated replies (loss on the assistant reply only)."""

    packing: bool | None = _help(
        "Pack examples into full rows (padding-free, position_ids reset per example); None: on CUDA only.",
        default=None)
    anchor_weight: float = _help(
        "Weight of a KL penalty that keeps the candidate's token distributions equal to the champion's on the "
        "snapshot's anchor rows (served replies nobody faulted), against forgetting; 0: off. Each step then "
        "also runs one anchor batch forward twice (with and without the new LoRA) and backward once. 30 FAQ "
        "corrections on SmolLM2 with the champion's own anchor replies: weight 1 learned 21 of 21 and flipped 37 of "
        "92 known general answers (lost 23, gained 14); weight 3 learned 20 and flipped 26 (13 each way).",
        default=3.0)
    anchor_reply_tokens: int = _help(
        "The anchors' replies are the champion's own greedy replies of at most this many tokens, made when the "
        "stage starts (the positions greedy decoding visits); 0: the replies as stored.", default=48)


@dataclass
class DPOOptions(MethodConfig):
    """Direct preference optimisation on (chosen, rejected) pairs; the reference is the champion."""

    epochs: float = _help("Passes over a large snapshot.", default=1.0)
    min_examples: int = _help("Pairs seen at least.", default=64)
    max_passes: float = _help("Most passes over a small snapshot.", default=3.0)
    beta: float = _help("DPO temperature: how far the policy may move from the reference.", default=0.1)
    loss_type: str = _help("DPO loss variant (TRL name).", default="sigmoid")


@dataclass
class KTOOptions(MethodConfig):
    """KTO on thumbs (desirable / undesirable single replies); used when there are too few pairs for DPO."""

    epochs: float = _help("Passes over a large snapshot.", default=1.0)
    min_examples: int = _help("Labelled replies seen at least.", default=64)
    max_passes: float = _help("Most passes over a small snapshot.", default=3.0)
    beta: float = _help("KTO temperature.", default=0.1)
    min_rows: int = _help("The plan trains KTO only with at least this many train rows.", default=16)
    desirable_weight: float | None = _help(
        "Weight of desirable examples (None: balance the classes as the KTO paper advises).", default=None)
    undesirable_weight: float | None = _help("Weight of undesirable examples (None: balanced).", default=None)


@dataclass
class RetrainConfig:
    """One retrain run: which methods, guards, checkpoints, sweep and champion chaining."""

    methods: list[str] | None = _help(
        "Force these stages in this order (sft, dpo, kto); None: the plan decides from the snapshot.", default=None)
    sft: SFTOptions = _help("SFT options.", default_factory=SFTOptions)
    dpo: DPOOptions = _help("DPO options.", default_factory=DPOOptions)
    kto: KTOOptions = _help("KTO options.", default_factory=KTOOptions)
    search_lr_factors: list[float] = _help(
        "Small search on the first stage: one trial per factor at the budget's learning rate times it; every "
        "trial evaluates the validation loss along its steps, and the trial and step with the lowest one win "
        "([1.0]: no search).", default_factory=lambda: [1.0, 0.5])
    search_max_s: float = _help("Wall-time bound of the search: a further trial starts only when the time so far "
                                "plus the last trial's fits in it (on a 2-core CPU one SmolLM2 trial of 30 "
                                "corrections takes about 4 minutes, so only the first runs there).", default=300.0)
    save_steps: int = _help("Checkpoint every N optimizer steps, and at every evaluation (a killed run resumes "
                            "from the last one).", default=50)
    save_total_limit: int = _help("Checkpoints kept per stage.", default=2)
    logging_steps: int = _help("Record loss / learning rate / grad norm every N steps.", default=5)
    seed: int = _help("Random seed.", default=42)
    underfit_threshold: float = _help(
        "Report underfitting when the best validation loss improved on the starting one by less than this fraction.",
        default=0.01)
    chaining: str = _help(
        "'stack': the candidate adapter is the champion's adapter concatenated with the new LoRA "
        "(same base checkpoint, exact); 'merge': write a merged base and a fresh adapter.", default="stack")
    max_stacked_rank: int = _help("With 'stack', merge into a new base once the total LoRA rank exceeds this.",
                                  default=256)
    torch_threads: int | None = _help(
        "CPU threads for training (None: HITL_TORCH_THREADS, else torch's default). On a CPU shared with other "
        "processes, fewer threads avoid oversubscription (measured 20x faster steps with 1 thread on a loaded "
        "2-core machine).", default=None)
    cpu_max_batch_size: int = _help("Largest per-device batch on CPU (no OOM probe there).", default=8)
    bf16: bool | None = _help("bf16 mixed precision (None: on when the GPU supports it; never on CPU).",
                              default=None)
    gradient_checkpointing: bool | None = _help(
        "Recompute activations (None: only when the batch probe says memory needs it).", default=None)
    snapshot_path: str | None = _help(
        "Train on this existing snapshot directory instead of building a new one.", default=None)
    snapshot_options: dict[str, Any] = _help(
        "Options for the dataset builder (retrain.datasets BuildOptions); by default anchor rows against "
        "forgetting (the latest 256 unfaulted served replies and 64 general-pool rows) and no replay: as training "
        "targets the pool's short answers cost more general answers than they saved (retrain/datasets/data).",
        default_factory=lambda: {"anchors": 256, "anchor_general": 64})
    evaluate: bool = _help("Hand the candidate to the evaluators when training succeeds.", default=True)
    max_wall_s: float | None = _help("Stop training (keeping the best checkpoint) after this many seconds.",
                                     default=None)
    processes: int | None = _help(
        "Training processes, data parallel: one per GPU (`accelerate launch`, NCCL) or CPU processes (`torchrun`, "
        "gloo); the examples per optimizer step stay the same. None: one per GPU, 1 on CPU.", default=None)


METHODS = ("sft", "dpo", "kto")
EXTRA_ALLOWED = frozenset({  # TrainingArguments knobs that change only the numbers: no paths, uploads or network
    "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_kwargs", "label_smoothing_factor",
    "neftune_noise_alpha", "data_seed", "gradient_checkpointing_kwargs", "torch_empty_cache_steps",
})


class ConfigError(ValueError):
    """A config file or override names an unknown field or a bad value."""


def to_dict(config: RetrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any] | None, base: RetrainConfig | None = None) -> RetrainConfig:
    """Overlay `data` (nested dict) on `base` (default: dataclass defaults); unknown keys are errors."""
    return _overlay(base or RetrainConfig(), data or {}, "")


def _overlay(obj: Any, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config field '{prefix}{key}'")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _overlay(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, current, f"{prefix}{key}", fields[key].type)
    return dataclasses.replace(obj, **changes)


def _coerce(value: Any, current: Any, name: str, annotation: Any = None) -> Any:
    if value is None:
        return value
    if current is None:  # an optional field: coerce to its declared number type (YAML reads 3e-3 as a string)
        kinds = [t for t in (float, int) if t in getattr(annotation, "__args__", ())]
        return _coerce(value, kinds[0](0), name) if kinds else value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"'{name}' must be true or false")
        return value
    if isinstance(current, int | float) and not isinstance(value, bool):
        try:
            return type(current)(value) if isinstance(value, int | float | str) else _bad(name, value)
        except ValueError:
            raise ConfigError(f"'{name}' must be a number, got {value!r}") from None
    return value


def _bad(name: str, value: Any):
    raise ConfigError(f"'{name}' has a bad value {value!r}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["sft.learning_rate=1e-4", "methods=[sft,dpo]"]` → nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{pair}' is not key=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> RetrainConfig:
    """Defaults < YAML file (argument, else HITL_RETRAIN_CONFIG) < `key=value` overrides < `data`."""
    config = RetrainConfig()
    path = path or get_settings().retrain_config
    if path:
        config = from_dict(yaml.safe_load(Path(path).read_text()) or {}, config)
    if overrides:
        config = from_dict(parse_overrides(overrides), config)
    if data:
        config = from_dict(data, config)
    return validate(config)


def validate(config: RetrainConfig) -> RetrainConfig:
    for method in config.methods or []:
        if method not in METHODS:
            raise ConfigError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if config.chaining not in ("stack", "merge"):
        raise ConfigError("chaining must be 'stack' or 'merge'")
    for name in METHODS:
        opts = getattr(config, name)
        positive = [opts.learning_rate, opts.effective_batch_size, opts.max_steps]
        if any(v is not None and v <= 0 for v in positive) or opts.lora_r < 1 or opts.max_length < 8 \
                or min(opts.epochs, opts.min_examples, opts.max_passes, opts.max_tokens, opts.batch_tokens,
                       opts.evaluations) <= 0:
            raise ConfigError(f"{name}: learning_rate, batch sizes, steps, budgets, lora_r and max_length must be "
                              "positive")
        if opts.keep not in ("best", "last"):
            raise ConfigError(f"{name}: keep must be 'best' or 'last'")
        if not isinstance(opts.extra, dict):
            raise ConfigError(f"'{name}.extra' must be a mapping")
        for key in opts.extra:
            if key not in EXTRA_ALLOWED:
                raise ConfigError(f"'{name}.extra.{key}' is not allowed; extra takes only "
                                  f"{', '.join(sorted(EXTRA_ALLOWED))}")
    if not config.search_lr_factors or min(config.search_lr_factors) <= 0:
        raise ConfigError("search_lr_factors needs at least one positive factor")
    if config.processes is not None and config.processes < 1:
        raise ConfigError("processes must be >= 1")
    if config.save_steps < 1 or config.logging_steps < 1:
        raise ConfigError("save_steps and logging_steps must be >= 1")
    return config


def describe(obj: Any = None, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, default, help) of every field, for `hitl retrain config`."""
    obj = obj or RetrainConfig()
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, value, f.metadata.get("help", "")))
    return rows
