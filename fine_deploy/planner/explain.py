"""Why each knob got its value: a printable record per knob (Torch-Pruning style) and the rich table.

For a knob below its best value, "why" names the limit that moving it one step up would break (and by
how much); under --max-loss, a knob above its cheapest value says what one step down would cost in
quality. Costs per knob are those of the layers it acts on, as priced in the plan.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fine_deploy.console import wide_console
from fine_deploy.planner.milp import Limits, Solution
from fine_deploy.planner.space import Space, evaluate, layer_exists, layer_option, precision_name
from fine_deploy.planner.units import format_bytes, format_seconds


def _moved(space: Space, sol: Solution, knob: str, value: int):
    """Evaluate the plan with one knob moved; layers it touches keep their form when still offered."""
    values = {**sol.values, knob: value}
    forms = {}
    for layer in space.layers:
        if not layer_exists(layer, values):
            continue
        form = sol.forms.get(layer.name, "dense")
        forms[layer.name] = form if layer_option(layer, values, form) else "dense"
    return evaluate(space, values, forms)


def _breaks(ev, limits: Limits) -> list[str]:
    out = []
    if limits.memory_bytes is not None and ev.memory_bytes > limits.memory_bytes:
        out.append(f"memory (+{format_bytes(ev.memory_bytes - limits.memory_bytes)} over)")
    if limits.latency_s is not None and ev.latency_s > limits.latency_s:
        out.append(f"latency (+{format_seconds(ev.latency_s - limits.latency_s)} over)")
    if limits.loss is not None and ev.loss > limits.loss:
        out.append(f"quality (loss +{ev.loss - limits.loss:.3g} over --max-loss)")
    return out


def _why(space: Space, sol: Solution, knob, limits: Limits, objective: str) -> str:
    value = sol.values[knob.name]
    shown = _shown(knob)
    i = knob.options.index(value)
    best_i = min(range(len(knob.options)), key=lambda j: (knob.loss[j], -j))
    if objective == "latency":
        if i == 0:
            return "cheapest value"
        down = _moved(space, sol, knob.name, knob.options[i - 1])
        broken = _breaks(down, limits)
        if broken:
            return f"{shown(knob.options[i - 1])} would break {', '.join(broken)}"
        gain = sol.evaluation.latency_s - down.latency_s
        if gain <= 0:
            return f"{shown(knob.options[i - 1])} is no faster"
        return "a joint trade-off: lower values cost more quality elsewhere"
    if i == best_i:
        return "best value; nothing binds"
    up = knob.options[i + 1] if i + 1 < len(knob.options) else knob.options[best_i]
    broken = _breaks(_moved(space, sol, knob.name, up), limits)
    if broken:
        return f"{shown(up)} would break {', '.join(broken)}"
    return "a joint trade-off: raising it forces other knobs down"


def _shown(knob):
    """How a knob's value reads: a precision knob's values are codes in the space, shown by name."""
    return precision_name if knob.kind == "precision" else (lambda v: v)


def explain_rows(space: Space, sol: Solution, limits: Limits, objective: str) -> list[dict[str, Any]]:
    rows = []
    for knob in space.knobs:
        i = knob.options.index(sol.values[knob.name])
        lat = nbytes = 0.0
        forms: Counter = Counter()
        precs: Counter = Counter()
        bases = set()
        for layer in space.layers:
            if knob.name not in layer.knobs or layer.name not in sol.forms:
                continue
            o = layer_option(layer, sol.values, sol.forms[layer.name])
            lat += o.latency_s
            nbytes += o.weight_bytes
            forms[o.form] += 1
            precs[o.precision] += 1
            if o.basis:
                bases.add(o.basis)
        nbytes += sum(space.bases[b] for b in bases) + knob.bytes[i]
        lat += knob.latency_s[i]
        shown = _shown(knob)
        rows.append({
            "knob": knob.name,
            "value": shown(sol.values[knob.name]),
            "options": [shown(knob.options[0]), shown(knob.options[-1]), len(knob.options)],
            "loss": float(f"{knob.loss[i]:.9g}"),
            "latency_s": float(f"{lat:.9g}"),
            "memory_bytes": int(round(nbytes)),
            "forms": dict(sorted(forms.items())),
            "precision": dict(sorted(precs.items())),
            "why": _why(space, sol, knob, limits, objective),
        })
    return rows


def quality_line(loss: float, q: dict[str, Any]) -> str:
    """The plan's quality line; it names what the loss is relative to, so "loss 0" is never a claim that a
    model equals its source when that was not measured."""
    what = f"{q['metric']}{', PROXY' if q['proxy'] else ''}"
    ref = q.get("reference")
    if ref == "source":
        conv = q["conversion_error"]
        tail = (f"; full model vs source {conv:.2g} (exact top options)" if q.get("exact_top")
                else f"; includes the full model's conversion error {conv:.3g}")
        return (f"quality  loss {loss:.4g} vs the source model ({what}{tail}; "
                f"factors alone {q['factors_only_error']:.3g})")
    if ref == "full supernet":
        return f"quality  loss {loss:.4g} vs the supernet's full model, NOT the source model ({what}): {q['note']}"
    est = q.get("estimate")
    if est:
        full = q.get("full_model") or {}
        fd = (f"; the full model's Fréchet distance is {full['frechet_distance']:.3g} ({full['frechet_features']})"
              if "frechet_distance" in full else "")
        return (f"quality  held-out denoising loss {est['full_model']:.4g} → {est['subnet']:.4g} "
                f"(+{100 * est['relative_increase']:.0f}%), estimated: the sum of single-knob increases of the "
                f"sensitivity table{'; its precision part is a scaled proxy' if est.get('proxy_part') else ''}{fd}")
    if q.get("proxy"):
        return f"quality  loss {loss:.4g} ({what}: a proxy, not image quality; {q.get('note', '')})"
    return f"quality  loss {loss:.4g} ({what})"


def print_plan(plan, budget, elapsed_s: float) -> None:
    from rich.table import Table

    console = wide_console()
    pr = plan.predicted
    table = Table(title=f"plan for {plan.profile['resolved']} ({plan.supernet['path']} supernet)")
    for col in ("knob", "value", "options", "loss", "latency", "memory", "forms", "precision", "why"):
        table.add_column(col, justify="right" if col in ("value", "loss", "latency", "memory") else "left")
    for r in plan.explain:
        lo, hi, n = r["options"]
        forms = ", ".join(f"{c}×{f}" for f, c in r["forms"].items()) or "-"
        precs = ", ".join(f"{c}×{p}" for p, c in (r.get("precision") or {}).items()) or "-"
        table.add_row(r["knob"], str(r["value"]), f"{lo}..{hi} ({n})", f"{r['loss']:.3g}",
                      format_seconds(r["latency_s"]), format_bytes(r["memory_bytes"]), forms, precs, r["why"])
    console.print(table)
    lat = pr["latency_per_image_s"] if budget.per_image else pr["latency_s"]
    per = f"per image ({budget.steps} steps, batch {budget.batch})" if budget.per_image else "per forward"
    lat_b = f" / budget {format_seconds(budget.latency_asked_s)}" if budget.latency_asked_s is not None else ""
    cap = " (capped at the device's usable memory)" if budget.mem_capped else ""
    q = pr["quality"]
    proto = (pr.get("cost_model") or {}).get("latency_protocol") or {}
    how = f" ({proto['description']})" if proto.get("calibrated") else ""
    console.print(f"latency  {format_seconds(lat)} {per}{lat_b}{how}")
    if proto.get("note"):
        console.print(f"[yellow]note[/]     {proto['note']}")
    mem = (pr.get("cost_model") or {}).get("memory_model") or {}
    mhow = " (fit of measured ΔRSS + the runtime's own)" if mem.get("calibrated") else ""
    console.print(f"memory   {format_bytes(pr['memory_bytes'])} / budget {format_bytes(budget.mem_bytes)}{cap}{mhow}")
    if pr.get("pipeline"):
        _print_pipeline(console, pr["pipeline"], pr["denoiser_memory_bytes"])
    console.print(quality_line(pr["quality_loss"], q))
    s = plan.solver
    console.print(f"binding  {plan.binding or 'none'}; solver {s['status']}, gap {s.get('mip_gap', 0):.2g}, "
                  f"{s['binaries']} binaries; planned in {elapsed_s:.2f} s")


def _print_pipeline(console, pipe: dict[str, Any], denoiser_bytes: int) -> None:
    """Each component's share: the knobs change only the denoiser's."""
    share = pipe["memory_share"]
    parts = [f"denoiser {format_bytes(denoiser_bytes)} ({100 * share['denoiser']:.0f}%)"]
    for name, c in pipe["components"].items():
        parts.append(f"{name} {format_bytes(c['weight_bytes'])} ({100 * share[name]:.0f}%, "
                     f"{format_seconds(c['latency_s'])} ×{c['calls_per_image']:g})")
    if "activations" in share:
        parts.append(f"their activations ({100 * share['activations']:.0f}%)")
    console.print(f"pipeline {pipe['class']}, offload {pipe['offload']}: " + ", ".join(parts))
