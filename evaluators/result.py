"""The common result of every evaluator: a value, its confidence interval and pass/fail."""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class EvalResult:
    """`passed` is None when the evaluator did not run (no data, disabled) or was ignored (judge below κ)."""

    name: str
    metric: str  # what `value` measures, e.g. "relative loss improvement"
    value: float | None
    threshold: float | None = None
    passed: bool | None = None
    ci: tuple[float, float] | None = None  # 95% bootstrap interval of `value`
    candidate: float | None = None  # the raw figure for the candidate and the champion, when there is one
    champion: float | None = None
    n: int = 0
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)  # per-example figures, for the report plots

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci"] = list(self.ci) if self.ci else None
        return data


def skipped(name: str, metric: str, note: str) -> EvalResult:
    return EvalResult(name=name, metric=metric, value=None, passed=None, note=note)


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, resamples: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap: `stat(indices)` evaluated on `resamples` resamples of range(n)."""
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def mean_ci(values: Sequence[float], **kw) -> tuple[float, float] | None:
    arr = np.asarray(values, dtype=float)
    return bootstrap_ci(lambda idx: float(arr[idx].mean()), len(arr), **kw)


def check(value: float | None, *, at_least: float | None = None, at_most: float | None = None,
          ci: tuple[float, float] | None = None, ci_lower_min: float | None = None,
          ci_upper_max: float | None = None) -> bool:
    """Point thresholds plus optional bounds on the interval; a missing interval fails a CI bound."""
    if value is None or not np.isfinite(value):
        return False
    ok = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    if ci_lower_min is not None:
        ok = ok and ci is not None and ci[0] >= ci_lower_min
    if ci_upper_max is not None:
        ok = ok and ci is not None and ci[1] <= ci_upper_max
    return bool(ok)
