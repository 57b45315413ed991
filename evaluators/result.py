"""The common result of every evaluator, and the one place that computes confidence bounds and verdicts.

Bounds come from a paired bootstrap over *groups*: every item carries a group key (several snapshot rows of
one question share one); a resample draws groups with replacement and keeps all their items, so both
models' figures on an item always travel together (paired) and near-duplicate rows do not count as
independent evidence. Statistics are ratios of column sums (losses over tokens, lost minus gained over
known answers), computed for all resamples at once from per-group sums."""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

SUFFICIENT, INSUFFICIENT, NOT_APPLICABLE = "sufficient", "insufficient", "not_applicable"
Evidence = Literal["sufficient", "insufficient", "not_applicable"]


@dataclass
class EvalResult:
    """`passed`: True / False, or None when undecided (insufficient evidence, not applicable, disabled, or a
    judge below κ). `evidence` says whether there was enough data (`min_n`) to decide at all."""

    name: str
    metric: str  # what `value` measures, e.g. "relative loss improvement"
    value: float | None
    threshold: float | None = None  # the margin (harm gates) or the point threshold (benefit gates)
    passed: bool | None = None
    ci: tuple[float, float] | None = None  # (lower, upper) one-sided bounds at `confidence` (a 2c-1 interval)
    candidate: float | None = None  # the raw figure for the candidate and the champion, when there is one
    champion: float | None = None
    n: int = 0  # the evidence counted against `min_n` (groups, pairs, known answers)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)  # per-example figures, for the report plots
    evidence: Evidence = SUFFICIENT
    min_n: int | None = None
    bound: float | None = None  # the one-sided bound the verdict compared with `threshold`
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci"] = list(self.ci) if self.ci else None
        return data


def skipped(name: str, metric: str, note: str, evidence: Evidence = INSUFFICIENT) -> EvalResult:
    """A gate that could not run: missing data is insufficient evidence unless the gate does not apply."""
    return EvalResult(name=name, metric=metric, value=None, passed=None, note=note, evidence=evidence)


def not_applicable(name: str, metric: str, note: str) -> EvalResult:
    return skipped(name, metric, note, NOT_APPLICABLE)


def group_keys(groups: Sequence[Hashable] | None, n: int) -> np.ndarray:
    """Integer group index per item (each item its own group when `groups` is None)."""
    if groups is None:
        return np.arange(n)
    _, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return index.reshape(-1)


def bounds(columns: Sequence[Sequence[float]] | np.ndarray, stat: Callable[[np.ndarray], np.ndarray],
           groups: Sequence[Hashable] | None = None, *, confidence: float = 0.95, resamples: int = 2000,
           seed: int = 0) -> tuple[float, float] | None:
    """One-sided (lower, upper) bounds at `confidence` of `stat(column sums)`, by a paired bootstrap over groups.

    `columns`: n items × k per-item figures; `stat` maps an array (..., k) of column sums to the statistic
    (vectorised over the leading axes). None with fewer than two groups (nothing to resample)."""
    values = np.asarray(columns, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    keys = group_keys(groups, len(values))
    n_groups = int(keys.max()) + 1 if len(keys) else 0
    if n_groups < 2:
        return None
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, keys, values)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, (resamples, n_groups))
    counts = np.zeros((resamples, n_groups))
    np.add.at(counts, (np.repeat(np.arange(resamples), n_groups), draws.reshape(-1)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        stats = np.asarray(stat(counts @ sums), dtype=float)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return None
    return float(np.quantile(stats, 1 - confidence)), float(np.quantile(stats, confidence))


def ratio(num: Callable[[np.ndarray], np.ndarray], den: Callable[[np.ndarray], np.ndarray]):
    """stat(sums) = num(sums) / den(sums), NaN where the denominator is 0."""
    def stat(s: np.ndarray) -> np.ndarray:
        d = np.asarray(den(s), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d != 0, np.asarray(num(s), dtype=float) / np.where(d != 0, d, 1.0), np.nan)
    return stat


def point(columns, stat) -> float:
    values = np.asarray(columns, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    return float(stat(values.sum(axis=0)))


# Below a gate's min_n a bound may still establish a failure, but not from fewer groups than this: with 2
# groups a 95% bootstrap bound is just the worse of the two values, which proves nothing.
MIN_BOUND_N = 5


def harm_verdict(value: float | None, ci: tuple[float, float] | None, margin: float, n: int,
                 min_n: int) -> tuple[bool | None, Evidence, str]:
    """Non-inferiority: pass only when the upper bound of the harm is within `margin` on at least `min_n`
    items. Below `min_n` (or without a bound) it does not pass; it fails only when even the lower bound
    exceeds the margin (the harm is established), otherwise it stays undecided (insufficient)."""
    if n < min_n or ci is None or value is None or not np.isfinite(value):
        established = ci is not None and n >= MIN_BOUND_N and ci[0] > margin
        why = (f"only {n} of the {min_n} needed" if n < min_n else "no confidence bound (fewer than 2 groups)")
        if established:
            return False, INSUFFICIENT, f"{why}, but even the lower bound {ci[0]:.3g} exceeds the margin {margin:g}"
        return None, INSUFFICIENT, f"insufficient evidence: {why}"
    if ci[1] <= margin:
        return True, SUFFICIENT, f"upper bound {ci[1]:.3g} within margin {margin:g}"
    return False, SUFFICIENT, f"upper bound {ci[1]:.3g} exceeds margin {margin:g}"


def benefit_verdict(value: float | None, ci: tuple[float, float] | None, at_least: float | None,
                    lower_bound_min: float | None, n: int, min_n: int) -> tuple[bool | None, Evidence, str]:
    """Improvement: the point estimate reaches `at_least` and the lower bound reaches `lower_bound_min`.
    Below `min_n` it does not pass; it fails only when the upper bound is below what it had to reach."""
    target = max(t for t in (at_least, lower_bound_min, -np.inf) if t is not None)
    if n < min_n or value is None or not np.isfinite(value) or (lower_bound_min is not None and ci is None):
        why = f"only {n} of the {min_n} needed" if n < min_n else "no confidence bound (fewer than 2 groups)"
        if ci is not None and n >= MIN_BOUND_N and ci[1] < target:
            return False, INSUFFICIENT, f"{why}, but even the upper bound {ci[1]:.3g} is below {target:g}"
        return None, INSUFFICIENT, f"insufficient evidence: {why}"
    reasons = []
    if at_least is not None and value < at_least:
        reasons.append(f"{value:.3g} below {at_least:g}")
    if lower_bound_min is not None and ci[0] < lower_bound_min:
        reasons.append(f"lower bound {ci[0]:.3g} below {lower_bound_min:g}")
    return (not reasons), SUFFICIENT, "; ".join(reasons)


# Kept for callers outside the gates (two-sided percentile intervals of a mean).
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
