"""int8 ONNX through onnxruntime.quantization: static Q/DQ from calibration inputs, or dynamic.

- static (`quantize_static`, QuantFormat.QDQ): int8 weights with per-channel scales, activation ranges
  from MinMax calibration over inputs drawn from the supernet's data (calibration images noised at
  random timesteps, the same inputs `convert` measures its fidelity on). Only the weight-bearing ops
  (MatMul, Gemm, Conv) are quantised: quantising every Add/Mul/Softmax too put the timestep
  embedding's and attention's wide ranges on an 8-bit grid and measured 23 dB PSNR on the default
  supernet's parity input against 43 dB for the weight-bearing ops alone. TensorRT's explicit
  quantization wants symmetric int8 activations (zero point 0); ONNX Runtime's quantisation guide gives
  uint8 activations with int8 weights (U8S8) as the x86 CPU default, so the caller says which
  (`symmetric`; symmetric also leaves biases float, as TensorRT's Q/DQ graphs want).
- dynamic (`quantize_dynamic`, MatMul/Gemm): int8 weights, activations quantised per run; no calibration
  data, ONNX Runtime only.

The graph is first run through onnxruntime's `quant_pre_process` (symbolic shape inference and ORT's
graph optimisations), as its quantisation guide recommends.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import Supernet

STATIC_OPS = ("MatMul", "Gemm", "Conv")
DYNAMIC_OPS = ("MatMul", "Gemm")  # onnxruntime's dynamic Conv kernel (ConvInteger) is missing on many EPs
CALIB_SAMPLES = 32
CHECK_SAMPLES = 8  # held-out inputs the quantised graph is measured on after calibration
CALIB_SEED = 4321


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs a warning per 1-D weight it leaves per-tensor through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def check_calibration(images: torch.Tensor, sample: torch.Tensor, name: str) -> None:
    """Calibration images fit the model's image input (checked before the export does any work)."""
    if list(images.shape[1:]) != list(sample.shape[1:]):
        raise FineDeployError(
            f"calibration images are {list(images.shape[1:])}, the model's {name} is {list(sample.shape[1:])}; "
            "pass --calib with images of that shape, or --int8-mode dynamic"
        )
    if len(images) < sample.shape[0]:
        raise FineDeployError(f"calibration data holds {len(images)} images, fewer than the export's batch "
                              f"{sample.shape[0]}; pass more images with --calib")
    if not bool(torch.isfinite(images).all()):
        raise FineDeployError("calibration images hold NaN or inf values; pass clean images with --calib")


def calibration_feeds(sn: Supernet, model: torch.nn.Module, images: torch.Tensor,
                      export_inputs: dict[str, torch.Tensor], *, samples: int = CALIB_SAMPLES,
                      seed: int = CALIB_SEED) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """`samples` feeds at the export's shapes and dtypes: calibration images noised at random timesteps
    (supernet.fidelity's measurement inputs), with random class labels / conditioning."""
    from fine_deploy.supernet.fidelity import measurement_inputs

    ad = sn.adapter
    x = export_inputs[ad.sample_input]
    check_calibration(images, x, ad.sample_input)
    batch = int(x.shape[0])
    feeds = []
    desc: dict[str, Any] = {}
    for i in range(samples):
        m, desc = measurement_inputs(sn, model, images, batch=batch, seed=seed + i, budget_s=float("inf"))
        feed = {}
        for k, ref in export_inputs.items():
            v = m.get(k)
            v = ref if v is None or list(v.shape) != list(ref.shape) else v.to(ref.dtype)
            feed[k] = v.numpy()
        feeds.append(feed)
    return feeds, {"samples": samples, "images": int(len(images)), "data": desc.get("data"), "seed": seed}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds (subclassed lazily below)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(src: Path, dst: Path, *, mode: str, feeds: list[dict[str, np.ndarray]] | None,
                  symmetric: bool = False, external_data: bool = False,
                  exclude: Callable[[Any], list[str]] | None = None) -> dict[str, Any]:
    """Write the int8 model of `src` to `dst`; return what was done (recorded in the manifest). `exclude`
    names, given the graph to be quantised, the nodes to leave in float (layers a plan keeps at fp32)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode == "static" and not feeds:
        raise FineDeployError("static int8 needs calibration data; pass --calib PATH (.npy/.safetensors images "
                              "[N, C, H, W] in [-1, 1]) or --int8-mode dynamic")
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as work, _quiet_quantizer():
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(src), str(pre), save_as_external_data=external_data,
                          all_tensors_to_one_file=external_data)
        import onnx

        skip = exclude(onnx.load(str(pre), load_external_data=False)) if exclude is not None else None
        if mode == "static":
            reader = type("Reader", (_Reader, CalibrationDataReader), {})(feeds)
            act = QuantType.QInt8 if symmetric else QuantType.QUInt8
            quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            nodes_to_exclude=skip,
                            op_types_to_quantize=list(STATIC_OPS), activation_type=act,
                            weight_type=QuantType.QInt8, use_external_data_format=external_data,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                           # TensorRT's Q/DQ graphs keep biases float (it fuses them itself)
                                           "QuantizeBias": not symmetric})
            what = {"mode": "static", "format": "QDQ", "ops": list(STATIC_OPS), "calibration": "MinMax",
                    "activations": "int8 symmetric" if symmetric else "uint8 asymmetric"}
        else:
            if skip:  # dynamic mode first rewrites each Gemm X as MatMul "X_MatMul" + Add, then matches names
                skip = [*skip, *(f"{n}_MatMul" for n in skip)]
            quantize_dynamic(str(pre), str(dst), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=True,
                             nodes_to_exclude=skip,
                             weight_type=QuantType.QInt8, use_external_data_format=external_data)
            what = {"mode": "dynamic", "ops": list(DYNAMIC_OPS), "activations": "quantised per run"}
    import onnx

    onnx.checker.check_model(str(dst), full_check=True)  # path-based: reads external data from disk
    return {**what, "weights": "int8 per-channel symmetric", "nodes_left_float": len(set(skip or [])),
            **quantized_content(dst)}


def quantized_content(path: Path) -> dict[str, Any]:
    """Quantisation ops and int8 initializers of an ONNX file (what proves it is quantised)."""
    import onnx
    from onnx import TensorProto

    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    q_ops = {k: v for k, v in sorted(ops.items())
             if k in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                      "ConvInteger", "QLinearMatMul", "QLinearConv")}
    int8 = [t for t in proto.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.UINT8)]
    return {"quant_ops": q_ops, "int8_initializers": len(int8),
            "int8_weight_elements": int(sum(int(np.prod(t.dims)) for t in int8))}
