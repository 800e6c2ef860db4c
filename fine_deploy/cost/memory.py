"""Memory predictions: weights (shared bases once, by dtype) + peak live activations + runtime.

Peak activations come from liveness over the exported graph: shapes from ONNX shape inference at
the graph's batch and resolution, each tensor alive from the node that makes it to the last node
that reads it (graph inputs from the start, graph outputs to the end), nodes run in file order.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, shape_inference

from fine_deploy.cost.profiles import DeviceProfile
from fine_deploy.errors import FineDeployError


@dataclass(frozen=True)
class MemoryPrediction:
    weight_bytes: int
    activation_bytes: int  # peak of live activations
    runtime_bytes: int  # the runtime's own resident memory, from the device profile
    peak_node: str  # the node at which activations peak
    unseen_ops: list[str] = field(default_factory=list)  # op types the runtime calibration lacks

    @property
    def model_bytes(self) -> int:
        """What the model adds over an empty session of the runtime."""
        return self.weight_bytes + self.activation_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.runtime_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_bytes": self.model_bytes, "total_bytes": self.total_bytes}


def _elem_size(elem_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _tensor_bytes(vi: onnx.ValueInfoProto, dim_values: dict[str, int]) -> int | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    n = 1
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            n *= d.dim_value
        elif d.dim_param in dim_values:
            n *= dim_values[d.dim_param]
        else:
            return None
    return n * _elem_size(t.elem_type)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the distinct initialisers: a basis shared by many layers is one initialiser."""
    total = 0
    for init in model.graph.initializer:
        total += int(np.prod(init.dims, dtype=np.int64)) * _elem_size(init.data_type)
    return total


def activation_peak(model: onnx.ModelProto, dim_values: dict[str, int] | None = None) -> tuple[int, str]:
    """(peak bytes of live activations, the node where it peaks) over the graph in node order."""
    dim_values = dim_values or {}
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    inits = {i.name for i in g.initializer}
    infos = {vi.name: vi for vi in [*g.input, *g.value_info, *g.output]}
    sizes: dict[str, int] = {}
    for name, vi in infos.items():
        if name in inits:
            continue
        b = _tensor_bytes(vi, dim_values)
        if b is None:
            raise FineDeployError(
                f"tensor {name} has an unknown shape after shape inference; export with static shapes or give its dims"
            )
        sizes[name] = b
    last_use: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for x in node.input:
            if x in sizes:
                last_use[x] = i
    end = len(g.node)
    for o in g.output:
        last_use[o.name] = end
    live = {i.name for i in g.input if i.name in sizes}
    peak, where = sum(sizes[x] for x in live), "input"
    for i, node in enumerate(g.node):
        live |= {o for o in node.output if o in sizes}
        now = sum(sizes[x] for x in live)
        if now > peak:
            peak, where = now, node.name or f"{node.op_type}#{i}"
        live = {x for x in live if last_use.get(x, -1) > i}
    return peak, where


def weight_bytes_by_op(model: onnx.ModelProto) -> dict[str, int]:
    """Initialiser bytes by the op that reads them ("Conv", "MatMul", "other"): runtimes repack
    each op's weights their own way (ONNX Runtime: NCHWc reorder for Conv, pre-packed GEMM panels)."""
    readers: dict[str, str] = {}
    for node in model.graph.node:
        for x in node.input:
            readers.setdefault(x, node.op_type if node.op_type in ("Conv", "MatMul") else "other")
    out = {"Conv": 0, "MatMul": 0, "other": 0}
    for init in model.graph.initializer:
        n = int(np.prod(init.dims, dtype=np.int64)) * _elem_size(init.data_type)
        out[readers.get(init.name, "other")] += n
    return out


def memory_features(model: onnx.ModelProto, activation_bytes: int | None = None) -> dict[str, float]:
    """What a runtime's memory is fitted on: one session, one `op:<type>` per op type the graph
    uses, Conv weight bytes, other weight bytes, peak activation bytes (`activation_bytes` when the
    caller already has it, e.g. at its own batch and resolution)."""
    w = weight_bytes_by_op(model)
    ops = sorted({n.op_type for n in model.graph.node})
    return {
        "session": 1.0,
        **{f"op:{op}": 1.0 for op in ops},
        "conv_weight_bytes": float(w["Conv"]),
        "other_weight_bytes": float(w["MatMul"] + w["other"]),
        "activation_bytes": float(activation_peak(model)[0] if activation_bytes is None else activation_bytes),
    }


def fit_memory(samples: list[tuple[dict[str, float], int]]) -> dict[str, Any]:
    """Fit measured RSS increase = Σ coefficient x memory_features over (features, measured)
    samples: non-negative, least relative error.

    A runtime holds more than the bare tensors: ONNX Runtime (CPU) keeps an NCHWc-reordered copy of
    Conv weights and pre-packed GEMM panels beside MatMul initialisers, and every op type a graph
    uses pages in that kernel's code once. So the terms are measured (by the profiler, on a few
    subnets) rather than assumed; `coefficients` names them: bytes per session or op type, a factor
    per weight or activation byte. Terms present in every sample (the session, an op type every
    subnet uses) are not separable from each other; only their sum is meaningful.
    """
    from scipy.optimize import nnls

    if len(samples) < 6:
        raise ValueError("a memory fit needs at least 6 (features, measured) samples")
    names = sorted({k for f, _ in samples for k in f})
    a = np.array([[f.get(k, 0.0) for k in names] for f, _ in samples], dtype=float)
    y = np.array([m for _, m in samples], dtype=float)
    coef, _ = nnls(a / y[:, None], np.ones_like(y))
    pred = a @ coef
    return {
        "coefficients": {k: float(v) for k, v in zip(names, coef, strict=True)},
        "fitted_on": len(samples),
        "median_abs_rel_error": float(np.median(np.abs(pred / y - 1))),
    }


def predict_memory(
    model: onnx.ModelProto | str | os.PathLike,
    profile: DeviceProfile | None = None,
    dim_values: dict[str, int] | None = None,
    calibration: dict[str, float] | None = None,
) -> MemoryPrediction:
    """Memory of running `model` on the profile's device (runtime overhead 0 without a profile).

    With a LUT's memory `calibration` (fit_memory), weights and activations are scaled by the
    runtime's measured copy factors, and its bytes per session and per op type used go to the
    runtime share; an op type the calibration never saw adds nothing (it is listed in `unseen_ops`).
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        try:
            model = onnx.load(path)
        except Exception:
            raise FineDeployError(f"{path} is not a readable ONNX model; re-export it") from None
    act, where = activation_peak(model, dim_values)
    weights = weight_bytes(model)
    runtime = profile.runtime_overhead_bytes if profile is not None else 0
    unseen: list[str] = []
    if calibration:
        coef = calibration["coefficients"]
        f = memory_features(model, act)  # the peak at the caller's dims, computed once
        weights = round(f["conv_weight_bytes"] * coef.get("conv_weight_bytes", 1.0)
                        + f["other_weight_bytes"] * coef.get("other_weight_bytes", 1.0))
        act = round(act * coef.get("activation_bytes", 1.0))
        ops = [k for k in f if k.startswith("op:")]
        unseen = [k[3:] for k in ops if k not in coef]
        runtime += round(coef.get("session", 0.0) + sum(coef.get(k, 0.0) for k in ops))
    return MemoryPrediction(weights, act, runtime, where, unseen)
