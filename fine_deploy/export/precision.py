"""Which precision an export is written at: the plan's `precision` map (or --precision), checked against
what the format can write, before any heavy work.

Every exporter asks `fine_deploy.planner.schema.precision_of` per layer. `"*"` (fp32 when absent) is what
every graph node outside the plan's factorised layers runs at; a layer may differ from it where the format
can mix: ONNX fp32 with fp16 layers (the fp16 converter's node block list) or fp32 with int8 layers (the
quantiser's excluded nodes), TensorRT fp32 with int8 layers (Q/DQ only around those). Core ML's compression
passes and a diffusers folder's dtype apply to a whole model, and fp16 beside int8 in one ONNX graph is
not offered: such plans are refused with the way out (--precision).

A layer's graph nodes are found by module scope: the TorchScript exporter names a node
`/model/<module path with / between modules>/<Op>`, and a layer's parts name their module paths.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fine_deploy.cost.precisions import DEFAULT, PALETTES, WEIGHT_BITS, check_precision
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
WRAPPER_SCOPE = "model"  # io_names.ExportWrapper holds the backbone as `.model`


@dataclass(frozen=True)
class ArtifactPrecision:
    """What an export writes: `default` for every node outside the factorised layers, `layers` per layer."""

    default: str
    layers: dict[str, str]  # every present factorised layer -> its precision

    @property
    def kinds(self) -> set[str]:
        return {self.default, *self.layers.values()}

    @property
    def mixed(self) -> bool:
        return len(self.kinds) > 1

    @property
    def lowest(self) -> str:
        """The fewest-bits precision present: the one whose parity bound the artifact is held to."""
        return min(self.kinds, key=lambda p: (WEIGHT_BITS[p], p))

    def exceptions(self) -> dict[str, str]:
        return {k: v for k, v in self.layers.items() if v != self.default}

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default, "layers": dict(Counter(self.layers.values())),
                "exceptions": self.exceptions()}


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


# mixtures a format writes (beyond one precision for the whole artifact)
MIXES: dict[str, tuple[frozenset[str], ...]] = {
    "onnx": (frozenset({"fp32", "fp16"}), frozenset({"fp32", "int8"})),
    "trt": (frozenset({"fp32", "int8"}),),
}


def artifact_precision(plan: Plan, sn: Supernet, config: SubnetConfig, fmt: str,
                       override: str | None) -> ArtifactPrecision:
    """What this export writes: every layer at `override` (--precision), else the plan's map (fp32 where it
    says nothing); refused when the format cannot write a precision or that mixture."""
    if override is not None:
        p = check_precision(override, "--precision")
        choice = ArtifactPrecision(p, {m.name: p for m in sn.layout(config.depth).matrices})
        where = "--precision"
    else:
        check_plan_precision_names(plan, sn)
        choice = ArtifactPrecision(plan.precision.get("*", DEFAULT), layer_precisions(plan, sn, config))
        where = "the plan's precision"
    valid = FORMAT_PRECISIONS[fmt]
    for p in sorted(choice.kinds):
        if p not in valid:
            raise FineDeployError(
                f"{where} {p} cannot be written as --format {fmt}; use one of {', '.join(valid)}" + _elsewhere(p)
            )
    if choice.mixed and frozenset(choice.kinds) not in MIXES.get(fmt, ()):
        mix = ", ".join(f"{p}: {n} layers" for p, n in Counter(choice.layers.values()).most_common())
        mixes = " or ".join("+".join(sorted(m)) for m in MIXES.get(fmt, ())) or "none"
        raise FineDeployError(
            f"plan gives its layers {'+'.join(sorted(choice.kinds))} ({mix}; \"*\" {choice.default}), which "
            f"--format {fmt} cannot mix (it mixes {mixes}); pass --precision with one of them"
        )
    return choice


def node_layers(proto: Any, sn: Supernet, config: SubnetConfig) -> dict[str, str]:
    """Graph node name -> the factorised layer it belongs to (nodes outside every layer are left out)."""
    by_path = {path: m.name for m in sn.layout(config.depth).matrices for path, _, _ in m.parts}
    out = {}
    for node in proto.graph.node:
        scope = [s for s in node.name.split("/")[:-1] if s]
        if scope[:1] == [WRAPPER_SCOPE]:
            scope = scope[1:]
        pieces = ".".join(scope).split(".")
        for i in range(len(pieces), 0, -1):  # the longest module path the node's scope lies in
            layer = by_path.get(".".join(pieces[:i]))
            if layer is not None:
                out[node.name] = layer
                break
    return out


def nodes_not_at(proto: Any, choice: ArtifactPrecision, sn: Supernet, config: SubnetConfig, target: str) -> list[str]:
    """Names of the nodes a whole-graph pass to `target` (fp16 conversion, int8 quantisation) must leave alone:
    those of layers at another precision, and, when "*" is not `target`, every node outside the layers at it."""
    owner = node_layers(proto, sn, config)
    found = set(owner.values())
    lost = sorted(k for k in choice.exceptions() if k not in found)
    if lost:
        raise FineDeployError(
            f"no graph node of layer {lost[0]} was found in the exported graph, so its precision cannot be set; "
            "pass --precision to export every layer at one precision"
        )
    keep = []
    for node in proto.graph.node:
        layer = owner.get(node.name)
        at = choice.layers[layer] if layer is not None else choice.default
        if at != target:
            keep.append(node.name)
    return keep


def _elsewhere(precision: str) -> str:
    fmts = [f for f, ps in FORMAT_PRECISIONS.items() if precision in ps]
    return f" ({precision} is offered for {', '.join(fmts)})" if fmts else ""


def check_int8_mode(mode: str, fmt: str, choice: ArtifactPrecision) -> str:
    if mode not in INT8_MODES:
        raise FineDeployError(f"--int8-mode {mode!r} is unknown; use one of {', '.join(INT8_MODES)}")
    if "int8" in choice.kinds and fmt == "trt" and mode != "static":
        raise FineDeployError("TensorRT builds int8 engines from Q/DQ nodes (explicit quantization); use "
                              "--int8-mode static with calibration data")
    return mode
