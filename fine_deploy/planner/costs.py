"""The planner's view of a device: seconds and bytes of one layer in one kernel form.

A thin adapter over fine_deploy.cost: a factorised layer costs what `cost.predictor.layer_cost` says
(the measured LUT entry, else the roofline fitted on the LUT, else the profile's spec roofline, and
which one it used). The parts of a block that are no factorised matrix, the attention core
softmax(QKᵀ)V and the elementwise ops around each layer, are priced on that same roofline.

Ranks above min(m1, m2) are not offered in the factored forms: there they cost more compute than
dense and `fine_deploy.cost.shapes.check_form` refuses them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fine_deploy.cost.graphs import LayerChoice
from fine_deploy.cost.lut import Lut
from fine_deploy.cost.precisions import WEIGHT_BITS, compute_dtype, weight_bytes
from fine_deploy.cost.predictor import layer_cost
from fine_deploy.cost.profiles import DeviceProfile
from fine_deploy.cost.roofline import DTYPE_BYTES, Roofline, spec_roofline
from fine_deploy.cost.shapes import LayerShape, activation_elems, form_weight_elems

MEASURED_DTYPE = "fp32"  # what the profiler's LUT measures (ONNX Runtime CPU graphs of fp32 layers)

# passes over a layer's output by the ops around it (bias, norm, activation, residual add):
# the part of a block's time that no factorised matrix accounts for
ELEMENTWISE_PASSES = 3

END_TO_END = "end_to_end"  # key of the whole-subnet calibration line in a LUT's free-form `calibration`


def calibration_for(lut, content_hash: str) -> dict[str, Any] | None:
    """The end-to-end line (`fine_deploy.export.calibrate`) measured for this supernet with this LUT, if any."""
    if lut is None:
        return None
    return (lut.calibration.get(END_TO_END) or {}).get(content_hash[:16])


# the terms of a subnet's latency the end-to-end calibration weighs (fine_deploy.export.calibrate)
TERMS = ("layers", "around", "blocks", "fixed")


def calibration_coefficients(cal: dict[str, Any]) -> dict[str, float]:
    """Per TERMS, the fitted coefficient with the margin applied (a record of one scale and a fixed part,
    as written before the terms were split, scales layers and the ops around them alike)."""
    coef = cal.get("coefficients") or {"layers": cal["scale"], "around": cal["scale"], "blocks": 0.0,
                                       "fixed": cal["fixed_s"]}
    k = 1.0 + float(cal.get("margin_applied", 0.0))
    return {t: float(coef.get(t, 0.0)) * k for t in TERMS}


def apply_calibration(cal: dict[str, Any], layers: list, knobs: list, const_latency_s: float) -> float:
    """Reprice a space's options on the end-to-end fit; returns its new constant latency.

    latency = a x Σ layer costs + b x Σ ops around them + c x blocks + d, so each option becomes
    a x its layer cost + b x its surroundings, the depth knob's options carry c x depth, and d is the constant
    (it replaces the empty-run and fixed overhead, which the fit measures whole).
    """
    c = calibration_coefficients(cal)
    for la in layers:
        for o in la.options:
            own = o.latency_s - o.extra_s
            o.extra_s *= c["around"]
            o.latency_s = own * c["layers"] + o.extra_s
    for k in knobs:
        if k.kind == "depth":
            k.latency_s = [x * c["layers"] + c["blocks"] * d for x, d in zip(k.latency_s, k.options, strict=True)]
        else:
            k.latency_s = [x * c["layers"] for x in k.latency_s]
    if "coefficients" not in cal:
        return const_latency_s * c["layers"] + c["fixed"]
    return c["fixed"]


# the terms of a subnet's resident memory the end-to-end calibration weighs: parameter bytes (factorised layers in
# their forms, shared bases once, dense parameters), the largest layer's activations, and 1 for the constant
MEMORY_TERMS = ("parameters", "activations", "fixed")


def memory_coefficients(cal: dict[str, Any]) -> dict[str, float] | None:
    """Per MEMORY_TERMS, the fitted coefficient with the memory fit's margin applied; None without a memory fit."""
    mem = cal.get("memory") if cal else None
    if not mem:
        return None
    k = 1.0 + float(mem.get("margin_applied", 0.0))
    return {t: float(mem["coefficients"].get(t, 0.0)) * k for t in MEMORY_TERMS}


def apply_memory_calibration(c: dict[str, float], layers: list, knobs: list, bases: dict[str, float],
                             pairs: list, dense_bytes: float) -> tuple[float, float]:
    """Reprice a space's bytes on the measured memory fit, in place: ΔRSS = p x parameter bytes + a x activation
    bytes + s, where the runtime holds more than the bare tensors (ONNX Runtime CPU pre-packs GEMM weights beside
    the initialisers, its arena rounds activations up). Returns (dense bytes, s: the session's own bytes)."""
    for la in layers:
        for o in la.options:
            o.weight_bytes *= c["parameters"]
            o.act_bytes *= c["activations"]
    for k in knobs:
        k.bytes = [b * c["parameters"] for b in k.bytes]
    for key in bases:
        bases[key] *= c["parameters"]
    pairs[:] = [(a, b, n * c["parameters"]) for a, b, n in pairs]
    return dense_bytes * c["parameters"], c["fixed"]


def precision_ratio(profile: DeviceProfile, shape: LayerShape, form: str, rank: int | None,
                    precision: str) -> float | None:
    """Seconds of one layer at `precision` over its seconds at fp32 on the profile's spec roofline (its per-dtype
    peak and the narrower bytes moved); None when the profile states no peak for that precision's arithmetic."""
    cd = compute_dtype(precision)
    if cd == MEASURED_DTYPE:
        return 1.0
    if cd not in profile.peak_flops or MEASURED_DTYPE not in profile.peak_flops:
        return None
    base = spec_roofline(profile, MEASURED_DTYPE).layer_seconds(shape, form, rank, MEASURED_DTYPE)
    return spec_roofline(profile, cd).layer_seconds(shape, form, rank, cd) / base


@dataclass
class CostModel:
    """Prices layers on one device. `dtype` is the plan's base precision: what every node outside the factorised
    layers (dense parameters, activations, the attention core) runs at; a layer may be priced at another."""

    profile: DeviceProfile
    lut: Lut | None = None
    dtype: str = "fp32"
    roof: Roofline | None = None
    fixed_s: float = 0.0  # what every run pays once: empty run + calibrated whole-model overhead
    sources: Counter = field(default_factory=Counter)
    # per precision, how its layer seconds were obtained (measured / roofline ratio / assumed): plan.json says it
    precision_sources: dict[str, Counter] = field(default_factory=dict)

    @classmethod
    def build(cls, profile: DeviceProfile, lut: Lut | None = None, dtype: str = "fp32") -> CostModel:
        cd = compute_dtype(dtype)
        if lut is not None and lut.roofline:
            roof = Roofline.from_dict(lut.roofline)
        else:
            # a runtime with no stated rate for this arithmetic (ONNX Runtime CPU int8) is priced at fp32's
            roof = spec_roofline(profile, cd if cd in profile.peak_flops else MEASURED_DTYPE)
        if lut is not None:
            fixed = float(lut.empty_run_s) + float(lut.calibration.get("fixed_s", 0.0) or 0.0)
        else:
            fixed = profile.launch_overhead_s
        return cls(profile, lut, dtype, roof, max(fixed, 0.0))

    def arithmetic(self, precision: str | None = None) -> str:
        """The dtype activations of a layer at `precision` are held and computed in: its compute dtype where the
        profile states a rate for it, else fp32 (ONNX Runtime CPU dequantises int8 weights into fp32 ops around
        the quantised matmuls, so no narrower activations are assumed there either)."""
        cd = compute_dtype(precision or self.dtype)
        return cd if cd in self.profile.peak_flops else MEASURED_DTYPE

    @property
    def bytes_per_elem(self) -> int:
        """Bytes of one activation element at the base precision (what the ops around the layers move)."""
        return DTYPE_BYTES[self.arithmetic()]

    @property
    def param_bits(self) -> int:
        """Bits of one dense (not factorised) parameter at the base precision."""
        return WEIGHT_BITS[self.dtype]

    def layer_seconds(self, shape: LayerShape, form: str, rank: int | None,
                      precision: str | None = None) -> tuple[float, str]:
        """Seconds one layer at `precision` (default: the base) adds to a forward pass, and where the figure
        came from. A LUT measures fp32 only, so another precision is its fp32 figure scaled by the profile's
        roofline ratio; where the profile states no rate for it, the fp32 figure is used as it is and the
        source says so (no speed-up is assumed that nothing here measured)."""
        p = precision or self.dtype
        choice = LayerChoice(shape, form, None if form == "dense" else rank)
        cd = compute_dtype(p)
        if self.lut is None and cd in self.profile.peak_flops:
            c = layer_cost(choice, None, self.profile, cd)
            sec, src, how = float(c.seconds), c.source, f"{c.source} at {cd} peak"
        else:
            c = layer_cost(choice, self.lut, self.profile, MEASURED_DTYPE)
            sec, src = float(c.seconds), c.source
            ratio = precision_ratio(self.profile, shape, form, rank, p)
            if cd == MEASURED_DTYPE:
                how = c.source
            elif ratio is None:
                how = f"{c.source} fp32 figure, no {cd} speed-up assumed (not measured)"
            else:
                sec, how = sec * ratio, f"{c.source} x spec-roofline {cd}/fp32 ratio"
        self.sources[src] += 1
        self.precision_sources.setdefault(p, Counter())[how] += 1
        return sec, src

    def elementwise_seconds(self, elems: float, passes: int = ELEMENTWISE_PASSES) -> float:
        """Memory-bound ops around a layer: `passes` reads + writes of `elems` activations."""
        return self.roof.seconds(0.0, 2.0 * passes * elems * self.bytes_per_elem, passes)

    def attention_seconds(self, batch: int, tokens: int, inner: int) -> float:
        """softmax(QKᵀ)V of one attention layer: 2 GEMMs of n x n x inner per image + the n x n scores."""
        flops = 2.0 * 2 * batch * tokens * tokens * inner
        nbytes = 3.0 * batch * tokens * tokens * self.bytes_per_elem  # scores written, softmaxed, read
        return self.roof.seconds(flops, nbytes, 3)

    def weight_bytes(self, shape: LayerShape, form: str, rank: int | None,
                     precision: str | None = None) -> tuple[float, float]:
        """Bytes of the layer's own weights and of the basis it shares, stored at `precision` (default: base)."""
        own, shared = form_weight_elems(shape, form, None if form == "dense" else rank)
        p = precision or self.dtype
        return weight_bytes(own, p), weight_bytes(shared, p)

    def activation_bytes(self, shape: LayerShape, form: str, rank: int | None,
                         precision: str | None = None) -> int:
        size = DTYPE_BYTES[self.arithmetic(precision)]
        return sum(activation_elems(shape, form, None if form == "dense" else rank)) * size

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "roofline": self.roof.source if self.roof else None,
            "fixed_s": self.fixed_s,
            "layer_figures": dict(sorted(self.sources.items())),
            "precision_figures": {p: dict(sorted(c.items())) for p, c in sorted(self.precision_sources.items())},
        }
