"""End-to-end calibration of the planner's latency model for one supernet on this machine.

It exports and times whole subnets, so it lives above both the planner and the exporter; the planner reads
the fitted line back with `fine_deploy.planner.costs.calibration_for`.

The LUT prices the factorised layers; the rest of a model (attention core, norms, embeddings,
the runtime's graph overhead) is a roofline guess, and on ONNX Runtime CPU the whole model measured
~2x the sum (benchmarks/planner.py). So a few plans spread over the latency range are exported,
timed end to end, and `measured = scale x predicted + fixed_s` is fitted; the planner then prices
every option with that line. The fit is stored in the LUT's free-form `calibration` under
`end_to_end.<supernet hash prefix>`, so the plan's LUT hash covers it. A margin (the largest
under-prediction left after the fit) makes the line an upper bound on what was measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError
from fine_deploy.planner.costs import END_TO_END as KEY


def time_artifacts(dirs: list[Path], rounds: int = 8, runs: int = 25) -> list[float]:
    """Seconds per run of exported ONNX artifacts: 1 thread, thread CPU clock, interleaved, minimum."""
    from fine_deploy.cost.timing import Protocol, measure_interleaved, run_timer
    from fine_deploy.runtime import SessionOptions, open_session

    proto = Protocol(rounds=rounds, runs_per_round=runs)
    sessions = [open_session(d, SessionOptions(threads=1, spinning=False), "onnxruntime-cpu") for d in dirs]
    try:
        runners = [run_timer(lambda s=s, f=s.make_feeds(seed=0): s.run(f), proto.clock) for s in sessions]
        return [t.seconds for t in measure_interleaved(runners, proto, seed=0)]
    finally:
        for s in sessions:
            s.close()


def calibrate(supernet: str | Path | None, lut: str | Path, *, device: str = "host", points: int = 6,
              profiles: str | Path | None = None) -> dict[str, Any]:
    """Export `points` plans across the latency range, time them, fit and store the end-to-end line."""
    from fine_deploy.cost.lut import load_lut
    from fine_deploy.export import export
    from fine_deploy.planner.build import build_space
    from fine_deploy.planner.costs import CostModel
    from fine_deploy.planner.milp import Limits, solve
    from fine_deploy.planner.plan import DTYPE, load_device
    from fine_deploy.planner.schema import Plan
    from fine_deploy.planner.sensitivity import sensitivity_table
    from fine_deploy.planner.space import best_forms, evaluate
    from fine_deploy.supernet.core import load_supernet

    if points < 2:
        raise FineDeployError(f"calibration needs at least 2 subnets, got {points}")
    sn = load_supernet(supernet)
    prof, table, _ = load_device(device, lut, profiles)
    table.calibration.get(KEY, {}).pop(sn.content_hash[:16], None)  # fit against the raw model
    space = build_space(sn, CostModel.build(prof, table, DTYPE), sensitivity_table(sn), batch=1)
    fast = solve(space, "latency")
    values = space.full_assignment()
    full = evaluate(space, values, best_forms(space, values))
    picks = [(fast.values, fast.forms, fast.evaluation.latency_s), (values, full.forms, full.latency_s)]
    for b in np.linspace(fast.evaluation.latency_s, full.latency_s, points)[1:-1]:
        s = solve(space, "loss", Limits(latency_s=float(b)))
        if s.ok:
            picks.append((s.values, s.forms, s.evaluation.latency_s))
    name = "default" if supernet is None else str(supernet)
    with tempfile.TemporaryDirectory(prefix="fine-deploy-calibrate-") as tmp:
        dirs = []
        for i, (vals, forms, _) in enumerate(picks):
            cfg = {"ranks": {k.target: vals[k.name] for k in space.knobs if k.kind == "rank"},
                   "widths": {k.target: vals[k.name] for k in space.knobs if k.kind == "width"},
                   "depth": vals.get("depth")}
            p = Plan(supernet={"path": name, "sha256": sn.content_hash}, subnet=cfg, kernels=forms,
                     inputs={"batch": 1})
            export(p, "onnx", Path(tmp) / f"s{i}")
            dirs.append(Path(tmp) / f"s{i}")
        measured = np.array(time_artifacts(dirs))
    pred = np.array([p[2] for p in picks])
    scale, fixed = np.polyfit(pred, measured, 1)
    fitted = scale * pred + fixed
    margin = float(max(0.0, np.max(measured / fitted - 1.0)))
    result = {"scale": float(scale * (1 + margin)), "fixed_s": float(fixed * (1 + margin)), "margin": margin,
              "subnets": len(picks), "median_abs_rel_error": float(np.median(np.abs(measured / fitted - 1.0))),
              "predicted_s": pred.tolist(), "measured_s": measured.tolist()}
    raw = load_lut(lut)
    raw.calibration.setdefault(KEY, {})[sn.content_hash[:16]] = result
    raw.save(lut)
    return result
