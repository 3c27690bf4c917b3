"""Small statistics every report needs: means with standard errors and paired differences.

The paired difference against the base model on the *same* prompts is far more sensitive than comparing two
separate means (tiny-lab notes: s.e. of a paired binary difference is sqrt(fixed + broken) / n).
"""

from __future__ import annotations

import math
from typing import Sequence


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample s.d. / sqrt(n)); se is 0 for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def paired_diff(base: Sequence[float], new: Sequence[float]) -> tuple[float, float]:
    """Mean of (new - base) over the same items, with its standard error. For 0/1 scores this equals
    (fixed - broken) / n with se close to sqrt(fixed + broken) / n."""
    if len(base) != len(new):
        raise ValueError(f"paired_diff needs the same items: {len(base)} vs {len(new)} scores")
    return mean_se([b2 - b1 for b1, b2 in zip(base, new)])


def fmt_pm(mean: float, se: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def fmt_mean_se(mean: float, se: float | None, *, signed: bool = False) -> str:
    """A mean at the precision its standard error allows: se to 2 significant digits, the mean to the same
    decimal place (37.1234 ± 0.4407 -> 37.12 ± 0.44; 0.5 ± 0.19 -> 0.50 ± 0.19; 48 ± 0 -> 48 ± 0)."""
    sign = "+" if signed and mean >= 0 else ""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if se is None or se == 0 or math.isnan(se):
        text = f"{mean:.4g}" if mean != int(mean) else f"{int(mean)}"
        return sign + text + ("" if se is None else " ± 0")
    decimals = max(0, 1 - math.floor(math.log10(abs(se))))
    return f"{sign}{mean:.{decimals}f} ± {se:.{decimals}f}"


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan when either side is constant or there are fewer than 2 points."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"pearson needs paired values: {n} vs {len(y)}")
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks, so ties are handled)."""
    return pearson(ranks(x), ranks(y))


def hinge_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares continuous two-piece line y = a + b1*min(x, c) + b2*max(x - c, 0), the breakpoint c on a grid
    over the observed x: a 'rises then plateaus' trend shows as b1 > 0 and b2 near 0 (paper Section 5: gains
    rise with delta up to ~0.55, then plateau). Also the plain linear fit, for comparison."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    lin = np.polyfit(x, y, 1)
    best = None
    for c in np.quantile(x, np.linspace(0.15, 0.85, 29)):
        X = np.stack([np.ones_like(x), np.minimum(x, c), np.maximum(x - c, 0)], 1)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(((X @ coef - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(c), coef)
    sse, c, (a, b1, b2) = best
    lin_sse = float(((np.polyval(lin, x) - y) ** 2).sum())
    return {"breakpoint": c, "intercept": float(a), "slope_below": float(b1), "slope_above": float(b2),
            "sse": sse, "linear_slope": float(lin[0]), "linear_intercept": float(lin[1]), "linear_sse": lin_sse,
            "pearson_r": float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 else float("nan")}
