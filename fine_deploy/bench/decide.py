"""The verdict rule: a likelihood-ratio (Wald SPRT) decision between "no change" and "a change of the threshold".

``threshold`` t is the smallest change the gate must catch: H0 says the log ratio is 0, H1 says it is
log(1+t) (H-1: -log(1+t) for an improvement). With the estimate x of the log ratio and its standard error
s (which includes the platform's between-run noise when the two sides come from separate runs), the
log likelihood ratio of H1 against H0 is (x·d - d²/2)/s², d = log(1+t). Wald's boundaries A = log((1-β)/α)
and B = log(β/(1-α)) give:

    regressed     LLR(H1:H0) >= A      (a false alarm at no change has probability <= α)
    improved      LLR(H-1:H0) >= A
    unchanged     both LLRs <= B       (a real change of t is passed with probability <= β)
    inconclusive  otherwise: the data cannot tell t from 0 yet; measure more (bench --until-decided)

On the ratio scale the boundaries are: regressed above exp(d/2 + A·s²/d), unchanged within
exp(±(d/2 + B·s²/d)). The noisier the platform, the wider the inconclusive zone between them; once
s >= d/sqrt(2·(A-B))-ish, "unchanged" cannot be reached at all and only more runs help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.01  # false alarms at no change
BETA = 0.05  # misses at a change of exactly the threshold


def boundaries(alpha: float = ALPHA, beta: float = BETA) -> tuple[float, float]:
    """Wald's (A, B) for error rates ``alpha`` and ``beta``."""
    return math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))


@dataclass(frozen=True)
class Band:
    """The decision zones on the ratio scale for one standard error."""

    regressed_above: float  # ratio at or above this: regressed
    improved_below: float  # at or below this: improved
    unchanged_low: float  # within [low, high]: unchanged (low > high when unreachable)
    unchanged_high: float


def band(se: float, threshold: float, alpha: float = ALPHA, beta: float = BETA) -> Band:
    d = math.log1p(threshold)
    a, b = boundaries(alpha, beta)
    up = d / 2 + a * se * se / d
    keep = d / 2 + b * se * se / d
    return Band(math.exp(up), math.exp(-up), math.exp(-keep), math.exp(keep))


def decide(x: float, se: float, threshold: float, alpha: float = ALPHA, beta: float = BETA) -> str:
    """Verdict for log ratio ``x`` with standard error ``se`` (see the module docstring)."""
    if not (math.isfinite(x) and math.isfinite(se)) or se <= 0:
        return "inconclusive"
    d = math.log1p(threshold)
    a, b = boundaries(alpha, beta)
    up = (x * d - d * d / 2) / (se * se)
    down = (-x * d - d * d / 2) / (se * se)
    if up >= a:
        return "regressed"
    if down >= a:
        return "improved"
    if up <= b and down <= b:
        return "unchanged"
    return "inconclusive"


def robust_location(values: list[float] | tuple[float, ...]) -> tuple[float, float]:
    """Median of ``values`` and its standard error from the MAD (1.2533·1.4826·MAD/√n)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    se = 1.2533 * 1.4826 * mad / math.sqrt(v.size) if v.size else float("nan")
    # a run of identical values has MAD 0: fall back to the standard deviation, then to 1e-6
    if se <= 0 and v.size > 1:
        se = float(v.std(ddof=1)) / math.sqrt(v.size)
    return med, max(se, 1e-6)
