"""How much one bench run of a model differs from another run of the same model: the between-run noise model.

Measured on the project's 2-core VM (12 separate `bench` processes of one 6 ms MatMul chain, a second
engineer's benchmark loading both cores): the run's median process CPU time varied by sd 1.4% from run to
run while each run's own bootstrap interval said ±0.1%: the within-run spread says nothing about the next
run. Of the estimators tried, the 10th percentile of CPU time varied least (sd 1.0%). Dividing by the
calibration kernel's time made it *worse* (sd 3%): the small GEMM is ~4x more sensitive to a neighbour's
cache and memory traffic than the model, so dividing over-corrects. What worked: the model's log time
moves with the calibration's log time with an elasticity β (0.23 for that model), learned from A/A history;
dividing by calibration^β left sd 0.33% (leave-one-out). So a run's value is

    v = log p10(model) - β · log p10(calibration)

and the noise model holds β and the sd of v across separate runs of the same artifact (the A/A history
stored beside the baseline: `report --history`). Without history, β is 0 on the same machine (1 across
machines: then machine speed dominates) and the sd is a conservative default, so at a 5% threshold most
comparisons are inconclusive until history is given or `bench --until-decided` measures both sides together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fine_deploy.bench.schema import BenchResult, ModelResult
from fine_deploy.errors import FineDeployError

QUANTILE = 10  # percentile of the per-run samples that estimates a run (least variable across runs)
DEFAULT_SD = 0.015  # per-run sd without history: above the worst sd measured here under load (1.4%)
MIN_SD = 0.002  # never trust a history to be quieter than this (timer, frequency steps)
SD_CONFIDENCE = 0.75  # the learned sd is this upper confidence bound (learn_noise)
MIN_HISTORY = 3  # runs needed to learn an sd; β needs MIN_HISTORY + 1
METRIC_NAMES = {"cpu": "process CPU time", "wall": "wall time"}


@dataclass(frozen=True)
class RunValue:
    """One run of one model: log p10 of its samples, log p10 of the calibration's, within-run SE."""

    value: float
    calibration: float | None
    se: float
    n: int


def _log_p10(samples: list[float] | np.ndarray) -> float:
    return float(np.log(np.percentile(np.asarray(samples, dtype=np.float64), QUANTILE)))


def _p10_se(samples: list[float] | np.ndarray, n_boot: int = 300, seed: int = 0) -> float:
    """Bootstrap standard error of the log p10 (the within-run part of the noise)."""
    x = np.log(np.asarray(samples, dtype=np.float64))
    rng = np.random.default_rng(seed)
    boots = np.percentile(x[rng.integers(0, x.size, (n_boot, x.size))], QUANTILE, axis=1)
    return float(boots.std(ddof=1))


def samples_of(model: ModelResult, metric: str) -> list[float] | None:
    return model.cpu_samples_s if metric == "cpu" else model.samples_s


def calibration_of(result: BenchResult, metric: str) -> list[float] | None:
    cal = result.calibration
    if cal is None:
        return None
    return cal.cpu_samples_s if metric == "cpu" else cal.samples_s


def run_value(result: BenchResult, model: ModelResult, metric: str) -> RunValue:
    samples = samples_of(model, metric)
    if not samples or not all(s > 0 for s in samples):
        raise FineDeployError(
            f"{model.name} has no positive {METRIC_NAMES[metric]} samples (a GPU backend or an older bench "
            "file); use --metric wall or re-run fine-deploy bench"
        )
    cal = calibration_of(result, metric)
    cal_value = _log_p10(cal) if cal and all(c > 0 for c in cal) else None
    return RunValue(_log_p10(samples), cal_value, _p10_se(samples), len(samples))


@dataclass(frozen=True)
class NoiseModel:
    """β (how the model's log time follows the calibration's) and the sd of a run's value across runs."""

    metric: str
    elasticity: float
    sd: float
    history_runs: int
    source: str

    def value(self, rv: RunValue) -> float:
        if self.elasticity and rv.calibration is None:
            raise FineDeployError(
                "the noise model normalises by the calibration kernel, but a bench file has none; "
                "re-run fine-deploy bench without --no-calibrate"
            )
        return rv.value - (self.elasticity * rv.calibration if self.elasticity else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_noise(metric: str, same_machine: bool, elasticity: float | None = None) -> NoiseModel:
    """No history: the default sd; β 0 on one machine, 1 across machines, or ``elasticity`` when given."""
    beta = elasticity if elasticity is not None else (0.0 if same_machine else 1.0)
    return NoiseModel(
        metric=metric,
        elasticity=beta,
        sd=DEFAULT_SD,
        history_runs=0,
        source=(
            f"default (no A/A history given): sd {DEFAULT_SD:.1%} per run assumed, "
            + ("no calibration scaling" if not beta
               else f"times divided by the calibration kernel's^{beta:g}")
        ),
    )


def learn_noise(values: list[RunValue], metric: str, elasticity: float | None = None) -> NoiseModel:
    """Fit β (unless ``elasticity`` is given) and the per-run sd from values of separate runs of one
    artifact (its A/A history)."""
    if len(values) < MIN_HISTORY:
        raise FineDeployError(
            f"the A/A history has {len(values)} run(s) of this model; give at least {MIN_HISTORY} separate "
            "bench runs of the baseline artifact with --history"
        )
    y = np.array([v.value for v in values])
    cals = [v.calibration for v in values]
    beta, dof = 0.0, 1
    if elasticity is not None:
        if elasticity and any(c is None for c in cals):
            raise FineDeployError("a history run has no calibration kernel; re-run it without --no-calibrate")
        beta = elasticity
    elif len(values) > MIN_HISTORY and all(c is not None for c in cals):
        x = np.array(cals, dtype=np.float64)
        if float(x.std()) > 0:
            beta = float(np.clip(np.polyfit(x, y, 1)[0], 0.0, 1.0))
            dof = 2
    resid = y - beta * np.array([c or 0.0 for c in cals]) if beta else y
    df = max(len(values) - dof, 1)
    sd = float(np.sqrt(np.sum((resid - resid.mean()) ** 2) / df))
    # a few runs can look quieter than the platform is: use the upper 75% confidence bound of the sd
    # (x1.32 for 8 runs, x1.09 for 40), so a short history costs power rather than false alarms
    from scipy.stats import chi2

    sd *= math.sqrt(df / chi2.ppf(1 - SD_CONFIDENCE, df))
    sd = max(sd, MIN_SD, max(v.se for v in values))
    return NoiseModel(
        metric=metric,
        elasticity=beta,
        sd=sd,
        history_runs=len(values),
        source=f"learned from {len(values)} A/A runs (--history)",
    )


def history_values(history: list[BenchResult], name: str, sha256: str | None, metric: str) -> list[RunValue]:
    """The runs of model ``name`` (or the only model of a file, when its sha256 matches) in ``history``."""
    out, seen = [], set()
    for r in history:
        if r.run_id in seen:
            continue
        seen.add(r.run_id)
        match = [m for m in r.models if m.name == name]
        if not match and len(r.models) == 1 and (sha256 is None or r.models[0].sha256 == sha256):
            match = r.models
        if match:
            out.append(run_value(r, match[0], metric))
    return out


def pair_se(noise: NoiseModel, base: RunValue, cur: RunValue) -> float:
    """Standard error of the difference of two separate runs' values: each run has the between-run sd
    (or its own within-run SE when that is larger: a short run)."""
    return math.sqrt(max(noise.sd, base.se) ** 2 + max(noise.sd, cur.se) ** 2)
