"""`--pareto DIR`: sweep the budget, solve each point exactly, keep the non-dominated plans.

Two sweeps: latency budgets from the fastest feasible subnet to the full model (memory held at --mem),
and memory budgets from the smallest feasible subnet to --mem (latency held at --latency when given).
Written as pareto.json (schema'd) and pareto.png (quality loss vs latency and vs memory).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.fileio import atomic_write_bytes, atomic_write_json
from fine_deploy.planner.milp import Limits, solve
from fine_deploy.planner.space import Space

SCHEMA = 1
FORMAT = "fine-deploy-pareto"


def _point(sol, budget_value: float) -> dict[str, Any]:
    ev = sol.evaluation
    return {"budget": float(f"{budget_value:.9g}"), "latency_s": float(f"{ev.latency_s:.9g}"),
            "memory_bytes": int(np.ceil(ev.memory_bytes)), "quality_loss": float(f"{ev.loss:.9g}"),
            "subnet": dict(sorted(sol.values.items()))}


def _front(points: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """Points no other point beats on both `cost` and quality loss, sorted by `cost`."""
    out: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p[cost], p["quality_loss"])):
        if not out or p["quality_loss"] < out[-1]["quality_loss"] - 1e-15:
            out.append(p)
    return out


def sweep(space: Space, limits: Limits, points: int = 12) -> dict[str, list[dict[str, Any]]]:
    fast = solve(space, "latency", Limits(memory_bytes=limits.memory_bytes))
    best = solve(space, "loss", Limits(memory_bytes=limits.memory_bytes))
    lat_pts = []
    if fast.ok and best.ok:
        lo, hi = fast.evaluation.latency_s, max(best.evaluation.latency_s, fast.evaluation.latency_s)
        for b in np.geomspace(lo, hi, points) if hi > lo else [lo]:
            s = solve(space, "loss", Limits(latency_s=float(b) * (1 + 1e-9), memory_bytes=limits.memory_bytes))
            if s.ok:
                lat_pts.append(_point(s, float(b)))
    small = solve(space, "memory", Limits(latency_s=limits.latency_s))
    big = solve(space, "loss", Limits(latency_s=limits.latency_s))
    mem_pts = []
    if small.ok and big.ok:
        lo = small.evaluation.memory_bytes
        hi = min(big.evaluation.memory_bytes, limits.memory_bytes or big.evaluation.memory_bytes)
        for b in np.geomspace(lo, hi, points) if hi > lo else [lo]:
            s = solve(space, "loss", Limits(latency_s=limits.latency_s, memory_bytes=float(b) * (1 + 1e-9)))
            if s.ok:
                mem_pts.append(_point(s, float(b)))
    return {"latency": _front(lat_pts, "latency_s"), "memory": _front(mem_pts, "memory_bytes")}


def write_pareto(space: Space, budget, out_dir: Path, *, title: str = "", points: int = 12) -> dict[str, Any]:
    fronts = sweep(space, budget.limits(), points)
    offset = getattr(budget, "loss_offset", 0.0)  # a converted supernet's full-model error vs its source
    for front in fronts.values():
        for p in front:
            p["quality_loss"] = float(f"{p['quality_loss'] + offset:.9g}")
    doc = {
        "schema": SCHEMA,
        "format": FORMAT,
        "title": title,
        "budget": budget.to_json(),
        "latency_front": fronts["latency"],
        "memory_front": fronts["memory"],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "pareto.json", doc)
    atomic_write_bytes(out_dir / "pareto.png", _plot(fronts, title))
    return doc


def _plot(fronts: dict[str, list[dict[str, Any]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    lat = fronts["latency"]
    a.step([p["latency_s"] * 1e3 for p in lat], [p["quality_loss"] for p in lat], "o-", where="post")
    a.set_xlabel("predicted latency per forward (ms)")
    a.set_ylabel("quality loss")
    a.set_title("loss vs latency")
    mem = fronts["memory"]
    b.step([p["memory_bytes"] / 2**20 for p in mem], [p["quality_loss"] for p in mem], "o-", where="post")
    b.set_xlabel("predicted memory (MiB)")
    b.set_title("loss vs memory")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
