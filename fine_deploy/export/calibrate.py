"""End-to-end calibration of the planner's latency for one supernet on this machine (`profile --supernet`).

The LUT prices the factorised layers under the profiler's protocol (minimum of thread CPU time); the rest
of a model (attention core, norms, embeddings, the runtime's graph overhead) is a roofline guess, and a
user times a whole model by its median wall time. On ONNX Runtime CPU whole default subnets measured about
twice the layer sum. So subnets spread over the latency range — the plans `plan` would make at budgets
from the fastest to the full model, and random ones — are exported, timed under runtime.timing.PREDICTION,
and  measured = a x Σ layer costs + b x Σ roofline-priced ops around them + c x blocks run + d  is fitted by
least relative squares with a, b, c, d >= 0 (planner.costs.TERMS; one scale and a fixed part left ±9% misfits
on the default DiT, whose blocks hold ~0.1 ms of work no factorised layer prices); the planner then reprices
every option on that fit (planner.costs.apply_calibration). The fit is stored in the LUT's free-form
`calibration` under `end_to_end.<supernet hash prefix>`, so the plan's LUT hash covers it. A margin (a high
quantile of the under-predictions left after the fit) makes the fit a near-upper bound of what was
measured: the budget is a promise.

Memory the same way: each export's ΔRSS as `bench` measures it (runtime.rss), fitted as
ΔRSS = p x parameter bytes + a x the largest layer's activation bytes + s (planner.costs.MEMORY_TERMS),
stored beside the latency fit under `memory`, and the planner reprices every byte on it
(planner.costs.apply_memory_calibration): a runtime holds more than the bare tensors.

It exports and times whole subnets, so it lives above both the planner and the exporter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError
from fine_deploy.planner.costs import END_TO_END as KEY
from fine_deploy.planner.costs import MEMORY_TERMS
from fine_deploy.runtime.rss import ISOLATION
from fine_deploy.runtime.timing import PREDICTION, Protocol
from fine_deploy.runtime.timing import describe as describe_protocol

MARGIN_QUANTILE = 0.9  # the under-prediction the fit is raised by: of the calibration subnets, this share is covered


def time_artifacts(dirs: list[Path], protocol: Protocol = PREDICTION, backend: str = "onnxruntime-cpu",
                   seed: int = 0) -> list[float]:
    """Seconds per run of exported artifacts under `protocol`, all interleaved round by round."""
    from fine_deploy.runtime import SessionOptions, open_session
    from fine_deploy.runtime.timing import measure_interleaved, session_runner

    opts = SessionOptions(threads=protocol.threads, spinning=protocol.spinning)
    sessions = [open_session(d, opts, backend) for d in dirs]
    try:
        runners = [session_runner(s, s.make_feeds(seed=0), protocol.clock) for s in sessions]
        return [t.seconds for t in measure_interleaved(runners, protocol, seed=seed)]
    finally:
        for s in sessions:
            s.close()


def calibration_subnets(pred, points: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """What to time: the fastest and the full subnet, the plans at budgets evenly between them, random subnets."""
    from fine_deploy.planner.milp import Limits, solve
    from fine_deploy.planner.predict import config_of
    from fine_deploy.planner.space import best_forms

    space = pred.space
    fast = solve(space, "latency")
    full = space.full_assignment()
    picks = [(config_of(space, fast.values), fast.forms), (config_of(space, full), best_forms(space, full))]
    lo, hi = fast.evaluation.latency_s, pred.latency_s(picks[1][0])
    n_plans = max(0, (points - 2 + 1) // 2)
    for b in np.linspace(lo, hi, n_plans + 2)[1:-1]:
        s = solve(space, "loss", Limits(latency_s=float(b)))
        if s.ok:
            picks.append((config_of(space, s.values), s.forms))
    picks += pred.random_subnets(max(0, points - len(picks)), seed=seed)
    return picks


def export_subnets(supernet: str | Path | None, content_hash: str, picks: list[tuple[dict, dict]], out: Path,
                   progress: Any = None) -> list[Path]:
    """Each (subnet, forms) exported to ONNX under `out`/s<i> as `fine-deploy export` does."""
    from fine_deploy.export import export
    from fine_deploy.planner.schema import Plan

    name = "default" if supernet is None else str(supernet)
    dirs = []
    for i, (cfg, forms) in enumerate(picks):
        p = Plan(supernet={"path": name, "sha256": content_hash}, subnet=cfg, kernels=forms, inputs={"batch": 1})
        export(p, "onnx", out / f"s{i}")
        dirs.append(out / f"s{i}")
        if progress is not None:
            progress()
    return dirs


def measure_memory(dirs: list[Path], protocol: Protocol = PREDICTION, progress: Any = None) -> np.ndarray:
    """ΔRSS of each export as `bench` measures it (runtime.rss: a fresh process each, the runtime's set-up paid
    first), at the protocol's threads."""
    from fine_deploy.runtime.rss import session_memory
    from fine_deploy.runtime.spec import SessionOptions

    out = []
    for d in dirs:
        got, error = session_memory(d, SessionOptions(threads=protocol.threads, spinning=protocol.spinning),
                                    "onnxruntime-cpu")
        if error is not None or got["rss_increase_bytes"] is None:
            raise FineDeployError(f"measuring the memory of {d.name} failed: {error}")
        out.append(float(got["rss_increase_bytes"]))
        if progress is not None:
            progress()
    return np.array(out)


def fit_terms(terms: list[dict[str, float]], measured: np.ndarray,
              names: tuple[str, ...] | None = None) -> tuple[dict[str, float], float, np.ndarray]:
    """(coefficients per term of `names` (default: the latency TERMS), margin, fitted values): measured ≈
    Σ coefficient x term by least relative squares, coefficients >= 0; a term that does not vary across the
    subnets (no depth knob, no width knob for activations) is left out."""
    from scipy.optimize import lsq_linear

    from fine_deploy.planner.costs import TERMS

    names = names or TERMS
    x = np.array([[t[k] for k in names] for t in terms])
    use = [i for i, k in enumerate(names) if k == "fixed" or np.ptp(x[:, i]) > 0]
    if len(measured) < len(use) + 1:
        raise FineDeployError(f"end-to-end calibration needs more than {len(use)} subnets that differ")
    a = x[:, use] / measured[:, None]
    sol = lsq_linear(a, np.ones_like(measured), bounds=(0.0, np.inf)).x
    coef = dict.fromkeys(names, 0.0)
    coef.update({names[i]: float(v) for i, v in zip(use, sol, strict=True)})
    fitted = x[:, use] @ sol
    margin = float(max(0.0, np.quantile(measured / fitted - 1.0, MARGIN_QUANTILE)))
    return coef, margin, fitted


def calibrate(supernet: str | Path | None, lut: str | Path, *, device: str = "host", points: int = 24,
              profiles: str | Path | None = None, protocol: Protocol = PREDICTION, seed: int = 0,
              show_progress: bool = True) -> dict[str, Any]:
    """Export `points` subnets across the latency range, time them, fit and store the end-to-end terms."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fine_deploy.cost.lut import load_lut
    from fine_deploy.planner.predict import load_predictor
    from fine_deploy.supernet.core import load_supernet

    if points < 3:
        raise FineDeployError(f"end-to-end calibration needs at least 3 subnets, got {points}")
    sn = load_supernet(supernet)
    pred = load_predictor(sn, device, lut, profiles=profiles, raw=True)
    picks = calibration_subnets(pred, points, seed)
    terms = [pred.terms(cfg, forms) for cfg, forms in picks]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (tempfile.TemporaryDirectory(prefix="fine-deploy-calibrate-") as tmp,
          Progress(*columns, disable=not show_progress, transient=True) as bar):
        task = bar.add_task("exporting whole subnets to calibrate", total=len(picks))
        dirs = export_subnets(supernet, sn.content_hash, picks, Path(tmp), lambda: bar.advance(task))
        bar.update(task, description="timing whole subnets")
        measured = np.array(time_artifacts(dirs, protocol, seed=seed))
        bar.update(task, description="measuring their memory", completed=0)
        memory = measure_memory(dirs, protocol, lambda: bar.advance(task))
    coef, margin, fitted = fit_terms(terms, measured)
    mem_terms = [pred.memory_terms(cfg, forms) for cfg, forms in picks]
    mem_coef, mem_margin, mem_fitted = fit_terms(mem_terms, memory, MEMORY_TERMS)
    result = {"coefficients": coef, "margin_applied": margin, "margin_quantile": MARGIN_QUANTILE,
              "subnets": len(picks), "protocol": protocol.to_dict(),
              "median_abs_rel_error": float(np.median(np.abs(measured / fitted - 1.0))),
              "terms": terms, "measured_s": measured.tolist(),
              "supernet": {"path": "default" if supernet is None else str(supernet), "sha256": sn.content_hash},
              "memory": {"coefficients": mem_coef, "margin_applied": mem_margin, "margin_quantile": MARGIN_QUANTILE,
                         "median_abs_rel_error": float(np.median(np.abs(memory / mem_fitted - 1.0))),
                         "terms": mem_terms, "measured_bytes": memory.tolist(), "measure": ISOLATION}}
    raw = load_lut(lut)
    raw.calibration.setdefault(KEY, {})[sn.content_hash[:16]] = result
    raw.save(lut)
    return result


def _line(c: dict[str, float]) -> str:
    return (f"{c['layers']:.2f} x layers + {c['around']:.2f} x ops around them + {c['blocks'] * 1e6:.1f} us x blocks "
            f"+ {c['fixed'] * 1e6:.0f} us")


def _memory_line(m: dict[str, Any]) -> str:
    c = m["coefficients"]
    return (f"{c['parameters']:.2f} x parameter bytes + {c['activations']:.2f} x activation bytes + "
            f"{c['fixed'] / 2**20:.1f} MiB, raised by {m['margin_applied']:.1%}; median error "
            f"{m['median_abs_rel_error']:.1%}")


def profile_supernet(device: str, output: Path | None = None, *, runtime: str | None = None,
                     supernet: Path | None = None, resume: bool = True, points: int = 24) -> dict[str, Any] | None:
    """`fine-deploy profile`: the LUT of the supernet's layer choices, then (ONNX Runtime CPU) its end-to-end fit."""
    from rich.console import Console

    from fine_deploy.cost.commands import profile_command
    from fine_deploy.cost.lut import lut_path

    if points and points < 3:
        raise FineDeployError(f"--calibrate-subnets {points}: give 0 (no end-to-end calibration) or at least 3")
    lut = profile_command(device, output, runtime=runtime, supernet=supernet, resume=resume)
    console = Console(stderr=True)
    if not points:
        return None
    if lut.runtime != "onnxruntime-cpu":
        console.print(f"end-to-end calibration times ONNX exports on ONNX Runtime CPU; {lut.runtime} plans are "
                      "priced on the layer LUT alone")
        return None
    path = Path(output) if output is not None else lut_path(lut.device, lut.runtime)
    cal = calibrate(supernet, path, device=lut.device, points=points)
    console.print(
        f"whole subnets of {'the default supernet' if supernet is None else supernet}: {cal['subnets']} exported and "
        f"timed ({describe_protocol(PREDICTION)}); fit: {_line(cal['coefficients'])}, raised by "
        f"{cal['margin_applied']:.1%}; median error of the fit "
        f"{cal['median_abs_rel_error']:.1%}. Their memory (ΔRSS, as bench measures it): "
        f"{_memory_line(cal['memory'])}. `plan` prices this supernet with both"
    )
    return cal
