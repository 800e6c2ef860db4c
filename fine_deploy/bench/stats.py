"""Summary statistics of timing samples and the noise-aware comparison of two sample sets.

The comparison follows asv and Google Benchmark's compare.py: the ratio of medians (robust to the
long right tail of latency samples), a bootstrap confidence interval for that ratio, and a
Mann-Whitney U test (no normality assumption). A change counts only when the point estimate
crosses the threshold *and* the samples really differ; "unchanged" needs the whole interval inside
the threshold band, so a handful of noisy samples is "inconclusive", never a silent pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

VERDICTS = ("improved", "regressed", "unchanged", "inconclusive")
MIN_SAMPLES = 5  # below this the U test cannot reach p < 0.05 two-sided (n=m=4 gives p >= 0.029 only)
ESTIMATOR = "median"


def summarize(samples: np.ndarray | list[float]) -> dict[str, float]:
    """median, mean, std, p90, p99, min, max, IQR and count of timing samples (seconds)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples")
    q25, q50, q75, q90, q99 = np.percentile(x, [25, 50, 75, 90, 99])
    return {
        "n": int(x.size),
        "median": float(q50),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "p90": float(q90),
        "p99": float(q99),
        "min": float(x.min()),
        "max": float(x.max()),
        "iqr": float(q75 - q25),
    }


@dataclass(frozen=True)
class Comparison:
    """Current against baseline for one model. ``ratio`` > 1 means current is slower."""

    name: str
    verdict: str
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    baseline_median: float
    current_median: float
    n_baseline: int
    n_current: int
    threshold: float
    reason: str
    method: str = "unpaired"
    normalized: bool = False
    # how the verdict was reached: metric, normaliser, noise model, decision band, runs (report.py)
    decided_by: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        # JSON has no NaN: undefined statistics (too few samples) become null.
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def bootstrap_ratio_ci(
    base: np.ndarray, cur: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of median(cur) / median(base), resampling each side."""
    rng = np.random.default_rng(seed)
    mb = np.median(base[rng.integers(0, base.size, (n_boot, base.size))], axis=1)
    mc = np.median(cur[rng.integers(0, cur.size, (n_boot, cur.size))], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(mc / mb, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_ratio_ci(
    base: np.ndarray, cur: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median per-round ratio, resampling whole rounds."""
    rng = np.random.default_rng(seed)
    r = cur / base
    boot = np.median(r[rng.integers(0, r.size, (n_boot, r.size))], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)


def wilcoxon_p(base: np.ndarray, cur: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the per-round log ratios (1.0 if all equal)."""
    from scipy.stats import wilcoxon

    d = np.log(cur / base)
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def mann_whitney_p(base: np.ndarray, cur: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value (1.0 when every sample is identical)."""
    from scipy.stats import mannwhitneyu

    if np.all(base == base[0]) and np.all(cur == base[0]):
        return 1.0
    return float(mannwhitneyu(cur, base, alternative="two-sided").pvalue)


def compare(
    baseline: np.ndarray | list[float],
    current: np.ndarray | list[float],
    *,
    name: str = "model",
    threshold: float = 0.05,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    normalized: bool = False,
    paired: bool = False,
) -> Comparison:
    """Verdict for ``current`` against ``baseline`` at a relative ``threshold`` (0.05 = 5%).

    regressed    ratio > 1+t, U test p < alpha and the CI lies above 1
    improved     ratio < 1/(1+t), p < alpha and the CI lies below 1
    unchanged    the whole CI lies within [1/(1+t), 1+t]
    inconclusive anything else (too few samples, too much noise to tell)

    ``paired`` (both sides timed in the same interleaved rounds, sample i of each from round i):
    the ratio is the median of per-round ratios and the test is Wilcoxon's signed-rank test;
    adjacent runs share the machine's momentary state, so its drift cancels out.
    """
    base = np.asarray(baseline, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if threshold <= 0:
        raise ValueError("threshold must be positive")
    mb, mc = (
        float(np.median(base)) if base.size else float("nan"),
        float(np.median(cur)) if cur.size else float("nan"),
    )
    common = dict(
        name=name,
        baseline_median=mb,
        current_median=mc,
        n_baseline=int(base.size),
        n_current=int(cur.size),
        threshold=threshold,
        normalized=normalized,
    )
    if paired and base.size != cur.size:
        raise ValueError("paired samples need equal counts")
    if min(base.size, cur.size) < MIN_SAMPLES:
        ratio = mc / mb if base.size and cur.size else float("nan")
        return Comparison(
            verdict="inconclusive",
            ratio=ratio,
            ci_low=float("nan"),
            ci_high=float("nan"),
            p_value=float("nan"),
            reason=f"too few samples ({base.size} vs {cur.size}; need at least {MIN_SAMPLES} each)",
            **common,
        )
    if paired:
        ratio = float(np.median(cur / base))
        lo, hi = paired_ratio_ci(base, cur, confidence, n_boot, seed)
        p = wilcoxon_p(base, cur)
    else:
        ratio = mc / mb
        lo, hi = bootstrap_ratio_ci(base, cur, confidence, n_boot, seed)
        p = mann_whitney_p(base, cur)
    up, down = 1.0 + threshold, 1.0 / (1.0 + threshold)
    pct = f"{(ratio - 1) * 100:+.1f}%"
    if ratio > up and p < alpha and lo > 1.0:
        verdict, reason = (
            "regressed",
            f"{(ratio - 1) * 100:.1f}% slower, beyond the {threshold:.0%} threshold (p={p:.2g})",
        )
    elif ratio < down and p < alpha and hi < 1.0:
        verdict, reason = (
            "improved",
            f"{(1 - ratio) * 100:.1f}% faster, beyond the {threshold:.0%} threshold (p={p:.2g})",
        )
    elif down <= lo and hi <= up:
        verdict, reason = "unchanged", f"{pct}; the {confidence:.0%} interval lies within ±{threshold:.0%}"
    else:
        verdict, reason = (
            "inconclusive",
            (f"{pct}, interval [{lo:.3f}, {hi:.3f}] crosses the ±{threshold:.0%} band (p={p:.2g}); take more runs"),
        )
    return Comparison(
        verdict=verdict,
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        reason=reason,
        method="paired" if paired else "unpaired",
        **common,
    )
