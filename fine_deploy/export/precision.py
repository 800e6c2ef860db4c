"""Which precision an export is written at: the plan's `precision` map (or --precision), checked against
what the format can write, before any heavy work.

Every exporter asks `fine_deploy.planner.schema.precision_of` per layer; an artifact is written at one
precision (ONNX's fp16 converter and quantiser, TensorRT's builder flags and Core ML's compression
passes each apply to a whole graph), so a plan whose layers ask for different precisions is refused
with the way out (--precision) instead of being written at a precision it did not ask for.
"""

from __future__ import annotations

from collections import Counter

from fine_deploy.cost.precisions import DEFAULT, PALETTES, check_precision
from fine_deploy.errors import FineDeployError
from fine_deploy.planner.schema import Plan, precision_of
from fine_deploy.supernet.core import SubnetConfig, Supernet

# what each format's writer can produce (fp8 needs NVIDIA ModelOpt's FP8 Q/DQ graphs, not written here)
FORMAT_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "int8"),
    "trt": ("fp32", "fp16", "bf16", "int8"),
    "coreml": ("fp32", "fp16", *PALETTES),
    "diffusers": ("fp32", "fp16"),
}
INT8_MODES = ("static", "dynamic")


def layer_precisions(plan: Plan, sn: Supernet, config: SubnetConfig) -> dict[str, str]:
    """Every present factorised layer's precision as the plan gives it."""
    return {m.name: precision_of(plan, m.name, m.type) for m in sn.layout(config.depth).matrices}


def check_plan_precision_names(plan: Plan, sn: Supernet) -> None:
    """Each key of the plan's precision map is a layer name, a type name or "*" (a hand edit is caught here)."""
    known = {"*"} | {t.name for t in sn.types} | {m["name"] for t in sn.types for m in t.matrices}
    for key in plan.precision:
        if key not in known:
            raise FineDeployError(
                f"plan: precision for {key!r}, which is neither a layer nor a type of this supernet nor \"*\" "
                f"(types: {', '.join(t.name for t in sn.types)}); fix the plan or re-run `fine-deploy plan`"
            )


def artifact_precision(plan: Plan, sn: Supernet, config: SubnetConfig, fmt: str, override: str | None) -> str:
    """The one precision this export writes: `override` (--precision), else the plan's, else fp32; refused
    when the format cannot write it or the plan mixes precisions."""
    if override is not None:
        precision = check_precision(override, "--precision")
    else:
        check_plan_precision_names(plan, sn)
        counts = Counter(layer_precisions(plan, sn, config).values()) or Counter({plan.precision.get("*", DEFAULT): 1})
        if len(counts) > 1:
            mix = ", ".join(f"{p}: {n} layers" for p, n in counts.most_common())
            raise FineDeployError(
                f"plan gives its layers different precisions ({mix}); an artifact is written at one precision: "
                "pass --precision with one of them"
            )
        precision = next(iter(counts))
        where = "the plan's precision"
    valid = FORMAT_PRECISIONS[fmt]
    if precision not in valid:
        where = "--precision" if override is not None else where
        raise FineDeployError(
            f"{where} {precision} cannot be written as --format {fmt}; use one of {', '.join(valid)}"
            + _elsewhere(precision)
        )
    return precision


def _elsewhere(precision: str) -> str:
    fmts = [f for f, ps in FORMAT_PRECISIONS.items() if precision in ps]
    return f" ({precision} is offered for {', '.join(fmts)})" if fmts else ""


def check_int8_mode(mode: str, fmt: str, precision: str) -> str:
    if mode not in INT8_MODES:
        raise FineDeployError(f"--int8-mode {mode!r} is unknown; use one of {', '.join(INT8_MODES)}")
    if precision == "int8" and fmt == "trt" and mode != "static":
        raise FineDeployError("TensorRT builds int8 engines from Q/DQ nodes (explicit quantization); use "
                              "--int8-mode static with calibration data")
    return mode
