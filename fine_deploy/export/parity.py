"""Parity of an artifact against the PyTorch subnet on fixed random inputs.

relative error = max |artifact − torch| / max |torch| (one scale for the whole output, so a near-zero
element does not blow it up); PSNR = 10·log10(max |torch|² / MSE). fp32 ONNX must stay within 1e-5
(optimum's tolerance for its exports); fp16 artifacts are held to 1e-2 and PSNR ≥ 35 dB
(ml-stable-diffusion's bar for its fp16 and palettised Core ML models); int8 changes every weight and
activation by up to half a quantisation step, so its max error is no useful bound and it is held to a
PSNR only (`bound`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fine_deploy.errors import FineDeployError

FP32_REL_TOL = 1e-5
FP16_REL_TOL = 1e-2
MIN_PSNR_DB = 35.0
# int8 (per-channel weights, MatMul/Gemm/Conv quantised), measured on the default supernet's full plan against
# the PyTorch fp32 subnet on the export's parity input: 43 dB static Q/DQ (uint8 activations), 43 dB
# symmetric (TensorRT's), 52 dB dynamic; on 8 held-out calibration-like inputs (recorded as
# `measured_on_data`) median 40 / min 21 dB static, median 47 / min 33 dB dynamic. 30 dB on the parity input
# leaves 13 dB under the lowest measurement there and refuses the quantisations that went wrong while
# building this: every op quantised (timestep embedding and softmax on an 8-bit grid, 23 dB) and
# symmetric activations on every op (2 dB).
INT8_MIN_PSNR_DB = 30.0
# 4-bit palettes keep 16 levels per tensor: ml-stable-diffusion reports its mixed-bit SDXL models below
# 35 dB and judges them by image quality, so only a gross failure is refused here
PALETTE_MIN_PSNR_DB = {"pal8": MIN_PSNR_DB, "pal6": 25.0, "pal4": 15.0}


@dataclass(frozen=True)
class Bound:
    """What an artifact at one precision must meet against the PyTorch fp32 subnet (None: not bounded)."""

    rel: float | None
    min_psnr_db: float | None

    def to_json(self) -> dict:
        return asdict(self)


def bound(precision: str) -> Bound:
    """The bound an artifact at `precision` is held to (read at call time, so a test can tighten a constant)."""
    bounds = {
        "fp32": Bound(FP32_REL_TOL, None),
        "fp16": Bound(FP16_REL_TOL, MIN_PSNR_DB),
        "bf16": Bound(None, MIN_PSNR_DB - 10.0),  # 8 mantissa bits: ~3 decimal digits fewer than fp16's 11
        "int8": Bound(None, INT8_MIN_PSNR_DB),
        **{p: Bound(None, db) for p, db in PALETTE_MIN_PSNR_DB.items()},
    }
    return bounds[precision]


@dataclass
class Parity:
    runtime: str  # what ran the artifact: "onnxruntime-cpu", "tensorrt", "coreml", "diffusers"
    reference: str  # what it was compared with
    max_abs: float
    rel: float
    psnr_db: float
    tolerance: float | None  # on rel
    passed: bool
    inputs: dict  # {"batch": b, "resolution": r, "seed": s}
    min_psnr_db: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        if math.isinf(d["psnr_db"]):
            d["psnr_db"] = None  # identical outputs; JSON has no infinity
        return d


def compare(out: np.ndarray, ref: np.ndarray, *, runtime: str, reference: str, tolerance: float | None,
            inputs: dict, min_psnr_db: float | None = None) -> Parity:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise FineDeployError(
            f"{runtime} output has shape {list(out.shape)}, PyTorch gives {list(ref.shape)}; "
            "the export is broken, re-export without --dynamic-batch or report a bug"
        )
    err = np.abs(out - ref)
    max_abs = float(err.max()) if err.size else 0.0
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    rel = max_abs / max(peak, 1e-12)
    mse = float(np.mean(err**2)) if err.size else 0.0
    psnr = math.inf if mse == 0 else 10 * math.log10(max(peak, 1e-12) ** 2 / mse)
    passed = (bool(np.isfinite(out).all()) and (tolerance is None or rel <= tolerance)
              and (min_psnr_db is None or psnr >= min_psnr_db))
    return Parity(runtime, reference, max_abs, rel, psnr, tolerance, passed, inputs, min_psnr_db)


def compare_at(out: np.ndarray, ref: np.ndarray, precision: str, *, runtime: str, reference: str,
               inputs: dict) -> Parity:
    """`compare` against the bound of `precision`."""
    b = bound(precision)
    return compare(out, ref, runtime=runtime, reference=reference, tolerance=b.rel, inputs=inputs,
                   min_psnr_db=b.min_psnr_db)


def require(p: Parity, what: str) -> None:
    """Fail the export (nothing is written) when parity is out of tolerance."""
    if not p.passed:
        bounds = " and ".join(b for b in (f"rel. error <= {p.tolerance:.0e}" if p.tolerance is not None else "",
                                         f"PSNR >= {p.min_psnr_db:g} dB" if p.min_psnr_db is not None else "") if b)
        raise FineDeployError(
            f"{what}: {p.runtime} differs from PyTorch by rel. error {p.rel:.2e} (max abs {p.max_abs:.2e}, PSNR "
            f"{p.psnr_db:.1f} dB), outside {bounds or 'finite outputs'}; nothing was written — re-export at a "
            "higher precision or report a bug"
        )
