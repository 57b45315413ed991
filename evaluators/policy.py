"""The gate policy, typed: one dataclass per section of `policy.yaml`. The defaults live in that file only;
`section(name, cfg)` merges a (partial) section over them and rejects unknown keys, so a misspelt margin
fails loudly instead of silently falling back to a default."""

import copy
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_POLICY = Path(__file__).resolve().parent / "policy.yaml"


@dataclass(frozen=True)
class Heldout:
    max_examples: int | None
    min_n: int
    min_relative_improvement: float | None
    lower_bound_min: float | None
    confidence: float


@dataclass(frozen=True)
class Preference:
    max_examples: int | None
    min_n: int
    min_win_rate: float
    lower_bound_min: float | None
    min_accuracy_delta: float | None
    confidence: float


@dataclass(frozen=True)
class Forgetting:
    path: str | None
    max_examples: int | None
    min_n: int
    answer_margin: float
    loss_margin: float
    confidence: float
    max_new_tokens: int
    batch_size: int


@dataclass(frozen=True)
class DomainForgetting:
    max_examples: int | None
    min_n: int
    loss_margin: float
    confidence: float


@dataclass(frozen=True)
class Cumulative:
    reference: str | None
    budget: float
    min_n: int
    confidence: float
    path: str | None
    max_examples: int | None
    max_new_tokens: int | None


@dataclass(frozen=True)
class Golden:
    path: str | None
    min_pass_rate: float
    max_regressions: int


@dataclass(frozen=True)
class Judge:
    enabled: bool
    judge: Any  # "serving", {base_url, model, api_key_env} or a callable (tests)
    max_prompts: int
    max_new_tokens: int
    min_n: int
    margin: float
    confidence: float
    min_kappa: float
    min_human: int


@dataclass(frozen=True)
class Fewshot:
    k: int
    confidence: float


SECTIONS: dict[str, type] = {"heldout": Heldout, "preference": Preference, "forgetting": Forgetting,
                             "domain_forgetting": DomainForgetting, "cumulative": Cumulative, "golden": Golden,
                             "judge": Judge, "fewshot": Fewshot}


@functools.cache
def _defaults() -> dict:
    return yaml.safe_load(DEFAULT_POLICY.read_text())


def defaults() -> dict:
    return copy.deepcopy(_defaults())


def section(name: str, cfg: Any = None):
    """The typed section `name`: `cfg` (a dict of overrides, or already the dataclass) over the defaults."""
    cls = SECTIONS[name]
    if isinstance(cfg, cls):
        return cfg
    merged = {**_defaults().get(name, {}), **(cfg or {})}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"gate policy: unknown key(s) in section '{name}': {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return cls(**merged)


def validate(policy: dict) -> None:
    """Every gate section parses; every required / enabled evaluator is known."""
    for name in SECTIONS:
        section(name, policy.get(name))
    for key in ("required", "evaluators", "informative"):
        unknown = [n for n in policy.get(key, []) if n not in SECTIONS]
        if unknown:
            raise ValueError(f"gate policy: unknown evaluator(s) in '{key}': {', '.join(unknown)}")
