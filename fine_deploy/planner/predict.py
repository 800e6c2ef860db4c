"""The one predictor of a whole subnet's latency and memory on a device: what `plan`, its explain
table and Pareto front, `profile`'s end-to-end calibration and the benchmarks all price with.

A subnet is priced on the planner's own space (fine_deploy.planner.build): every layer's measured or
roofline cost in its kernel form, the attention core and elementwise ops around it, the fixed cost of
a run, then — where `profile --supernet` measured this supernet on this LUT's machine — the
end-to-end fit that maps those terms onto the statistic a user measures (runtime.timing.PREDICTION).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.planner.space import Evaluation, Space, best_forms, evaluate, layer_exists, layer_option


def config_of(space: Space, values: dict[str, int]) -> dict[str, Any]:
    """plan.json's `subnet` of one knob assignment."""
    return {"ranks": {k.target: values[k.name] for k in space.knobs if k.kind == "rank"},
            "widths": {k.target: values[k.name] for k in space.knobs if k.kind == "width"},
            "depth": values.get("depth")}


def values_of(space: Space, config: dict[str, Any]) -> dict[str, int]:
    """The knob assignment of a plan.json `subnet` (a knob it omits stays at its full value)."""
    values = space.full_assignment()
    for k in space.knobs:
        given = (config.get("ranks") or {}).get(k.target) if k.kind == "rank" else \
            (config.get("widths") or {}).get(k.target) if k.kind == "width" else \
            config.get("depth") if k.kind == "depth" else None
        if given is None:
            continue
        if int(given) not in k.options:
            raise FineDeployError(f"{k.name}={given} is not an option of this supernet ({k.options})")
        values[k.name] = int(given)
    return values


@dataclass
class Predictor:
    """A supernet priced on one device: build it with `load_predictor`."""

    space: Space
    content_hash: str
    calibrated: bool
    cost: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, config: dict[str, Any], forms: dict[str, str] | None = None) -> Evaluation:
        """The subnet of plan.json's `subnet` in `forms` (default: each layer's fastest form)."""
        values = values_of(self.space, config)
        return evaluate(self.space, values, forms if forms is not None else best_forms(self.space, values))

    def latency_s(self, config: dict[str, Any], forms: dict[str, str] | None = None) -> float:
        return self.evaluate(config, forms).latency_s

    def terms(self, config: dict[str, Any], forms: dict[str, str] | None = None) -> dict[str, float]:
        """The subnet's latency split into the calibration's terms (planner.costs.TERMS), priced on this
        space: layer costs, the roofline-priced ops around them, blocks run, and 1 for the constant."""
        values = values_of(self.space, config)
        forms = forms if forms is not None else best_forms(self.space, values)
        own = around = 0.0
        for layer in self.space.layers:
            if not layer_exists(layer, values):
                continue
            o = layer_option(layer, values, forms.get(layer.name, "dense"))
            if o is None:
                raise FineDeployError(f"layer {layer.name} has no {forms.get(layer.name)} option at {values}")
            own += o.latency_s - o.extra_s
            around += o.extra_s
        blocks = values["depth"] if "depth" in values else 0
        return {"layers": own, "around": around, "blocks": float(blocks), "fixed": 1.0}

    def memory_terms(self, config: dict[str, Any], forms: dict[str, str] | None = None) -> dict[str, float]:
        """The subnet's model memory split into the memory fit's terms (planner.costs.MEMORY_TERMS), priced on
        this space: parameter bytes, the largest layer's activation bytes, and 1 for the constant."""
        parts = self.evaluate(config, forms).parts
        return {"parameters": parts["weights"] + parts["bases"] + parts["dense"],
                "activations": parts["activations"], "fixed": 1.0}

    def random_subnets(self, n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """`n` feasible random subnets (each knob uniform over its options), each in its fastest forms."""
        rng = random.Random(seed)
        out: list[tuple[dict[str, Any], dict[str, str]]] = []
        tries = 0
        while len(out) < n and tries < 100 * n:
            tries += 1
            values = {k.name: rng.choice(k.options) for k in self.space.knobs}
            forms = best_forms(self.space, values)
            if evaluate(self.space, values, forms).feasible:
                out.append((config_of(self.space, values), forms))
        return out


def load_predictor(supernet: Any, device: str = "host", lut: str | Path | None = None, *,
                   profiles: str | Path | None = None, batch: int = 1, resolution: int | None = None,
                   raw: bool = False) -> Predictor:
    """The planner's pricing of `supernet` (a loaded Supernet, a path, or None: the default) on `device`.

    `raw` leaves out the end-to-end fit, to fit one (fine_deploy.export.calibrate).
    """
    from fine_deploy.cost.precisions import DEFAULT
    from fine_deploy.planner.build import build_space
    from fine_deploy.planner.costs import END_TO_END, CostModel
    from fine_deploy.planner.plan import load_device
    from fine_deploy.planner.sensitivity import sensitivity_table
    from fine_deploy.supernet.core import load_supernet

    sn = supernet if hasattr(supernet, "content_hash") else load_supernet(supernet)
    prof, table, _ = load_device(device, lut, profiles)
    if raw and table is not None:
        table.calibration.get(END_TO_END, {}).pop(sn.content_hash[:16], None)
    cost = CostModel.build(prof, table, DEFAULT)  # the LUT and the end-to-end fit measure fp32 graphs
    res = sn.adapter.check_resolution(sn.spec.config, resolution)
    space = build_space(sn, cost, sensitivity_table(sn, progress=False), batch=batch, resolution=res)
    return Predictor(space, sn.content_hash, bool(space.notes["end_to_end_calibration"]), cost.describe())
