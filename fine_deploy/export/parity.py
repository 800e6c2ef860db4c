"""Parity of an artifact against the PyTorch subnet on fixed random inputs.

relative error = max |artifact − torch| / max |torch| (one scale for the whole output, so a near-zero
element does not blow it up). fp32 ONNX must stay within 1e-5 (optimum's tolerance for its exports);
fp16 artifacts are held to 1e-2, and Core ML predictions to PSNR ≥ 35 dB (ml-stable-diffusion's bar).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fine_deploy.errors import FineDeployError

FP32_REL_TOL = 1e-5
FP16_REL_TOL = 1e-2
MIN_PSNR_DB = 35.0


@dataclass
class Parity:
    runtime: str  # what ran the artifact: "onnxruntime-cpu", "tensorrt", "coreml", "diffusers"
    reference: str  # what it was compared with
    max_abs: float
    rel: float
    psnr_db: float
    tolerance: float  # on rel
    passed: bool
    inputs: dict  # {"batch": b, "resolution": r, "seed": s}

    def to_json(self) -> dict:
        d = asdict(self)
        if math.isinf(d["psnr_db"]):
            d["psnr_db"] = None  # identical outputs; JSON has no infinity
        return d


def compare(out: np.ndarray, ref: np.ndarray, *, runtime: str, reference: str, tolerance: float,
            inputs: dict) -> Parity:
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
    passed = bool(np.isfinite(out).all()) and rel <= tolerance
    return Parity(runtime, reference, max_abs, rel, psnr, tolerance, passed, inputs)


def require(p: Parity, what: str) -> None:
    """Fail the export (nothing is written) when parity is out of tolerance."""
    if not p.passed:
        raise FineDeployError(
            f"{what}: {p.runtime} differs from PyTorch by rel. error {p.rel:.2e} (max abs {p.max_abs:.2e}), "
            f"above the tolerance {p.tolerance:.0e}; nothing was written — re-export in fp32 or report a bug"
        )
