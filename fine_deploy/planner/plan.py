"""`fine-deploy plan`: one value per knob and a kernel form per layer, under memory / latency budgets.

Two questions, one model (fine_deploy.planner.milp): the best quality that fits --mem (and --latency),
or with --max-loss the fastest subnet whose quality loss stays under it and that fits --mem. An
infeasible budget is answered with the smallest feasible one on that device, and nothing is written.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import canonical_json, sha256_file
from fine_deploy.planner.milp import Limits, Solution, solve
from fine_deploy.planner.pipeline_costs import PipelineCost, pipeline_cost
from fine_deploy.planner.schema import Plan
from fine_deploy.planner.space import Space, evaluate
from fine_deploy.planner.units import (
    format_bytes,
    format_seconds,
    parse_bytes,
    parse_seconds,
    round_up_bytes,
    round_up_seconds,
)

AUTO = "auto"
# a layer at another precision than the plan's base ("*") is offered only beside fp32: the exporters mix fp32
# with fp16 layers (ONNX fp16 converter's block list) or with int8 layers (the quantiser's excluded nodes)
MIXABLE = ("fp16", "int8")
# a device whose fp16/bf16 rate is this many times its fp32 rate runs fp32 as a reference path, not a deployment
# precision: `auto` leaves fp32 out there (--precision fp32 still plans it)
FALLBACK_RATIO = 2.0


def precision_candidates(profile, precision: str, sn=None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The precisions `--precision` lets the planner choose on `profile` (checked: one line naming the device's),
    and why `auto` left each of the device's other precisions out.

    `auto` leaves out int8 for a supernet `sn` whose training images are not here: its export would need
    calibration images the user has to supply (--calib) or dynamic quantisation, so int8 is planned only
    when asked for (--precision int8). It also leaves out a precision whose compute rate the profile does not
    state (int8 on ONNX Runtime CPU): its latency would be a guess, and the full default subnet's static int8
    export measured 0.82x the fp32 speed on the 2-core host (benchmarks/results/precision.json), so a plan
    choosing it under a binding memory budget would break its latency budget."""
    from fine_deploy.cost.precisions import check_precision, compute_dtype

    if precision != AUTO:
        check_precision(precision, "--precision")
        return (profile.require_precision(precision),), {}
    got, left = tuple(profile.precisions), {}

    def drop(names: list[str], why) -> None:
        nonlocal got
        if names and len(got) > len(names):  # never all of them: the device must keep something to plan
            got = tuple(p for p in got if p not in names)
            left.update({p: why(p) for p in names})

    if sn is not None:
        from fine_deploy.supernet.spec import training_data_source

        if training_data_source(sn.spec) is None:
            drop([p for p in got if p == "int8"], lambda p: (
                "static int8 calibrates on the supernet's training images, which are not here "
                "(--precision int8 plans it; export it with --calib or --int8-mode dynamic)"))
    drop([p for p in got if compute_dtype(p) not in profile.peak_flops], lambda p: (
        f"the {profile.name} profile states no {compute_dtype(p)} rate, so its latency would be a guess "
        f"(--precision {p} plans it at the fp32 figure)"))
    fp32 = profile.peak_flops.get("fp32")
    fast = max((profile.peak_flops.get(d, 0.0) for d in ("fp16", "bf16") if d in got), default=0.0)
    if fp32 and fast >= FALLBACK_RATIO * fp32:
        drop([p for p in got if p == "fp32"], lambda p: (
            "the device's fp16/bf16 rate is >= 2x its fp32 rate: fp32 is its reference path "
            "(--precision fp32 plans it)"))
    return got, left


def precision_bases(candidates: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """(base, layer precisions) pairs the MILP is solved over, one exact space each: every node at one
    precision, or fp32 with layers at fp16 or int8 (MIXABLE) where those are candidates."""
    out = []
    for base in candidates:
        layers = (base, *(p for p in MIXABLE if p in candidates)) if base == "fp32" else (base,)
        out.append((base, layers))
    return out


def precision_map(space: Space, sol: Solution) -> dict[str, str]:
    """plan.json's `precision`: "*" (the base) and each type whose layers differ from it; empty when all fp32."""
    from fine_deploy.planner.space import precision_name

    knobs = [k for k in space.knobs if k.kind == "precision"]
    if not knobs:
        return {}
    out = {k.target: precision_name(sol.values[k.name]) for k in knobs}
    star = out.pop("*")
    got = {"*": star, **{t: p for t, p in sorted(out.items()) if p != star}}
    return {} if got == {"*": "fp32"} else got  # an all-fp32 plan reads as plans did before the field


@dataclass
class Budget:
    mem_bytes: int  # what the user asked for, capped by the device's usable memory
    mem_asked_bytes: int | None
    mem_capped: bool
    latency_s: float | None  # per forward pass (already converted from per image)
    latency_asked_s: float | None
    per_image: bool
    steps: int
    batch: int
    max_loss: float | None
    texts: dict[str, str | None]
    pipeline: PipelineCost | None = None  # a converted pipeline's other components (fixed costs)
    # quality loss every subnet carries whatever the knobs: a converted supernet's full model vs its source
    loss_offset: float = 0.0

    def forward_to_shown(self, s: float) -> float:
        """Seconds per denoiser forward -> the unit the user budgets in (per image with --steps; for a pipeline
        that includes the text encoders, the guidance passes and the VAE decoder)."""
        if not self.per_image:
            return s
        return self.pipeline.per_image(s, self.steps, self.batch) if self.pipeline else s * self.steps / self.batch

    def memory_to_shown(self, denoiser_bytes: float) -> float:
        """The denoiser's memory -> what is resident at once (the whole pipeline's, for a pipeline)."""
        return self.pipeline.total_memory(denoiser_bytes) if self.pipeline else denoiser_bytes

    def limits(self) -> Limits:
        mem = self.pipeline.denoiser_memory_limit(self.mem_bytes) if self.pipeline else self.mem_bytes
        loss = None if self.max_loss is None else self.max_loss - self.loss_offset
        return Limits(self.latency_s, mem, loss)

    def to_json(self) -> dict[str, Any]:
        return {
            "mem": self.texts["mem"],
            "mem_bytes": self.mem_bytes,
            "mem_asked_bytes": self.mem_asked_bytes,
            "mem_capped_by_device": self.mem_capped,
            "latency": self.texts["latency"],
            "latency_s": self.latency_asked_s,
            "latency_per": "image" if self.per_image else "forward",
            "forward_latency_s": self.latency_s,
            "steps": self.steps if self.per_image else None,
            "batch": self.batch,
            "max_loss": self.max_loss,
            "offload": self.pipeline.offload if self.pipeline else None,
        }


def make_budget(profile, mem: str | int | None, latency: str | float | None, steps: int | None, batch: int,
                max_loss: float | None, pipeline: PipelineCost | None = None) -> Budget:
    if batch < 1:
        raise FineDeployError(f"--batch must be >= 1, got {batch}")
    if steps is not None and steps < 1:
        raise FineDeployError(f"--steps must be >= 1, got {steps}")
    if max_loss is not None and not (math.isfinite(max_loss) and max_loss >= 0):
        raise FineDeployError(f"--max-loss must be a number >= 0, got {max_loss}")
    asked = parse_bytes(mem) if mem is not None else None
    cap = profile.usable_memory_bytes
    mem_bytes = min(asked, cap) if asked is not None else cap
    lat = parse_seconds(latency) if latency is not None else None
    per_image = steps is not None
    fwd = lat * batch / steps if (lat is not None and per_image) else lat
    if pipeline is not None and lat is not None and per_image:  # what is left for the denoiser's passes
        fwd = (lat - pipeline.fixed_latency_s) * batch / (steps * pipeline.passes)
        if fwd <= 0:
            raise FineDeployError(
                f"--latency {latency}: the text encoders and VAE decoder alone take "
                f"{format_seconds(pipeline.fixed_latency_s)} per image on {profile.name}; allow more than that")
    if pipeline is not None and pipeline.offload == "sequential" and pipeline.largest_other > mem_bytes:
        raise FineDeployError(f"no component split fits: the largest component alone needs "
                              f"{round_up_bytes(pipeline.largest_other)} on {profile.name}; give --mem at least that")
    return Budget(mem_bytes, asked, asked is not None and asked > cap, fwd, lat, per_image, steps or 1, batch,
                  max_loss, {"mem": str(mem) if mem is not None else None,
                             "latency": str(latency) if latency is not None else None}, pipeline)


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _r(x: float) -> float:
    """Nine significant digits: stable bytes in plan.json whatever the last float bits."""
    return float(f"{x:.9g}")


HELDOUT = "heldout_denoising_loss"


def quality_estimate(q: dict[str, Any], loss: float, precision: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The plan's loss in the measured metric's own unit: the full model's held-out denoising loss and the
    subnet's predicted one (+ the relative increase), for a trained supernet; None for a proxy or a
    source-relative table (those have no unit a user measures)."""
    full = (q.get("full_model") or {}).get(HELDOUT)
    if q.get("proxy") or not full:
        return None
    out = {
        "metric": HELDOUT, "full_model": _r(full), "subnet": _r(full + loss), "relative_increase": _r(loss / full),
        "method": ("the full model's held-out loss plus the sum of each chosen knob value's increase, each measured "
                   "alone on the held-out split (the sensitivity table): an estimate, not a measurement of this "
                   "subnet; `fine-deploy retrain` measures it"),
    }
    if precision and (q.get("precision") or {}).get("scaled"):  # a non-fp32 plan's precision steps
        out["proxy_part"] = f"precision: {q['precision']['scaled']}"
    return out


def quality_record(sn, sens: dict[str, Any]) -> dict[str, Any]:
    """What the plan's quality figure means: the table's metric, and for a converted supernet its distance
    from the source model (the loss a plan adds to the table's, since the table is relative to the full model).

    A converted supernet measured by convert (`spec.conversion`): the full model's relative output MSE vs
    the source is a loss every plan carries; with exact top options it is float rounding, and the table
    (relative to the full model) is then relative to the source itself. A converted supernet that predates
    that measurement says so, so that no plan of a model that may differ from its source reads "loss 0".
    """
    q: dict[str, Any] = {"metric": sens.get("metric"), "proxy": bool(sens.get("proxy", False))}
    if sens.get("metric") == HELDOUT and isinstance(sens.get("baseline"), (int, float)):
        q["full_model"] = {HELDOUT: float(sens["baseline"])}
        m = (sn.spec.provenance or {}).get("metric") or {}
        if isinstance(m.get("frechet_distance"), (int, float)):
            q["full_model"]["frechet_distance"] = float(m["frechet_distance"])
            q["full_model"]["frechet_features"] = "fine-deploy digits classifier, not Inception"
        if isinstance(m.get("class_accuracy"), (int, float)):
            q["full_model"]["class_accuracy"] = float(m["class_accuracy"])
    if q["proxy"]:
        q["note"] = ("data-free proxy: relative output MSE of each knob value alone on fixed random inputs; "
                     "train the supernet to measure its sensitivity table")
    conv = sn.spec.conversion
    unit = str(sens.get("metric", "")).startswith("relative_output_mse")
    if conv and unit:
        q["reference"] = "source"
        q["conversion_error"] = float(conv["full_model"]["rel_mse"])
        q["factors_only_error"] = float(conv["factors_only"]["rel_mse"])
        q["exact_top"] = bool(sn.exact_top)
    elif conv:
        q["reference"] = "full supernet"
        q["conversion_error"] = None
        q["note"] = (f"{sens.get('metric')} is relative to the supernet's full model, which is "
                     f"{conv['full_model']['rel_l2']:.2e} rel. L2 from the source model")
    elif sn.spec.provenance.get("source") == "diffusers":
        q["reference"] = "full supernet"
        q["conversion_error"] = None
        q["note"] = ("converted before fine-deploy measured the conversion error: loss is relative to the "
                     "supernet's full model, which may differ from the source; re-convert to measure it")
    return q


def load_device(device: str, lut: str | Path | None, profiles: str | Path | None):
    from fine_deploy.cost.lut import load_lut_checked, lut_path
    from fine_deploy.cost.profiles import load_profile

    prof = load_profile(device, profiles)
    lut_file = Path(lut) if lut is not None else lut_path(prof.name, prof.runtime)
    table = None
    if lut is not None or lut_file.is_file():
        # one measured here with another runtime version is refused inside; one an interrupted profile left
        # behind prices only the layers it reached, so it is refused too
        table, _ = load_lut_checked(lut_file)
        if table.device != prof.name:
            raise FineDeployError(
                f"LUT {lut_file} was measured for {table.device}, not {prof.name}; pass that device's LUT "
                f"or run `fine-deploy profile --device {prof.name}`"
            )
        if not table.complete:
            raise FineDeployError(f"LUT {lut_file} is incomplete (its `profile` run was interrupted); re-run "
                                  f"`fine-deploy profile --device {prof.name}` to finish it (it resumes)")
    record = {
        "device": device,
        "resolved": prof.name,
        "runtime": prof.runtime,
        "sha256": _hash_json(prof.to_dict()),
        "usable_memory_bytes": prof.usable_memory_bytes,
        "lut": str(lut_file) if table is not None else None,
        "lut_sha256": sha256_file(lut_file) if table is not None else None,
    }
    return prof, table, record


def latency_protocol(table, sn, device: str, supernet: str | Path | None) -> dict[str, Any]:
    """What the plan's latency is a prediction of, and how sure: the statistic `bench` and a user's own
    loop measure (runtime.timing.PREDICTION) where `profile --supernet` calibrated this supernet on this
    LUT, else a layer sum that only orders subnets; `note` says what to run to get the calibrated figure."""
    from fine_deploy.planner.costs import calibration_for
    from fine_deploy.runtime.timing import PREDICTION, Protocol, describe

    cal = calibration_for(table, sn.content_hash)
    sn_opt = "" if supernet is None or str(supernet) == "default" else f" --supernet {supernet}"
    if cal:
        proto = Protocol.from_dict(cal.get("protocol") or PREDICTION.to_dict())
        return {"calibrated": True, "protocol": proto.to_dict(), "description": describe(proto),
                "threads": proto.threads, "fit_median_abs_rel_error": cal.get("median_abs_rel_error"),
                "margin": cal.get("margin_applied", cal.get("margin")), "note": None}
    if table is None:
        note = (f"no LUT measured for {device}: latency is the device profile's roofline, a rough guess; run "
                f"`fine-deploy profile --device {device}{sn_opt}` on the device")
    else:
        note = (f"the LUT has no end-to-end calibration for this supernet: latency is the layer sum, which "
                f"whole models exceed (about 2x on ONNX Runtime CPU); run `fine-deploy profile --device {device}"
                f"{sn_opt}` to calibrate it")
    proto = Protocol.from_dict(table.protocol) if table is not None else PREDICTION
    return {"calibrated": False, "protocol": proto.to_dict(), "description": describe(proto),
            "threads": proto.threads, "fit_median_abs_rel_error": None, "margin": None, "note": note}


def memory_model(table, sn, device: str, supernet: str | Path | None) -> dict[str, Any]:
    """What the plan's memory is: bare tensor bytes + the profile's runtime overhead, or (where `profile
    --supernet` measured this supernet's exports on this LUT's machine) the fit of the ΔRSS `bench` reports."""
    from fine_deploy.planner.costs import calibration_for

    mem = (calibration_for(table, sn.content_hash) or {}).get("memory")
    if mem:
        return {"calibrated": True, "measure": mem.get("measure"), "coefficients": mem["coefficients"],
                "fit_median_abs_rel_error": mem.get("median_abs_rel_error"), "margin": mem.get("margin_applied"),
                "note": None}
    sn_opt = "" if supernet is None or str(supernet) == "default" else f" --supernet {supernet}"
    return {"calibrated": False, "measure": None, "coefficients": None, "fit_median_abs_rel_error": None,
            "margin": None, "note": "memory is the bare tensor bytes plus the runtime's own; a runtime holds more "
                                    f"(pre-packed weights, arenas): `fine-deploy profile --device {device}{sn_opt}` "
                                    "measures it" if device == "host" else None}


def _min_feasible(space: Space, budget: Budget) -> str:
    """The smallest budget that would work, each relaxed alone with the other limits kept."""
    lim = budget.limits()
    hints = []
    s = solve(space, "memory", Limits(lim.latency_s, None, lim.loss))
    if s.ok:
        need = budget.memory_to_shown(s.evaluation.memory_bytes)
        cap_note = ""
        if need > budget.mem_bytes and budget.mem_asked_bytes is not None and need <= budget.mem_asked_bytes:
            cap_note = " (more than the device's usable memory)"
        hints.append(f"the smallest feasible --mem is {round_up_bytes(need)} ({int(math.ceil(need))} bytes){cap_note}")
    if lim.latency_s is not None:
        s = solve(space, "latency", Limits(None, lim.memory_bytes, lim.loss))
        if s.ok:
            need = budget.forward_to_shown(s.evaluation.latency_s)
            per = " per image" if budget.per_image else ""
            hints.append(f"the smallest feasible --latency is {round_up_seconds(need)}{per} ({need:.6g} s)")
    if lim.loss is not None:
        s = solve(space, "loss", Limits(lim.latency_s, lim.memory_bytes, None))
        if s.ok:
            hints.append(f"the smallest feasible --max-loss is {s.evaluation.loss + budget.loss_offset:.6g}")
    if not hints:
        s = solve(space, "memory")
        least = budget.memory_to_shown(s.evaluation.memory_bytes)
        return (f"even alone, the smallest subnet needs {round_up_bytes(least)}; "
                "relax every budget") if s.ok else "the supernet has no feasible subnet"
    return "; ".join(hints)


def _binding(space: Space, sol: Solution, budget: Budget, objective: str) -> str | None:
    ev = sol.evaluation
    if objective == "loss":
        best = sum(min(k.loss) for k in space.knobs)  # every knob at its best value
        if ev.loss <= best + 1e-12:
            return None  # nothing was given up
    slack = {}
    if budget.mem_bytes is not None:
        slack["memory"] = (budget.mem_bytes - budget.memory_to_shown(ev.memory_bytes)) / budget.mem_bytes
    if budget.latency_s is not None and objective != "latency":
        slack["latency"] = (budget.latency_s - ev.latency_s) / budget.latency_s
    if budget.max_loss is not None and objective == "latency":
        slack["quality"] = (budget.max_loss - ev.loss) / budget.max_loss if budget.max_loss > 0 else 0.0
    return min(slack, key=lambda k: (slack[k], k)) if slack else None


def make_plan(sn, space: Space, sol: Solution, budget: Budget, device: dict[str, Any], quality: dict[str, Any],
              objective: str, supernet_path: str, inputs: dict[str, Any], cost: dict[str, Any]) -> Plan:
    from fine_deploy.planner.explain import explain_rows

    ev = sol.evaluation
    values = sol.values
    ranks = {k.target: values[k.name] for k in space.knobs if k.kind == "rank"}
    prec = precision_map(space, sol)
    widths = {k.target: values[k.name] for k in space.knobs if k.kind == "width"}
    depth = values.get("depth")
    predicted = {
        "latency_s": _r(ev.latency_s),
        "latency_per_image_s": _r(budget.forward_to_shown(ev.latency_s)) if budget.per_image else None,
        "memory_bytes": int(math.ceil(budget.memory_to_shown(ev.memory_bytes))),
        "memory_parts": {k: _r(v) for k, v in ev.parts.items()},
        "quality_loss": _r(ev.loss + budget.loss_offset),
        "quality": {**quality, "estimate": quality_estimate(quality, ev.loss + budget.loss_offset, prec)},
        "cost_model": cost,
    }
    if budget.pipeline is not None:
        predicted["denoiser_memory_bytes"] = int(math.ceil(ev.memory_bytes))
        predicted["pipeline"] = budget.pipeline.to_json(ev.memory_bytes, ev.latency_s,
                                                        budget.steps if budget.per_image else None, budget.batch)
    solver = {k: (_r(v) if isinstance(v, float) else v) for k, v in sol.figures.items()}
    return Plan(
        supernet={"path": supernet_path, "sha256": sn.content_hash, "backbone": sn.spec.backbone},
        subnet={"ranks": ranks, "widths": widths, "depth": depth},
        kernels=dict(sorted(sol.forms.items())),
        precision=prec,
        profile=device,
        budget=budget.to_json(),
        inputs=inputs,
        predicted=predicted,
        binding=_binding(space, sol, budget, objective),
        solver={**solver, "mode": "fastest under --max-loss" if objective == "latency" else "best quality"},
        explain=explain_rows(space, sol, budget.limits(), objective),
    )


def plan(
    device: str,
    mem: str | int | None = None,
    *,
    latency: str | float | None = None,
    steps: int | None = None,
    batch: int = 1,
    resolution: int | None = None,
    max_loss: float | None = None,
    supernet: str | Path | None = None,
    offload: str = "none",
    lut: str | Path | None = None,
    output: str | Path | None = None,
    as_json: bool = False,
    pareto: str | Path | None = None,
    profiles: str | Path | None = None,
    show: bool = True,
    precision: str = AUTO,
) -> Plan:
    """Plan a subnet of `supernet` for `device` under the budgets; write it to `output` (atomically).

    `precision`: "auto" chooses each type's precision among the device's (precision_candidates), a name pins
    every layer to it."""
    from fine_deploy.planner.build import build_space
    from fine_deploy.planner.costs import CostModel
    from fine_deploy.planner.sensitivity import sensitivity_table
    from fine_deploy.supernet.core import load_supernet
    from fine_deploy.validate import output_dir, output_file

    t0 = time.perf_counter()
    # every input is checked before the host probe, the sensitivity proxy or the solver run
    output_file(output, "-o", "plan.json")
    output_dir(pareto, "--pareto")
    if mem is not None:
        parse_bytes(mem)
    if latency is not None:
        parse_seconds(latency)
    prof, table, device_rec = load_device(device, lut, profiles)
    precision_candidates(prof, precision)  # a precision the device does not run is refused before any work
    sn = load_supernet(supernet)
    candidates, left_out = precision_candidates(prof, precision, sn)
    res = sn.adapter.check_resolution(sn.spec.config, resolution)
    bases = precision_bases(candidates)
    cost = CostModel.build(prof, table, bases[0][0])
    pipe = pipeline_cost(sn, cost, res, offload)
    budget = make_budget(prof, mem, latency, steps, batch, max_loss, pipe)
    sens = sensitivity_table(sn, progress=show)
    quality = quality_record(sn, sens)
    if candidates != ("fp32",):
        from fine_deploy.planner.sensitivity import precision_losses

        sens = {**sens, "precision": precision_losses(sn, sens, candidates, progress=show)}
        quality["precision"] = {k: v for k, v in sens["precision"].items() if k != "losses"}
    budget.loss_offset = float(quality.get("conversion_error") or 0.0)
    objective = "latency" if max_loss is not None else "loss"
    best = None
    tried = []
    for base, layer_precs in bases:  # one exact MILP per base precision; the best of them is the optimum
        c = cost if base == cost.dtype else CostModel.build(prof, table, base)
        sp = build_space(sn, c, sens, batch=batch, resolution=res, precisions=layer_precs)
        s = solve(sp, objective, budget.limits())
        key = _rank(s, objective)
        tried.append(f"{'+'.join(layer_precs)} on {base}: " + (
            f"loss {s.evaluation.loss + budget.loss_offset:.3g}, {format_seconds(s.evaluation.latency_s)}"
            if s.ok else s.status))
        # with none feasible, the last base (the narrowest a device lists last) answers with the smallest budgets
        if best is None or key < best[0] or key[0] == best[0][0] == 1:
            best = (key, c, sp, s)
    _, cost, space, sol = best
    name = "default" if supernet is None or str(supernet) == "default" else str(supernet)
    if sol.status == "infeasible":
        raise FineDeployError(
            f"no subnet of supernet {name} fits {prof.name} within the given budgets: {_min_feasible(space, budget)}"
        )
    if not sol.ok:
        raise FineDeployError(f"the MILP solver stopped with status {sol.status!r}; report this with the command line")
    cost_rec = {**cost.describe(), "end_to_end_calibration": space.notes["end_to_end_calibration"]}
    cost_rec["precision"] = precision_record(cost, table, precision, candidates, left_out, bases)
    cost_rec["latency_protocol"] = latency_protocol(table, sn, prof.name, supernet)
    cost_rec["memory_model"] = memory_model(table, sn, prof.name, supernet)
    p = make_plan(sn, space, sol, budget, device_rec, quality, objective, name,
                  {"batch": batch, "resolution": res, "dtype": cost.dtype}, cost_rec)
    if len(bases) > 1:
        p.solver["precision_bases"] = tried
        for row in p.explain:
            if row["knob"] == "precision":  # the base is chosen across spaces, not inside one
                row["why"] = "best of the bases, each solved exactly: " + "; ".join(tried)
    if output is not None:
        p.save(output)
    elapsed = time.perf_counter() - t0
    if pareto is not None:
        from fine_deploy.planner.pareto import write_pareto

        write_pareto(space, budget, Path(pareto), title=f"{name} on {prof.name}")
    if show:
        if as_json:
            print(canonical_json(p.to_json()), end="")
        else:
            from fine_deploy.planner.explain import print_plan

            print_plan(p, budget, elapsed)
    return p


def _rank(sol: Solution, objective: str) -> tuple:
    """Order of solutions of the per-base spaces: feasible first, then the objective, then the secondary."""
    if not sol.ok:
        return (1, 0.0, 0.0)
    ev = sol.evaluation
    fig = {"loss": ev.loss, "latency": ev.latency_s, "memory": ev.memory_bytes}
    second = {"loss": "latency", "latency": "loss", "memory": "latency"}[objective]
    return (0, float(f"{fig[objective]:.12g}"), float(f"{fig[second]:.12g}"))


def precision_record(cost, table, asked: str, candidates: tuple[str, ...], left_out: dict[str, str],
                     bases) -> dict[str, Any]:
    """plan.json's predicted.cost_model.precision: what was offered and what auto left out (precision_candidates),
    and which latency figures are measured and which are roofline estimates, per precision."""
    from fine_deploy.cost.precisions import compute_dtype

    measured = table is not None
    per = {}
    for p in candidates:
        cd = compute_dtype(p)
        if measured and cd == "fp32":
            how = "measured (LUT)"
        elif cd not in cost.profile.peak_flops:
            how = (f"no {cd} rate in the {cost.profile.name} profile: priced at the fp32 figure, no speed-up "
                   "assumed (not measured)")
        elif measured:
            how = f"LUT fp32 figure x the profile's spec-roofline {cd}/fp32 ratio (estimate)"
        else:
            how = f"spec roofline at the profile's {cd} peak (estimate)"
        per[p] = how
    return {"asked": asked, "candidates": list(candidates), "left_out": left_out,
            "bases": [{"*": b, "layers": list(lp)} for b, lp in bases],
            "latency": per, "weight_bytes": "cost.precisions.WEIGHT_BITS per stored weight",
            "activation_bytes": "the compute dtype's width where the profile states a rate for it (a palette "
                                "computes in fp16), else fp32"}


def full_model_figures(space: Space) -> dict[str, float]:
    """Latency and memory of the full supernet (every knob at its full value), for comparisons."""
    from fine_deploy.planner.space import best_forms

    values = space.full_assignment()
    ev = evaluate(space, values, best_forms(space, values))
    return {"latency_s": ev.latency_s, "memory_bytes": ev.memory_bytes}


__all__ = ["plan", "make_budget", "Budget", "format_bytes", "format_seconds"]
