"""The exact multiple-choice knapsack: scipy.optimize.milp (HiGHS) over a `Space`.

Variables: x[k, v] = 1 when knob k takes value v (one per knob); z[l, o] = 1 when layer l runs option
o (its knobs' joint value x kernel form; all zero when the depth knob drops the layer); b[K] = 1 when
shared basis K is held; p[i] = 1 when both knob values of dense-bytes pair i are chosen; a = the largest
activation footprint of any layer. A layer's option must agree with every knob it depends on (sum of z
over options with k = v <= x[k, v]) and the layer exists iff depth > its block (sum of z = sum of
x[depth, v] over v > block), which makes the per-layer tables of a joint choice exact for every integer
solution: interactions are enumerated, not approximated.

The objective is lexicographic: the primary one (quality loss, latency or memory) to optimality
(relative gap 0), then a secondary one with the primary held at its optimum, so equal-loss plans are
broken towards the faster one and the result does not depend on the solver's tie-breaking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from fine_deploy.planner.space import Evaluation, Space, evaluate

OBJECTIVES = ("loss", "latency", "memory")
_STATUS = {0: "optimal", 1: "limit reached", 2: "infeasible", 3: "unbounded", 4: "error"}
# relative slack allowed when re-checking a solution against the exact tables (solver tolerances)
REL_TOL = 1e-6


@dataclass
class Limits:
    latency_s: float | None = None
    memory_bytes: float | None = None
    loss: float | None = None


@dataclass
class Solution:
    status: str
    values: dict[str, int] = field(default_factory=dict)
    forms: dict[str, str] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "optimal" and self.evaluation is not None


class _Model:
    """Sparse rows of the linearised problem, with each figure normalised to O(1) for HiGHS' tolerances."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.col: dict[tuple, int] = {}
        for k in space.knobs:
            for v in k.options:
                self.col[("x", k.name, v)] = len(self.col)
        for li, layer in enumerate(space.layers):
            for oi in range(len(layer.options)):
                self.col[("z", li, oi)] = len(self.col)
        for key in sorted(space.bases):
            self.col[("b", key)] = len(self.col)
        for pi in range(len(space.pair_bytes)):
            self.col[("p", pi)] = len(self.col)
        self.col[("a",)] = len(self.col)
        self.n = len(self.col)
        self.integrality = np.array([1 if key[0] in ("x", "z") else 0 for key in self.col], dtype=np.uint8)
        upper = np.ones(self.n)
        upper[self.col[("a",)]] = np.inf
        self.bounds = Bounds(np.zeros(self.n), upper)
        full = evaluate(space, space.full_assignment(), _any_forms(space))
        self.ref = {"latency": max(full.latency_s, 1e-12), "memory": max(full.memory_bytes, 1.0),
                    "loss": max(max((max(k.loss) for k in space.knobs), default=0.0), 1e-12)}
        self.vec = {name: self._vector(name) for name in OBJECTIVES}
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self._structure()

    def _vector(self, what: str) -> tuple[np.ndarray, float]:
        """Coefficients and constant of loss, latency or memory, in units of the full model's figure."""
        c = np.zeros(self.n)
        sp = self.space
        for k in sp.knobs:
            for i, v in enumerate(k.options):
                c[self.col[("x", k.name, v)]] = {"loss": k.loss, "latency": k.latency_s, "memory": k.bytes}[what][i]
        const = 0.0
        if what == "latency":
            const = sp.const_latency_s
            for li, layer in enumerate(sp.layers):
                for oi, o in enumerate(layer.options):
                    c[self.col[("z", li, oi)]] = o.latency_s
        elif what == "memory":
            const = sp.const_bytes + sp.session_bytes + sp.dense_bytes
            for li, layer in enumerate(sp.layers):
                for oi, o in enumerate(layer.options):
                    c[self.col[("z", li, oi)]] = o.weight_bytes
            for key, nbytes in sp.bases.items():
                c[self.col[("b", key)]] = nbytes
            for pi, (*_, nbytes) in enumerate(sp.pair_bytes):
                c[self.col[("p", pi)]] = nbytes
            # a is kept in units of the full model's memory (see the activation rows)
            c[self.col[("a",)]] = self.ref["memory"]
        ref = self.ref[what]
        return c / ref, const / ref

    def _row(self, coefs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coefs, lo, hi))

    def _structure(self) -> None:
        sp = self.space
        for k in sp.knobs:
            self._row({self.col[("x", k.name, v)]: 1.0 for v in k.options}, 1.0, 1.0)
        for (ka, va), (kb, vb) in sp.forbidden:
            self._row({self.col[("x", ka, va)]: 1.0, self.col[("x", kb, vb)]: 1.0}, -np.inf, 1.0)
        for pi, ((ka, va), (kb, vb), _) in enumerate(sp.pair_bytes):
            # p = x[a, va] AND x[b, vb], exact for integral x whatever the sign of its bytes
            p, xa, xb = self.col[("p", pi)], self.col[("x", ka, va)], self.col[("x", kb, vb)]
            self._row({xa: 1.0, xb: 1.0, p: -1.0}, -np.inf, 1.0)
            self._row({p: 1.0, xa: -1.0}, -np.inf, 0.0)
            self._row({p: 1.0, xb: -1.0}, -np.inf, 0.0)
        depth = next((k for k in sp.knobs if k.name == "depth"), None)
        a_col = self.col[("a",)]
        for li, layer in enumerate(sp.layers):
            zs = {oi: self.col[("z", li, oi)] for oi in range(len(layer.options))}
            exist = dict.fromkeys(zs.values(), 1.0)
            if layer.block is not None and depth is not None:
                for v in depth.options:
                    if v > layer.block:
                        exist[self.col[("x", "depth", v)]] = -1.0
                self._row(exist, 0.0, 0.0)
            else:
                self._row(exist, 1.0, 1.0)
            for pos, kname in enumerate(layer.knobs):
                for v in sp.knob(kname).options:
                    row = {zs[oi]: 1.0 for oi, o in enumerate(layer.options) if o.values[pos] == v}
                    if row:
                        row[self.col[("x", kname, v)]] = -1.0
                        self._row(row, -np.inf, 0.0)
            by_basis: dict[str, dict[int, float]] = {}
            for oi, o in enumerate(layer.options):
                if o.basis:
                    by_basis.setdefault(o.basis, {})[zs[oi]] = 1.0
            for key, row in by_basis.items():
                row[self.col[("b", key)]] = -1.0
                self._row(row, -np.inf, 0.0)
            # a >= this layer's activations: sum_o act_o z_o - a <= 0 (in units of the full memory)
            act = {zs[oi]: o.act_bytes / self.ref["memory"] for oi, o in enumerate(layer.options) if o.act_bytes}
            if act:
                act[a_col] = -1.0
                self._row(act, -np.inf, 0.0)

    def constraints(self, extra: list[tuple[np.ndarray, float, float]]) -> LinearConstraint:
        rows, cols, vals, lo, hi = [], [], [], [], []
        for r, (coefs, lb, ub) in enumerate(self.rows):
            for c, v in coefs.items():
                rows.append(r)
                cols.append(c)
                vals.append(v)
            lo.append(lb)
            hi.append(ub)
        r0 = len(self.rows)
        for i, (vec, lb, ub) in enumerate(extra):
            nz = np.nonzero(vec)[0]
            rows += [r0 + i] * len(nz)
            cols += nz.tolist()
            vals += vec[nz].tolist()
            lo.append(lb)
            hi.append(ub)
        A = coo_array((vals, (rows, cols)), shape=(r0 + len(extra), self.n)).tocsr()
        return LinearConstraint(A, np.array(lo), np.array(hi))

    def decode(self, x: np.ndarray) -> tuple[dict[str, int], dict[str, str]]:
        values = {}
        for k in self.space.knobs:
            values[k.name] = max(k.options, key=lambda v: x[self.col[("x", k.name, v)]])
        forms = {}
        for li, layer in enumerate(self.space.layers):
            zs = [x[self.col[("z", li, oi)]] for oi in range(len(layer.options))]
            if max(zs) > 0.5:
                forms[layer.name] = layer.options[int(np.argmax(zs))].form
        return values, forms


def _any_forms(space: Space) -> dict[str, str]:
    from fine_deploy.planner.space import best_forms

    return best_forms(space, space.full_assignment())


def solve(space: Space, objective: str = "loss", limits: Limits | None = None, *,
          secondary: str | None = None, time_limit_s: float = 60.0) -> Solution:
    """Minimise `objective` subject to `limits`; ties broken by minimising `secondary`.

    HiGHS accepts rows violated by its feasibility tolerance (1e-7 of the full model's figure); a
    solution over a limit by that much is re-solved with the limit tightened by the excess, so a
    returned solution never exceeds a limit when priced exactly.
    """
    limits = limits or Limits()
    sol = _solve(space, objective, limits, secondary, time_limit_s)
    for _ in range(3):
        if not sol.ok:
            return sol
        ev = sol.evaluation
        over = Limits(
            _tighten(limits.latency_s, ev.latency_s), _tighten(limits.memory_bytes, ev.memory_bytes),
            _tighten(limits.loss, ev.loss),
        )
        if over == limits:
            return sol
        limits = over
        sol = _solve(space, objective, limits, secondary, time_limit_s)
    return sol


def _tighten(limit: float | None, value: float) -> float | None:
    if limit is None or value <= limit:
        return limit
    return limit - 2 * (value - limit)


def _solve(space: Space, objective: str, limits: Limits, secondary: str | None, time_limit_s: float) -> Solution:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}")
    if secondary is None:
        secondary = {"loss": "latency", "latency": "loss", "memory": "latency"}[objective]
    m = space.__dict__.get("_milp_model")  # the rows depend on the space only: built once per space
    if m is None:
        m = space.__dict__["_milp_model"] = _Model(space)
    extra = []
    for what, bound in (("latency", limits.latency_s), ("memory", limits.memory_bytes), ("loss", limits.loss)):
        if bound is not None:
            vec, const = m.vec[what]
            extra.append((vec, -np.inf, bound / m.ref[what] - const))
    options = {"mip_rel_gap": 0.0, "time_limit": time_limit_s, "presolve": True}
    c1, k1 = m.vec[objective]
    res = milp(c1, integrality=m.integrality, bounds=m.bounds, constraints=m.constraints(extra), options=options)
    figures: dict[str, Any] = {
        "solver": "scipy.optimize.milp (HiGHS)",
        "variables": m.n,
        "binaries": int(m.integrality.sum()),
        "constraints": len(m.rows) + len(extra),
        "objective": objective,
        "secondary": secondary,
    }
    status = _STATUS.get(res.status, "error")
    figures["status"] = status
    if res.x is None:
        figures["message"] = str(res.message)
        return Solution(status if status != "optimal" else "error", figures=figures)
    figures["mip_gap"] = float(getattr(res, "mip_gap", 0.0) or 0.0)
    figures["nodes"] = int(getattr(res, "mip_node_count", 0) or 0)
    best = float(res.fun)
    # second pass: hold the primary at its optimum (plus the solver's tolerance), minimise the secondary
    c2, _ = m.vec[secondary]
    hold = best + max(1e-9, abs(best) * 1e-9) + 1e-9
    res2 = milp(c2, integrality=m.integrality, bounds=m.bounds,
                constraints=m.constraints([*extra, (c1, -np.inf, hold)]), options=options)
    x = res2.x if res2.x is not None and res2.status == 0 else res.x
    if res2.x is not None:
        figures["secondary_mip_gap"] = float(getattr(res2, "mip_gap", 0.0) or 0.0)
        figures["nodes"] += int(getattr(res2, "mip_node_count", 0) or 0)
    values, forms = m.decode(x)
    ev = evaluate(space, values, forms)
    figures["objective_value"] = {"loss": ev.loss, "latency": ev.latency_s, "memory": ev.memory_bytes}[objective]
    dual = getattr(res, "mip_dual_bound", None)
    figures["dual_bound"] = (float(best if dual is None else dual) + k1) * m.ref[objective]
    return Solution(status, values, forms, ev, figures)


def within(ev: Evaluation, limits: Limits) -> bool:
    """Does an evaluation meet the limits (with the solver's relative tolerance)?"""
    ok = ev.feasible
    if limits.latency_s is not None:
        ok &= ev.latency_s <= limits.latency_s * (1 + REL_TOL)
    if limits.memory_bytes is not None:
        ok &= ev.memory_bytes <= limits.memory_bytes * (1 + REL_TOL)
    if limits.loss is not None:
        ok &= ev.loss <= limits.loss * (1 + REL_TOL) + 1e-15
    return ok
