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
from fine_deploy.cost.predictor import layer_cost
from fine_deploy.cost.profiles import DeviceProfile
from fine_deploy.cost.roofline import DTYPE_BYTES, Roofline, spec_roofline
from fine_deploy.cost.shapes import LayerShape, activation_elems, form_weight_elems

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


@dataclass
class CostModel:
    profile: DeviceProfile
    lut: Lut | None = None
    dtype: str = "fp32"
    roof: Roofline | None = None
    fixed_s: float = 0.0  # what every run pays once: empty run + calibrated whole-model overhead
    sources: Counter = field(default_factory=Counter)

    @classmethod
    def build(cls, profile: DeviceProfile, lut: Lut | None = None, dtype: str = "fp32") -> CostModel:
        if lut is not None and lut.roofline:
            roof = Roofline.from_dict(lut.roofline)
        else:
            roof = spec_roofline(profile, dtype)
        if lut is not None:
            fixed = float(lut.empty_run_s) + float(lut.calibration.get("fixed_s", 0.0) or 0.0)
        else:
            fixed = profile.launch_overhead_s
        return cls(profile, lut, dtype, roof, max(fixed, 0.0))

    @property
    def bytes_per_elem(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def layer_seconds(self, shape: LayerShape, form: str, rank: int | None) -> tuple[float, str]:
        """Seconds one layer adds to a forward pass, and where the figure came from."""
        choice = LayerChoice(shape, form, None if form == "dense" else rank)
        c = layer_cost(choice, self.lut, self.profile, self.dtype)
        self.sources[c.source] += 1
        return float(c.seconds), c.source

    def elementwise_seconds(self, elems: float, passes: int = ELEMENTWISE_PASSES) -> float:
        """Memory-bound ops around a layer: `passes` reads + writes of `elems` activations."""
        return self.roof.seconds(0.0, 2.0 * passes * elems * self.bytes_per_elem, passes)

    def attention_seconds(self, batch: int, tokens: int, inner: int) -> float:
        """softmax(QKᵀ)V of one attention layer: 2 GEMMs of n x n x inner per image + the n x n scores."""
        flops = 2.0 * 2 * batch * tokens * tokens * inner
        nbytes = 3.0 * batch * tokens * tokens * self.bytes_per_elem  # scores written, softmaxed, read
        return self.roof.seconds(flops, nbytes, 3)

    def weight_bytes(self, shape: LayerShape, form: str, rank: int | None) -> tuple[int, int]:
        own, shared = form_weight_elems(shape, form, None if form == "dense" else rank)
        return own * self.bytes_per_elem, shared * self.bytes_per_elem

    def activation_bytes(self, shape: LayerShape, form: str, rank: int | None) -> int:
        return sum(activation_elems(shape, form, None if form == "dense" else rank)) * self.bytes_per_elem

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "roofline": self.roof.source if self.roof else None,
            "fixed_s": self.fixed_s,
            "layer_figures": dict(sorted(self.sources.items())),
        }
