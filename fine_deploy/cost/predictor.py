"""What one layer choice costs on a device, saying where the figure came from: the measured LUT entry when
there is one, otherwise the roofline fitted on the LUT, otherwise the profile's spec roofline.

The planner's whole-subnet predictor (fine_deploy.planner.predict) prices every layer with `layer_cost`; the
profiler's refit on whole chains adds `boundary_seconds` for a chain's input and output.
"""

from __future__ import annotations

from dataclasses import dataclass

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
