"""Latency and memory predictions for a chain of layer choices, saying where each number came from.

latency = empty run + boundary cost of the model's input and output + Σ layer costs + calibrated
fixed overhead; a layer's cost is the measured LUT entry when there is one, otherwise the roofline
fitted on the LUT, otherwise the profile's spec roofline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fine_deploy.cost.graphs import LayerChoice, dims_key, input_dims, output_dims
from fine_deploy.cost.lut import Lut
from fine_deploy.cost.profiles import DeviceProfile
from fine_deploy.cost.roofline import Roofline, spec_roofline
from fine_deploy.errors import FineDeployError

SOURCES = ("lut", "roofline-fitted", "roofline-spec")


@dataclass(frozen=True)
class LayerCost:
    key: str
    seconds: float
    source: str  # one of SOURCES


@dataclass(frozen=True)
class LatencyPrediction:
    seconds: float
    overhead_s: float  # empty run + boundaries + calibrated fixed overhead
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def sources(self) -> dict[str, int]:
        return dict(Counter(c.source for c in self.layers))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = self.sources
        return d


def layer_cost(choice: LayerChoice, lut: Lut | None, profile: DeviceProfile | None, dtype: str = "fp32") -> LayerCost:
    key = choice.key()
    if lut is not None and key in lut.entries:
        return LayerCost(key, lut.entries[key].seconds, "lut")
    if lut is not None and lut.roofline:
        roof = Roofline.from_dict(lut.roofline)
        return LayerCost(key, roof.layer_seconds(choice.shape, choice.form, choice.rank, dtype), "roofline-fitted")
    if profile is None:
        raise FineDeployError(f"no LUT entry for {key} and no device profile to estimate it; pass --device")
    roof = spec_roofline(profile, dtype)
    return LayerCost(key, roof.layer_seconds(choice.shape, choice.form, choice.rank, dtype), "roofline-spec")


def boundary_seconds(layers: list[LayerChoice], boundaries: dict[str, float]) -> float:
    """What a model of `layers` pays for its input and output tensors beyond the empty graph: half
    of each tensor's measured boundary cost (Lut.boundaries)."""
    first, last = dims_key(input_dims(layers[0].shape)), dims_key(output_dims(layers[-1].shape))
    return 0.5 * (boundaries.get(first, 0.0) + boundaries.get(last, 0.0))


def overhead_seconds(layers: list[LayerChoice], lut: Lut | None, profile: DeviceProfile | None) -> float:
    if lut is None:
        return profile.launch_overhead_s if profile is not None else 0.0
    return lut.empty_run_s + boundary_seconds(layers, lut.boundaries) + float(lut.calibration.get("fixed_s", 0.0))


def predict_latency(
    layers: list[LayerChoice],
    lut: Lut | None = None,
    profile: DeviceProfile | None = None,
    dtype: str = "fp32",
) -> LatencyPrediction:
    """Predicted seconds of one run of `layers` (a chain, as fine_deploy.cost.graphs builds it)."""
    if not layers:
        raise FineDeployError("cannot predict the latency of zero layers; give at least one layer")
    costs = [layer_cost(c, lut, profile, dtype) for c in layers]
    over = overhead_seconds(layers, lut, profile)
    return LatencyPrediction(over + sum(c.seconds for c in costs), over, costs)
