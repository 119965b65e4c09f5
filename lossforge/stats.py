"""Intervals and paired comparisons over seeds: how sure a score difference is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (inf with fewer than two values)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return mean, math.inf
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` over paired seeds: mean difference, its CI half-width, and the paired t-test p-value."""

    mean_diff: float
    ci_half_width: float
    p_value: float
    n: int

    def summary(self) -> str:
        """The difference with its CI and p-value, or, on one seed (where neither exists), that it has none."""
        if self.n < 2:
            return f"{self.mean_diff:+.4f} (1 seed: no CI or p-value; use more seeds)"
        return (f"{self.mean_diff:+.4f} ± {self.ci_half_width:.4f} (95% CI, paired over {self.n} seeds, "
                f"p = {self.p_value:.3g})")

    def line(self, a: str, b: str) -> str:
        """One readable line."""
        return f"{a} - {b}: {self.summary()}"

    def record(self) -> dict[str, float | int | None]:
        """``{"mean_diff", "ci", "p", "seeds"}`` for JSON: a number that is not finite (one seed's CI and p)
        is None."""
        def finite(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None

        return {"mean_diff": finite(self.mean_diff), "ci": finite(self.ci_half_width), "p": finite(self.p_value),
                "seeds": self.n}


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedComparison:
    """Paired comparison of two score lists measured on the same seeds."""
    if len(a) != len(b) or not a:
        raise ValueError("paired comparison needs two equally long, non-empty lists")
    diffs = [x - y for x, y in zip(a, b)]
    mean, half = mean_ci(diffs, confidence)
    if len(a) < 2:
        p = math.nan
    elif all(d == diffs[0] for d in diffs):
        p = 0.0 if diffs[0] != 0 else 1.0  # no spread: the t statistic is undefined
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return PairedComparison(mean, half, p, len(a))
