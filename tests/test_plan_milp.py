"""The MILP's optimum equals brute-force enumeration on small spaces, with knob interactions in play.

The synthetic spaces have what the real ones have: a width knob that changes the shapes a rank acts
on (so layer costs are not additive over knobs), a depth knob that drops layers, shared bases held once
per type, activation peaks (a max, not a sum), forbidden knob pairs and dense bytes held only when two
knob values are chosen together (one adding, one taking away). Brute force prices every
assignment straight from the tables (`evaluate`), so it also checks the linearisation.
"""

from __future__ import annotations

import itertools
import random

import pytest

from fine_deploy.planner.milp import Limits, solve, within
from fine_deploy.planner.space import (
    Knob,
    LayerOption,
    LayerSpace,
    Space,
    best_forms,
    enumerate_assignments,
    evaluate,
)

RANKS = [2, 4, 8]
WIDTHS = [8, 12, 16]


def synthetic_space(seed: int, n_types: int = 2, layers_per_type: int = 2) -> Space:
    rng = random.Random(seed)
    knobs = [
        Knob(f"rank.t{t}", "rank", f"t{t}", RANKS, [rng.uniform(0.2, 1.0) * (8 - r) / 6 for r in RANKS])
        for t in range(n_types)
    ]
    knobs.append(Knob("width.s1", "width", "s1", WIDTHS, [0.5 * rng.random(), 0.2 * rng.random(), 0.0],
                      bytes=[-60.0, -30.0, 0.0]))
    knobs.append(Knob("depth", "depth", "depth", [1, 2], [rng.uniform(0.1, 0.8), 0.0], latency_s=[0.0, 2e-6]))
    layers, bases = [], {}
    for t in range(n_types):
        for j in range(layers_per_type):
            wk = ("width.s1",) if j % 2 == 0 else ()
            opts = []
            for combo in itertools.product(RANKS, *([WIDTHS] if wk else [])):
                r, m = combo[0], (combo[1] if wk else 16)
                for form in ("dense", "low_rank", "shared_basis"):
                    if form != "dense" and r > m // 2:
                        continue  # as in the real spaces: factored forms only up to min(m1, m2)
                    noise = rng.uniform(0.9, 1.1)
                    lat = {"dense": m * m, "low_rank": 2.6 * r * m, "shared_basis": 2.8 * r * m}[form] * noise * 1e-7
                    own = {"dense": m * m * 4, "low_rank": 2 * r * m * 4, "shared_basis": r * 4}[form]
                    basis = f"t{t}|r{r}|{m}" if form == "shared_basis" else None
                    if basis:
                        bases[basis] = 2 * r * m * 4
                    opts.append(LayerOption(combo, form, r, lat, own, rng.uniform(100, 300) * m / 16, basis))
            layers.append(LayerSpace(f"b{j}.t{t}", f"t{t}", (f"rank.t{t}", *wk), opts, j))
    forbidden = [(("rank.t0", 2), ("width.s1", 8))] if seed % 3 == 0 else []
    pairs = [(("width.s1", 8), ("depth", 1), 25.0), (("width.s1", 16), ("depth", 2), -40.0)]
    return Space(knobs, layers, bases, const_latency_s=1e-6, const_bytes=20.0, dense_bytes=80.0, pair_bytes=pairs,
                 forbidden=forbidden)


def brute_force(space: Space, objective: str, limits: Limits) -> float | None:
    best = None
    for values, forms in enumerate_assignments(space):
        ev = evaluate(space, values, forms)
        if not within(ev, limits):
            continue
        v = {"loss": ev.loss, "latency": ev.latency_s, "memory": ev.memory_bytes}[objective]
        best = v if best is None else min(best, v)
    return best


def _value(sol, objective):
    ev = sol.evaluation
    return {"loss": ev.loss, "latency": ev.latency_s, "memory": ev.memory_bytes}[objective]


def _limits(space: Space, rng: random.Random) -> dict[str, Limits]:
    values = space.full_assignment()
    full = evaluate(space, values, best_forms(space, values))
    lat = full.latency_s * rng.uniform(0.3, 1.0)
    mem = full.memory_bytes * rng.uniform(0.4, 1.0)
    return {
        "loss": Limits(latency_s=lat, memory_bytes=mem),
        "latency": Limits(memory_bytes=mem, loss=rng.uniform(0.2, 1.5)),
        "memory": Limits(latency_s=lat),
    }


def _solutions_equal_brute_force(space, rng: random.Random) -> list:
    """Solve every objective under random limits; each solution is feasible and optimal by brute force."""
    out = []
    for objective, limits in _limits(space, rng).items():
        sol = solve(space, objective, limits)
        want = brute_force(space, objective, limits)
        if want is None:
            assert sol.status == "infeasible"
            continue
        assert sol.ok, (objective, sol.status)
        assert within(sol.evaluation, limits)
        assert sol.evaluation.feasible
        parts = sol.evaluation.parts
        assert min(parts.values()) >= 0 and sum(parts.values()) == pytest.approx(sol.evaluation.memory_bytes)
        assert _value(sol, objective) == pytest.approx(want, rel=1e-6, abs=1e-12), objective
        assert sol.figures["mip_gap"] <= 1e-9
        out.append(sol)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_milp_equals_brute_force(seed):
    _solutions_equal_brute_force(synthetic_space(seed), random.Random(1000 + seed))


def test_infeasible_is_reported_and_min_budget_is_exact():
    space = synthetic_space(1)
    smallest = brute_force(space, "memory", Limits())
    assert solve(space, "loss", Limits(memory_bytes=smallest * 0.999)).status == "infeasible"
    at = solve(space, "loss", Limits(memory_bytes=smallest))
    assert at.ok and at.evaluation.memory_bytes == pytest.approx(smallest, rel=1e-9)
    got = solve(space, "memory")
    assert got.evaluation.memory_bytes == pytest.approx(smallest, rel=1e-9)


def test_shared_basis_counted_once_per_type():
    space = synthetic_space(2, n_types=1, layers_per_type=2)
    values = {"rank.t0": 2, "width.s1": 16, "depth": 2}
    shared = evaluate(space, values, {"b0.t0": "shared_basis", "b1.t0": "shared_basis"})
    low = evaluate(space, values, {"b0.t0": "low_rank", "b1.t0": "low_rank"})
    # two low-rank layers own 2·(2r·m) elements; shared-basis: one basis + r per layer
    assert low.parts["weights"] == 2 * 2 * 2 * 16 * 4
    assert shared.parts["bases"] == 2 * 2 * 16 * 4 and shared.parts["weights"] == 2 * 2 * 4


def test_depth_drops_layers_and_their_cost():
    space = synthetic_space(3)
    values = space.full_assignment()
    deep = evaluate(space, values, best_forms(space, values))
    shallow_values = {**values, "depth": 1}
    shallow = evaluate(space, shallow_values, best_forms(space, shallow_values))
    assert set(shallow.forms) == {"b0.t0", "b0.t1"}
    assert shallow.latency_s < deep.latency_s


@pytest.mark.parametrize("seed", range(4))
def test_pair_bytes_count_only_together(seed):
    """Pairs large enough to decide the plan: the MILP must hold a pair's bytes iff both values are chosen."""
    space = synthetic_space(seed)
    space.dense_bytes = 5000.0
    space.pair_bytes = [(("width.s1", 16), ("depth", 2), -3000.0), (("width.s1", 8), ("depth", 1), 3000.0)]
    want = brute_force(space, "memory", Limits())
    got = solve(space, "memory")
    assert got.ok and got.evaluation.memory_bytes == pytest.approx(want, rel=1e-9)
    rng = random.Random(seed)
    for objective, limits in _limits(space, rng).items():
        want = brute_force(space, objective, limits)
        sol = solve(space, objective, limits)
        assert (sol.status == "infeasible") if want is None else _value(sol, objective) == pytest.approx(want, rel=1e-6)


def test_deterministic_solution():
    space = synthetic_space(4)
    lim = _limits(space, random.Random(7))["loss"]
    a, b = solve(space, "loss", lim), solve(space, "loss", lim)
    assert (a.values, a.forms, a.figures) == (b.values, b.forms, b.figures)


def with_precision(space: Space, seed: int) -> Space:
    """`space` with a precision knob per type, as planner.build makes them: every layer option exists once per
    precision (fp32 / fp16 / int8: bytes 4 / 2 / 1 per weight, faster at fewer bits), each precision's loss on
    its type's knob, and fp16 beside int8 forbidden (no exporter writes that mixture)."""
    from fine_deploy.planner.space import precision_code

    rng = random.Random(50 + seed)
    precs = {"fp32": (1.0, 1.0), "fp16": (0.5, 0.6), "int8": (0.25, 0.45)}  # bytes and seconds vs fp32
    codes = sorted(precision_code(p) for p in precs)
    types = sorted({la.type for la in space.layers})
    knobs = list(space.knobs)
    for t in types:
        loss = {"fp32": 0.0, "fp16": rng.uniform(0.0, 0.05), "int8": rng.uniform(0.05, 0.4)}
        knobs.append(Knob(f"precision.{t}", "precision", t, codes,
                          [loss[p] for p in sorted(precs, key=precision_code)]))
    layers, bases = [], {}
    for la in space.layers:
        opts = []
        for o in la.options:
            for p, (b, s) in precs.items():
                basis = f"{o.basis}|{p}" if o.basis else None
                if basis:
                    bases[basis] = space.bases[o.basis] * b
                opts.append(LayerOption((*o.values, precision_code(p)), o.form, o.rank, o.latency_s * s,
                                        o.weight_bytes * b, o.act_bytes * (b if p != "int8" else 0.5), basis,
                                        precision=p))
        layers.append(LayerSpace(la.name, la.type, (*la.knobs, f"precision.{la.type}"), opts, la.block))
    fp16, int8 = precision_code("fp16"), precision_code("int8")
    clash = [((f"precision.{a}", fp16), (f"precision.{b}", int8)) for a in types for b in types if a != b]
    return Space(knobs, layers, bases, space.const_latency_s, space.const_bytes, space.dense_bytes, space.pair_bytes,
                 space.forbidden + clash)


@pytest.mark.parametrize("seed", range(4))
def test_milp_with_precision_knobs_equals_brute_force(seed):
    from fine_deploy.planner.space import precision_code

    space = with_precision(synthetic_space(seed, layers_per_type=1), seed)
    for sol in _solutions_equal_brute_force(space, random.Random(2000 + seed)):
        p = {k.target: sol.values[k.name] for k in space.knobs if k.kind == "precision"}
        assert not ({precision_code("fp16"), precision_code("int8")} <= set(p.values())), "a forbidden mixture"


def test_a_tight_memory_budget_lowers_precision_before_rank_when_that_costs_less_quality():
    from fine_deploy.planner.space import precision_code

    space = with_precision(synthetic_space(5, n_types=1, layers_per_type=1), 5)
    knob = space.knob("precision.t0")
    knob.loss = [1e-6 * (len(knob.options) - 1 - i) for i in range(len(knob.options))]  # precision nearly free
    values = space.full_assignment()
    full = evaluate(space, values, best_forms(space, values, "memory"))
    sol = solve(space, "loss", Limits(memory_bytes=full.memory_bytes * 0.8))
    assert sol.ok and sol.values["rank.t0"] == knob_full(space, "rank.t0")
    assert sol.values["precision.t0"] < precision_code("fp32")


def knob_full(space: Space, name: str) -> int:
    return space.knob(name).full
