"""Roofline estimates: a layer takes max(flops / peak, bytes / bandwidth) plus a per-kernel overhead.

Spec-sheet peaks are never reached by small kernels, so the roofline is calibrated on whatever the
profiler measured: the effective peak, bandwidth and per-kernel overhead are fitted to the LUT
(least squares on relative error), and the fitted line estimates the shapes the LUT lacks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_deploy.cost.precisions import WEIGHT_BITS
from fine_deploy.cost.shapes import LayerShape, activation_elems, form_macs, form_weight_elems

if TYPE_CHECKING:
    from fine_deploy.cost.lut import LutEntry
    from fine_deploy.cost.profiles import DeviceProfile

# bytes of one element of each arithmetic dtype: the stored widths of cost.precisions, plus tf32 (fp32 storage)
DTYPE_BYTES = {"tf32": 4, **{d: WEIGHT_BITS[d] // 8 for d in ("fp32", "fp16", "bf16", "fp8", "int8")}}
NODES = {"dense": 1, "low_rank": 2, "shared_basis": 3}  # kernels a form launches


def roofline_seconds(
    flops: float, nbytes: float, peak_flops: float, bandwidth: float, overhead_s: float = 0.0
) -> float:
    """max(compute time, memory time) + overhead: monotone non-decreasing in flops and bytes."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError("peak_flops and bandwidth must be positive")
    return max(flops / peak_flops, nbytes / bandwidth) + overhead_s


def layer_traffic(shape: LayerShape, form: str, rank: int | None, dtype: str = "fp32") -> tuple[float, float, int]:
    """(FLOPs, bytes moved, kernels) of one layer choice: weights read once, activations written once
    and read once (the intermediate of a factorised form is written and read back)."""
    size = DTYPE_BYTES[dtype]
    own, shared = form_weight_elems(shape, form, rank)
    x_in, mid, out = activation_elems(shape, form, rank)
    flops = 2.0 * form_macs(shape, form, rank) + (shape.tokens * (rank or 0) if form == "shared_basis" else 0)
    nbytes = size * (own + shared + x_in + 2 * mid + out)
    return flops, float(nbytes), NODES[form]


@dataclass(frozen=True)
class Roofline:
    peak_flops: float
    bandwidth: float
    per_kernel_s: float = 0.0
    source: str = "spec"  # "spec" (profile figures) or "fitted" (calibrated on a LUT)
    fitted_on: int = 0
    median_abs_rel_error: float | None = None  # on the entries it was fitted on

    def seconds(self, flops: float, nbytes: float, kernels: int = 1) -> float:
        return roofline_seconds(flops, nbytes, self.peak_flops, self.bandwidth, kernels * self.per_kernel_s)

    def layer_seconds(self, shape: LayerShape, form: str, rank: int | None, dtype: str = "fp32") -> float:
        return self.seconds(*layer_traffic(shape, form, rank, dtype))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Roofline:
        return cls(**d)


def spec_roofline(profile: DeviceProfile, dtype: str = "fp32") -> Roofline:
    """The uncalibrated roofline of a profile's spec figures."""
    return Roofline(profile.peak(dtype), profile.memory_bandwidth, profile.launch_overhead_s, "spec")


def fit_roofline(entries: list[LutEntry]) -> Roofline:
    """Fit effective peak, bandwidth and per-kernel overhead to measured entries (relative error)."""
    from scipy.optimize import least_squares

    rows = [(layer_traffic(e.shape, e.form, e.rank), e.seconds) for e in entries if e.seconds > 0]
    if len(rows) < 3:
        raise ValueError("fitting a roofline needs at least 3 measured entries with positive time")
    flops = np.array([r[0][0] for r in rows])
    nbytes = np.array([r[0][1] for r in rows])
    kernels = np.array([r[0][2] for r in rows], dtype=float)
    meas = np.array([r[1] for r in rows])

    def predict(p: np.ndarray) -> np.ndarray:
        peak, bw, k = np.exp(p)
        return np.maximum(flops / peak, nbytes / bw) + kernels * k

    x0 = np.log([np.max(flops / meas), np.max(nbytes / meas), np.min(meas) / 4])
    def resid(p: np.ndarray) -> np.ndarray:
        return predict(p) / meas - 1.0

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        res = least_squares(resid, x0, method="lm" if len(rows) > 3 else "trf")
        if not np.all(np.isfinite(np.exp(res.x))):
            # one term can be unidentifiable (every layer compute-bound: any larger bandwidth fits) and the
            # unbounded solver walks it to overflow; bounded, it stops where the term stops mattering
            span = np.log(1e4)
            res = least_squares(resid, x0, method="trf", bounds=(x0 - span - np.array([0, 0, 14.0]), x0 + span))
        peak, bw, k = (float(v) for v in np.exp(res.x))
    err = float(np.median(np.abs(predict(res.x) / meas - 1.0)))
    if not all(math.isfinite(v) and v > 0 for v in (peak, bw, k)):
        raise ValueError("roofline fit diverged")
    return Roofline(peak, bw, k, "fitted", len(rows), err)
