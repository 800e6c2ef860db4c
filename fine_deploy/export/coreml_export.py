"""Core ML export: an ML program `.mlpackage` through coremltools' torch.export route.

The torch.jit.trace route fails with numpy 2.x; torch.export converts the tiny UNet and DiT. Shapes
are fixed (flexible shapes run far slower on the Neural Engine) and inputs/outputs carry explicit
names. On Linux the package is checked without loading the model (`skip_model_load`): its interface,
and that every weight it holds equals the folded weight; on macOS predictions are compared too.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fine_deploy.backbones import Adapter
from fine_deploy.errors import FineDeployError
from fine_deploy.export.io_names import OUTPUT_NAME, ExportWrapper

TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")


def _ct():
    try:
        import coremltools as ct
    except ImportError:
        raise FineDeployError("--format coreml needs coremltools; pip install 'fine-deploy[coreml]'") from None
    return ct


def export_coreml(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path, *, adapter: Adapter, fp16: bool,
                  deployment_target: str = "iOS16") -> Any:
    if deployment_target not in TARGETS:
        raise FineDeployError(f"deployment target {deployment_target!r} is unknown; use one of {', '.join(TARGETS)}")
    ct = _ct()
    wrapper = ExportWrapper(model, list(inputs), adapter).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(wrapper, tuple(inputs.values())).run_decompositions({})
        except Exception as e:  # torch.export raises many types for untraceable code
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(f"torch.export could not capture the subnet for Core ML: {first}") from None
        ct_inputs = [
            ct.TensorType(name=k, shape=tuple(v.shape), dtype=np.float32 if v.is_floating_point() else np.int32)
            for k, v in inputs.items()
        ]
        mlmodel = ct.convert(
            program,
            inputs=ct_inputs,
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, deployment_target),
            skip_model_load=True,
        )
    mlmodel.save(str(path))
    return mlmodel


def check_package(path: Path, model: nn.Module, inputs: dict[str, torch.Tensor], *, fp16: bool) -> dict[str, Any]:
    """Load the package spec without compiling it; check names, shapes and that weights equal the folded ones."""
    ct = _ct()
    from coremltools.optimize.coreml import get_weights_metadata

    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    desc = loaded.get_spec().description
    got_in = {f.name: [int(d) for d in f.type.multiArrayType.shape] for f in desc.input}
    want_in = {k: list(v.shape) for k, v in inputs.items()}
    if got_in != want_in or [f.name for f in desc.output] != [OUTPUT_NAME]:
        raise FineDeployError(f"Core ML package has inputs {got_in} / outputs {[f.name for f in desc.output]}, "
                              f"expected {want_in} / {[OUTPUT_NAME]}; re-export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        consts = {k: np.asarray(v.val) for k, v in get_weights_metadata(loaded, weight_threshold=1).items()}
    rtol = 1e-3 if fp16 else 0.0
    by_size: dict[int, list[np.ndarray]] = {}
    for v in consts.values():
        by_size.setdefault(v.size, []).append(v.astype(np.float64))
    checked, worst, missing = 0, 0.0, []
    for name, p in model.named_parameters():  # yields a shared Parameter once
        want = p.detach().double().numpy()
        # the converter renames weights and stores matmul weights transposed (as `linear` takes them)
        views = [want] + ([want.T] if want.ndim == 2 else [])
        scale = float(np.abs(want).max()) or 1.0
        best = min((float(np.abs(g.reshape(w.shape) - w).max()) / scale
                    for g in by_size.get(want.size, []) for w in views), default=None)
        if best is None or best > max(rtol, 1e-6):
            missing.append(name)
            continue
        worst = max(worst, best)
        checked += 1
    if missing or worst > max(rtol, 1e-6):
        what = (f"{len(missing)} weights are missing (e.g. {missing[0]})" if missing
                else f"weights differ by {worst:.1e}")
        raise FineDeployError(f"Core ML package does not hold the folded weights: {what}; re-export")
    return {"inputs": got_in, "outputs": [OUTPUT_NAME], "weights_checked": checked, "weights_max_rel_diff": worst,
            "consts": len(consts)}


def predict(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """Core ML prediction (macOS only); None elsewhere."""
    if sys.platform != "darwin":
        return None
    ct = _ct()
    out = ct.models.MLModel(str(path)).predict(feeds)
    return np.asarray(out[OUTPUT_NAME])
