"""Small, pure statistics for the forecast: least squares, step changes, Student t, median.

No numpy: a handful of points per policy, and the CLI must start fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STEP_EXPLAINS = 0.75                  # a split must remove this share of the single fit's residual


@dataclass(frozen=True)
class Line:
    slope: float
    intercept: float
    n: int
    resid_sd: float        # residual standard deviation (n - 2 degrees of freedom; 0 when n <= 2)
    x_mean: float
    sxx: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x

    def prediction_sd(self, x: float) -> float:
        """Standard deviation of a new observation at x (the prediction interval's half width / t)."""
        if self.n <= 2:
            return self.resid_sd
        leverage = (x - self.x_mean) ** 2 / self.sxx if self.sxx > 0 else 0.0
        return self.resid_sd * math.sqrt(1 + 1 / self.n + leverage)


def fit_line(xs: list[float], ys: list[float]) -> Line:
    n = len(xs)
    if n == 0:
        raise ValueError("fit_line needs at least one point")
    x_mean, y_mean = sum(xs) / n, sum(ys) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    intercept = y_mean - slope * x_mean
    return Line(slope, intercept, n, _resid_sd(xs, ys, slope, intercept), x_mean, sxx)


def _resid_sd(xs: list[float], ys: list[float], slope: float, intercept: float, params: int = 2) -> float:
    dof = len(xs) - params
    if dof <= 0:
        return 0.0
    sse = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    return math.sqrt(sse / dof)


def _sse(xs: list[float], ys: list[float]) -> float:
    line = fit_line(xs, ys)
    return sum((y - line.at(x)) ** 2 for x, y in zip(xs, ys))


def last_regime(xs: list[float], ys: list[float], *, min_left: int = 2, min_right: int = 3) -> int:
    """Index where the last regime starts (0: no step change). Points must be in time order.

    A split k is a step change when fitting [:k] and [k:] separately leaves at most
    1 - STEP_EXPLAINS of the single fit's squared residual; the best such split wins."""
    n = len(xs)
    if n < min_left + min_right:
        return 0
    whole = _sse(xs, ys)
    if whole <= 1e-12 * max(1.0, sum(y * y for y in ys)):
        return 0
    best, best_sse = 0, whole * (1 - STEP_EXPLAINS)
    for k in range(min_left, n - min_right + 1):
        split = _sse(xs[:k], ys[:k]) + _sse(xs[k:], ys[k:])
        if split < best_sse:
            best, best_sse = k, split
    return best


_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t95(dof: int) -> float:
    """Two-sided 95 % Student t quantile (table, rounded down to the nearest listed dof)."""
    if dof <= 0:
        return _T95[1]
    if dof > 60:
        return 1.96
    return _T95[max(k for k in _T95 if k <= dof)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return 0.0
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
