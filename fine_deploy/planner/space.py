"""The search space the MILP solves over: knobs with their quality cost, layers with their joint options.

A knob is one choice (rank of a type, width of a stage, depth) with one quality loss per value. A layer's
cost depends on several knobs at once (its type's rank acts on a matrix whose shape its stages' widths
set) and on its own kernel form, so a layer lists one option per joint value of the knobs it depends
on x form, each with its own seconds and bytes: the knobs' interaction is tabulated, not assumed away.
`evaluate` prices a full assignment directly from these tables; the MILP's linearisation is checked
against it (and against brute-force enumeration) in the tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from fine_deploy.cost.precisions import PRECISIONS
from fine_deploy.errors import FineDeployError


def precision_code(precision: str) -> int:
    """A precision as a knob value: knob values are ascending ints whose last is the full model's, so the
    code grows with the bits a weight keeps (fp32 highest)."""
    return len(PRECISIONS) - 1 - PRECISIONS.index(precision)


def precision_name(code: int) -> str:
    return PRECISIONS[len(PRECISIONS) - 1 - code]


@dataclass
class Knob:
    name: str  # "rank.qkv", "width.stage1", "depth"
    kind: str  # "rank" | "width" | "depth" | "precision" (values: precision_code)
    target: str  # type name, width knob name, "depth", or for precision a type name or "*" (outside the layers)
    options: list[int]  # ascending
    loss: list[float]  # quality loss of each option (the sensitivity table; 0 at full)
    latency_s: list[float] = field(default_factory=list)  # extra seconds per option (e.g. dense ops of a depth)
    bytes: list[float] = field(default_factory=list)  # extra bytes per option (dense parameters)

    def __post_init__(self) -> None:
        n = len(self.options)
        self.latency_s = self.latency_s or [0.0] * n
        self.bytes = self.bytes or [0.0] * n
        if not (len(self.loss) == len(self.latency_s) == len(self.bytes) == n) or n == 0:
            raise ValueError(f"knob {self.name}: options and their figures differ in length")

    @property
    def full(self) -> int:
        return self.options[-1]


@dataclass
class LayerOption:
    values: tuple[int, ...]  # one value per knob of the layer (same order as LayerSpace.knobs)
    form: str
    rank: int
    latency_s: float
    weight_bytes: float  # what this layer owns
    act_bytes: float  # its input + intermediate + output activations
    basis: str | None = None  # key of the shared basis it reads (shared_basis form)
    source: str = "roofline"
    # of latency_s, the roofline-priced ops around the layer (attention core, elementwise): the end-to-end
    # calibration weighs them apart from the layer's own measured cost
    extra_s: float = 0.0
    precision: str = "fp32"  # what its weights are stored at (a knob value too where the space has precision knobs)


@dataclass
class LayerSpace:
    name: str  # matrix name, e.g. "transformer_blocks.3.qkv"
    type: str
    knobs: tuple[str, ...]  # names of the knobs its cost depends on (its rank knob first)
    options: list[LayerOption]
    block: int | None = None  # exists only when depth > block


@dataclass
class Space:
    knobs: list[Knob]
    layers: list[LayerSpace]
    bases: dict[str, float] = field(default_factory=dict)  # shared-basis key -> bytes (held once)
    const_latency_s: float = 0.0
    const_bytes: float = 0.0  # what every subnet holds that is no parameter (the runtime's own memory)
    # dense (not factorised) parameter bytes that the knobs' `bytes` add to (depth) or take from (width cuts)
    dense_bytes: float = 0.0
    # dense bytes held only when two knob values are chosen together: a tensor whose two axes two width
    # knobs cut loses less than the two single cuts add up to, and a width clash can add a shortcut tensor
    pair_bytes: list[tuple[tuple[str, int], tuple[str, int], float]] = field(default_factory=list)
    # pairs of (knob, value) that cannot be chosen together (a width clash that drops a shortcut)
    forbidden: list[tuple[tuple[str, int], tuple[str, int]]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    # what a model's session holds beyond its tensors (thread pool, arena), from the measured memory fit
    session_bytes: float = 0.0

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise KeyError(name)

    def full_assignment(self) -> dict[str, int]:
        return {k.name: k.full for k in self.knobs}

    def size(self) -> int:
        n = 1
        for k in self.knobs:
            n *= len(k.options)
        return n


@dataclass
class Evaluation:
    feasible: bool  # every layer has an option for the chosen values and forms, no forbidden pair
    loss: float
    latency_s: float
    memory_bytes: float
    forms: dict[str, str]
    # memory split, each >= 0 and summing to memory_bytes: weights (factorised layers, each in its form),
    # bases (shared bases, once each), dense (the other parameters), activations (the largest layer's),
    # session (a model's session beyond its tensors: 0 unless a memory fit measured it), runtime_overhead
    # (the runtime's own)
    parts: dict[str, float] = field(default_factory=dict)


def layer_exists(layer: LayerSpace, values: dict[str, int]) -> bool:
    return layer.block is None or "depth" not in values or values["depth"] > layer.block


def layer_option(layer: LayerSpace, values: dict[str, int], form: str) -> LayerOption | None:
    want = tuple(values[k] for k in layer.knobs)
    for o in layer.options:
        if o.values == want and o.form == form:
            return o
    return None


def best_forms(space: Space, values: dict[str, int], objective: str = "latency") -> dict[str, str]:
    """Per layer, the form that is fastest (or smallest) for fixed knob values, ignoring basis sharing."""
    out = {}
    for layer in space.layers:
        if not layer_exists(layer, values):
            continue
        want = tuple(values[k] for k in layer.knobs)
        opts = [o for o in layer.options if o.values == want]
        key = (lambda o: o.latency_s) if objective == "latency" else (lambda o: o.weight_bytes)
        out[layer.name] = min(opts, key=key).form
    return out


def evaluate(space: Space, values: dict[str, int], forms: dict[str, str]) -> Evaluation:
    """Loss, latency and memory of one assignment, straight from the tables (no linearisation)."""
    loss = lat = 0.0
    dense = space.dense_bytes
    for k in space.knobs:
        i = k.options.index(values[k.name])
        loss += k.loss[i]
        lat += k.latency_s[i]
        dense += k.bytes[i]
    dense += sum(n for (a, va), (b, vb), n in space.pair_bytes if values.get(a) == va and values.get(b) == vb)
    feasible = all(not (values.get(a) == va and values.get(b) == vb) for (a, va), (b, vb) in space.forbidden)
    weights = act = 0.0
    used_bases: set[str] = set()
    chosen = {}
    for layer in space.layers:
        if not layer_exists(layer, values):
            continue
        form = forms.get(layer.name, "dense")
        o = layer_option(layer, values, form)
        if o is None:
            feasible = False
            continue
        chosen[layer.name] = form
        lat += o.latency_s
        weights += o.weight_bytes
        act = max(act, o.act_bytes)
        if o.basis:
            used_bases.add(o.basis)
    bases = sum(space.bases[b] for b in used_bases)
    total = dense + weights + bases + act + space.session_bytes + space.const_bytes
    return Evaluation(
        feasible, loss, lat + space.const_latency_s, total, chosen,
        {"weights": weights, "bases": bases, "dense": dense, "activations": act,
         "session": space.session_bytes, "runtime_overhead": space.const_bytes},
    )


def enumerate_assignments(space: Space):
    """Every (knob values, forms) of a small space: for brute-force checks of the solver."""
    names = [k.name for k in space.knobs]
    for combo in itertools.product(*(k.options for k in space.knobs)):
        values = dict(zip(names, combo, strict=True))
        alive = [la for la in space.layers if layer_exists(la, values)]
        per_layer = []
        for la in alive:
            want = tuple(values[k] for k in la.knobs)
            per_layer.append(sorted({o.form for o in la.options if o.values == want}))
        if any(not f for f in per_layer):
            continue
        for forms in itertools.product(*per_layer):
            yield values, {la.name: f for la, f in zip(alive, forms, strict=True)}


def check_space(space: Space) -> None:
    names = {k.name for k in space.knobs}
    for layer in space.layers:
        missing = [k for k in layer.knobs if k not in names]
        if missing:
            raise FineDeployError(f"layer {layer.name} depends on unknown knob(s) {missing}; the supernet is corrupt")
        if not layer.options:
            raise FineDeployError(f"layer {layer.name} has no option; the supernet is corrupt")
