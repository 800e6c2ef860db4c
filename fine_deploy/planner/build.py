"""A supernet + a cost model + a sensitivity table -> the planner's `Space`.

Layer shapes come from real forward passes with hooks (the backbone's own down/up-sampling decides
the rows each layer sees). Width knobs are traced one at a time; a layer whose shape moves with a knob
depends on it, and its shape at a joint choice is the full shape plus each knob's change (dims of
concatenated inputs add up). That additivity is checked at the narrowest joint choice and, when it
does not hold, every joint choice is traced instead.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

from fine_deploy.cost.shapes import LayerShape
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import read_cache, write_cache
from fine_deploy.planner.costs import CostModel
from fine_deploy.planner.sensitivity import one_thread
from fine_deploy.planner.space import (
    Knob,
    LayerOption,
    LayerSpace,
    Space,
    check_space,
    precision_code,
    precision_name,
)

_MAX_JOINT_TRACES = 256


def trace_shapes(sn, config: dict[str, Any], batch: int, resolution: int | None) -> dict[str, LayerShape]:
    """matrix name -> LayerShape of a subnet (rows of the possibly width-sliced modules)."""
    from fine_deploy.cost.trace import layer_shapes

    return dict(layer_shapes(sn, config, batch, resolution))


class _Cache:
    """Traced figures of one supernet (shapes, width tables), kept in the user cache dir by content hash.

    Tracing builds subnets and runs them, which dominates a plan's wall time; the figures depend only
    on the supernet's content, the batch and the resolution.
    """

    def __init__(self, sn, batch: int, resolution: int | None) -> None:
        from fine_deploy.paths import cache_dir

        self.sn = sn
        self.path = cache_dir() / f"space-v1-{sn.content_hash[:32]}-b{batch}-r{resolution}.json"
        self.batch, self.resolution = batch, resolution
        self.data = read_cache(self.path) or {}
        self.dirty = False

    def get(self, key: str, compute):
        if key not in self.data:
            self.data[key] = compute()
            self.dirty = True
        return self.data[key]

    def shapes(self, config: dict[str, Any]) -> dict[str, LayerShape]:
        key = "shapes " + json.dumps(config, sort_keys=True)
        def trace():
            with one_thread():
                return {n: s.to_dict() for n, s in trace_shapes(self.sn, config, self.batch, self.resolution).items()}

        raw = self.get(key, trace)
        return {n: LayerShape.from_dict(d) for n, d in raw.items()}

    def save(self) -> None:
        if self.dirty:
            write_cache(self.path, self.data)


def _delta(a: LayerShape, b: LayerShape) -> tuple[int, int, int]:
    return (b.m1 - a.m1, b.m2 - a.m2, b.tokens - a.tokens)


def _apply(shape: LayerShape, deltas: list[tuple[int, int, int]]) -> LayerShape:
    m1, m2, tok = shape.m1, shape.m2, shape.tokens
    for d1, d2, dt in deltas:
        m1, m2, tok = m1 + d1, m2 + d2, tok + dt
    return replace(shape, m1=m1, m2=m2, tokens=tok)


def _width_shapes(cache: _Cache, full: dict[str, LayerShape],
                  knobs: dict[str, list[int]]) -> tuple[dict[str, tuple[str, ...]], Any, dict[str, Any]]:
    """Which width knobs each layer depends on, and a function (layer, {knob: width}) -> LayerShape."""
    single: dict[tuple[str, int], dict[str, LayerShape]] = {}
    deps: dict[str, set[str]] = {name: set() for name in full}
    for k, values in knobs.items():
        for v in values:
            if v == max(values):
                continue
            shapes = single[(k, v)] = cache.shapes({"widths": {k: v}})
            for name, s in shapes.items():
                if s != full[name]:
                    deps[name].add(k)
    order = list(knobs)
    dep = {name: tuple(k for k in order if k in d) for name, d in deps.items()}

    def additive(name: str, widths: dict[str, int]) -> LayerShape:
        ds = [_delta(full[name], single[(k, widths[k])][name]) for k in dep[name] if widths[k] != max(knobs[k])]
        return _apply(full[name], ds)

    notes: dict[str, Any] = {"width_shapes": "additive" if len(knobs) > 1 else "traced"}
    if len(knobs) > 1:
        narrow = {k: min(v) for k, v in knobs.items()}
        try:
            check = cache.shapes({"widths": narrow})
        except FineDeployError:
            check = None
        if check is not None and all(additive(n, narrow) == check[n] for n in full):
            return dep, additive, notes
        joint = list(itertools.product(*(knobs[k] for k in order)))
        if len(joint) > _MAX_JOINT_TRACES:
            raise FineDeployError(
                f"layer shapes of this supernet do not add up across width knobs and {len(joint)} joint "
                "widths are too many to trace; restrict the width options of the supernet"
            )
        table = {}
        for combo in joint:
            try:
                table[combo] = cache.shapes({"widths": dict(zip(order, combo, strict=True))})
            except FineDeployError:
                continue  # a forbidden joint choice
        notes["width_shapes"] = "traced jointly"
        dep = {name: tuple(order) for name in full}

        def exact(name: str, widths: dict[str, int]) -> LayerShape:
            got = table.get(tuple(widths[k] for k in order))
            return got[name] if got else full[name]

        return dep, exact, notes
    return dep, additive, notes


def _forbidden_widths(sn, knobs: dict[str, list[int]]) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Pairs of stage widths that cannot coexist (equal widths would drop a learned shortcut)."""
    if len(knobs) < 2:
        return []
    model = sn.subnet(sn.full_config())
    out = []
    names = list(knobs)
    for a, b in itertools.combinations(names, 2):
        for va in knobs[a]:
            for vb in knobs[b]:
                try:
                    sn.adapter.check_widths(model, {a: va, b: vb})
                except FineDeployError:
                    out.append(((f"width.{a}", va), (f"width.{b}", vb)))
    return out


def _param_bytes(sn, bpe: int) -> tuple[dict[str, int], dict[int, int]]:
    """Bytes of the dense (not factorised) parameters: outside the blocks, and per transformer block."""
    outside: dict[str, int] = {}
    per_block: dict[int, int] = {}
    for name in sn.spec.dense:
        shape = sn.spec.tensors.get(f"dense.{name}") or list(sn.tensors[f"dense.{name}"].shape)
        n = 1
        for d in shape:
            n *= d
        j = sn.adapter.block_index(name)
        if j is not None:
            per_block[j] = per_block.get(j, 0) + n * bpe
        else:
            outside[name] = n * bpe
    return outside, per_block


def _width_dense_bytes(sn, knobs: dict[str, list[int]], bpe: int) -> dict[str, Any]:
    """Change of dense parameter bytes per width value, and per pair of width values taken together.

    Counted on the sliced stock module itself, so tensors only a slice has (a 1x1 shortcut between stages
    whose widths became different) count too. A tensor has at most two channel axes, so its size is
    quadratic in the widths: one delta per knob value plus one correction per pair of values of two knobs
    is exact (a tensor whose rows one knob cuts and columns another cuts loses less than the two single
    cuts add up to). With three knobs or more, that no three-way term exists is checked at the narrowest
    joint choice.
    """
    out: dict[str, Any] = {"knobs": {}, "pairs": []}
    if not knobs:
        return out
    model = sn.subnet(sn.full_config())
    factorised = {n for n, _ in model.named_parameters()} - set(sn.spec.dense)
    orders = sn.spec.widths["orders"]

    def dense(widths: dict[str, int]) -> int:
        sliced = sn.adapter.slice_widths(model, widths, orders) if widths else model
        return sum(p.numel() for n, p in sliced.named_parameters() if n not in factorised) * bpe

    base = dense({})
    cut = {k: [v for v in values if v != max(values)] for k, values in knobs.items()}
    single = {(k, v): dense({k: v}) for k, vs in cut.items() for v in vs}
    out["knobs"] = {k: [0.0 if v == max(values) else float(single[(k, v)] - base) for v in values]
                    for k, values in knobs.items()}
    for a, b in itertools.combinations(knobs, 2):
        for va in cut[a]:
            for vb in cut[b]:
                try:
                    extra = dense({a: va, b: vb}) - single[(a, va)] - single[(b, vb)] + base
                except FineDeployError:
                    continue  # widths that cannot coexist (a forbidden pair)
                if extra:
                    out["pairs"].append([a, va, b, vb, float(extra)])
    if len(knobs) > 2:  # with two knobs the pairs are every joint choice; with more, 3-way terms are assumed 0
        narrow = {k: min(v) for k, v in knobs.items()}
        try:
            got = dense(narrow)
        except FineDeployError:
            got = None
        want = base + sum(out["knobs"][k][0] for k in knobs) + sum(
            p[4] for p in out["pairs"] if narrow[p[0]] == p[1] and narrow[p[2]] == p[3])
        if got is not None and got != want:
            raise FineDeployError(
                f"dense parameter bytes of this supernet do not add up across width knobs ({got} at the narrowest "
                f"widths, {want} from single and paired cuts); restrict the width options of the supernet"
            )
    return out


def _precision_knobs(sn, sensitivity: dict[str, Any], base: str, layer_precisions: tuple[str, ...]) -> list[Knob]:
    """A precision knob per type (its layers' weights) and one for "*" (every other node, fixed at `base`), each
    value's loss the measured output error of that type at that precision (sensitivity["precision"])."""
    from fine_deploy.planner.sensitivity import STAR

    losses = sensitivity["precision"]["losses"]
    opts = sorted(precision_code(p) for p in layer_precisions)
    knobs = [Knob(f"precision.{t.name}", "precision", t.name, opts,
                  [float(losses[t.name][precision_name(c)]) for c in opts]) for t in sn.types]
    knobs.append(Knob("precision", "precision", STAR, [precision_code(base)], [float(losses[STAR][base])]))
    return knobs


def _precision_clashes(sn, layer_precisions: tuple[str, ...]) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """fp16 layers beside int8 layers: no exporter writes that mixture (ONNX Runtime's fp16 converter and its
    quantiser each leave the others' nodes at fp32, not at each other's precision)."""
    if not {"fp16", "int8"} <= set(layer_precisions):
        return []
    a, b = precision_code("fp16"), precision_code("int8")
    return [((f"precision.{s.name}", a), (f"precision.{t.name}", b)) for s in sn.types for t in sn.types
            if s.name != t.name]


def build_space(sn, cost: CostModel, sensitivity: dict[str, Any], *, batch: int = 1,
                resolution: int | None = None, precisions: tuple[str, ...] | None = None) -> Space:
    """Every knob with its quality loss, every layer with its options priced on `cost`'s device.

    `precisions`: what the factorised layers' weights may be stored at (default: `cost.dtype`, the base every
    other node runs at); unless that is fp32 alone, each type gets a precision knob and every layer option
    exists once per precision, priced at it (sensitivity["precision"] holds their losses)."""
    layer_precs = tuple(precisions or (cost.dtype,))
    with_precision = set(layer_precs) != {"fp32"} or cost.dtype != "fp32"
    bpe = cost.param_bits / 8  # dense (not factorised) parameters are stored at the base precision
    bpe = int(bpe) if bpe == int(bpe) else bpe
    width_knobs = {k: sorted(v) for k, v in (sn.spec.widths.get("knobs") or {}).items()}
    knobs: list[Knob] = []
    for t in sn.types:
        opts = sorted(t.rank_options)
        knobs.append(Knob(f"rank.{t.name}", "rank", t.name, opts,
                          [float(sensitivity["ranks"][t.name][str(r)]) for r in opts]))
    cache = _Cache(sn, batch, resolution)
    # v2: measured on the sliced module, with paired cuts (v1 summed single cuts of the full tensors)
    width_dense = cache.get(f"width_dense_bytes v2 {bpe}", lambda: _width_dense_bytes(sn, width_knobs, bpe))
    for k, opts in width_knobs.items():
        knobs.append(Knob(f"width.{k}", "width", k, opts,
                          [float(sensitivity["widths"][k][str(w)]) for w in opts], bytes=width_dense["knobs"][k]))
    pairs = [((f"width.{a}", va), (f"width.{b}", vb), nbytes) for a, va, b, vb, nbytes in width_dense["pairs"]]
    outside, per_block = _param_bytes(sn, bpe)
    depth_opts = sorted(sn.spec.depth.get("options") or [])
    if depth_opts:
        knobs.append(Knob("depth", "depth", "depth", depth_opts,
                          [float(sensitivity["depth"][str(d)]) for d in depth_opts],
                          bytes=[float(sum(b for j, b in per_block.items() if j < d)) for d in depth_opts]))
        dense_const = sum(outside.values())
    else:
        dense_const = sum(outside.values()) + sum(per_block.values())

    if with_precision:
        knobs += _precision_knobs(sn, sensitivity, cost.dtype, layer_precs)
    full = cache.shapes({})
    deps, shape_at, notes = _width_shapes(cache, full, width_knobs)
    forbidden = [tuple(tuple(p) for p in pair) for pair in
                 cache.get("forbidden_widths", lambda: _forbidden_widths(sn, width_knobs))]
    cache.save()
    layers: list[LayerSpace] = []
    bases: dict[str, float] = {}
    for t in sn.types:
        for m in t.matrices:
            name = m["name"]
            if name not in full:
                continue
            wk = deps[name]
            blk = sn.adapter.block_index(name)
            options = []
            for combo in itertools.product(sorted(t.rank_options), *(width_knobs[k] for k in wk)):
                r, widths = combo[0], dict(zip(wk, combo[1:], strict=True))
                shape = shape_at(name, widths)
                extra = cost.elementwise_seconds(shape.tokens * shape.m1)
                if t.name.endswith("qkv"):
                    extra += cost.attention_seconds(batch, shape.tokens // batch, shape.m1 // 3)
                # the exact source option of a converted type is a dense weight: no factors to run
                factored = r <= shape.max_rank() and not t.is_source(r)
                forms = ["dense"] + (["low_rank", "shared_basis"] if factored else [])
                for form, prec in itertools.product(forms, layer_precs):
                    sec, src = cost.layer_seconds(shape, form, r, prec)
                    own, shared = cost.weight_bytes(shape, form, r, prec)
                    basis = None
                    if form == "shared_basis":
                        basis = f"{t.name}|r{r}|{shape.m1}x{shape.m2}" + (f"|{prec}" if with_precision else "")
                        bases[basis] = float(shared)
                    values = (*combo, precision_code(prec)) if with_precision else combo
                    options.append(LayerOption(
                        values, form, r, sec + extra, float(own), float(cost.activation_bytes(shape, form, r, prec)),
                        basis, src, extra, prec,
                    ))
            own_knobs = (f"rank.{t.name}", *(f"width.{k}" for k in wk))
            layers.append(LayerSpace(name, t.name, (*own_knobs, f"precision.{t.name}") if with_precision else own_knobs,
                                     options, blk if blk is not None and depth_opts else None))
    const_latency = cost.fixed_s
    from fine_deploy.planner.costs import (
        apply_calibration,
        apply_memory_calibration,
        calibration_for,
        memory_coefficients,
    )

    cal = calibration_for(cost.lut, sn.content_hash)
    if cal:  # the end-to-end fit measured for this supernet on this LUT's machine
        const_latency = apply_calibration(cal, layers, knobs, const_latency)
    mem = memory_coefficients(cal)
    session = 0.0
    if mem:  # and its memory fit: bytes as the runtime holds them
        dense_const, session = apply_memory_calibration(mem, layers, knobs, bases, pairs, dense_const)
    space = Space(
        knobs=knobs,
        layers=layers,
        bases=bases,
        const_latency_s=const_latency,
        const_bytes=float(cost.profile.runtime_overhead_bytes),
        session_bytes=float(session),
        dense_bytes=float(dense_const),
        pair_bytes=pairs,
        forbidden=forbidden + (_precision_clashes(sn, layer_precs) if with_precision else []),
        notes={**notes, "end_to_end_calibration": bool(cal), "memory_calibration": bool(mem),
               "dense_bytes": dense_const, "runtime_overhead_bytes": cost.profile.runtime_overhead_bytes},
    )
    check_space(space)
    return space
