"""How far a converted supernet is from the model it came from, measured on that model's outputs.

`convert` keeps the source model in memory while it measures, so every figure here is against the
user's own model, never against the supernet's rebuilt full model:

- per type: the relative weight error of the factors at their largest rank (the fit), and the relative
  output error of the model with only that type folded from the factors (every other layer exact);
- the factors-only model: every type at its factor rank, what a plan gets when it keeps no source weight;
- the full model: every knob at its top option, which a plan with nothing binding exports. With the exact
  top option (`TypeSpec.source_top`) it is the source model up to float rounding.

Output error is relative MSE, ||y − y_src||² / ||y_src||² (the planner's sensitivity unit: squared
errors of independent perturbations add), with its square root (relative L2) and the max-abs relative
error that export's parity uses beside it. Inputs are the adapter's fixed random inputs, or, with
`--calib`, the calibration images noised at those timesteps.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from fine_deploy.supernet.core import Supernet, layer_weight

METRIC = "relative_output_mse"
BATCH = 4
SEED = 1234
BUDGET_S = 60.0  # above this the measurement drops to the adapter's proxy resolution and batch 1


def _noised(x0: torch.Tensor, t: torch.Tensor, seed: int) -> torch.Tensor:
    """x_t of DDPM's default linear schedule (1000 steps, β 1e-4..0.02) at integer timesteps t."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t.long().clamp(0, 999)].float().view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def measurement_inputs(sn: Supernet, model: nn.Module, calib: torch.Tensor | None = None, *, batch: int = BATCH,
                       seed: int = SEED, budget_s: float = BUDGET_S) -> tuple[dict[str, torch.Tensor], dict]:
    """The fixed inputs of the measurement and how they were made (recorded with the figures)."""
    ad, cfg = sn.adapter, sn.spec.config
    res = None
    probe = ad.example_inputs(cfg, 1, None, seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        ad.run(model, probe)
    forward_s = time.perf_counter() - t0
    if forward_s * batch * (len(sn.types) + 2) > budget_s:  # published sizes: keep convert's extra time bounded
        res, batch = ad.proxy_resolution(cfg), 1
    inputs = ad.example_inputs(cfg, batch, res, seed)
    desc: dict[str, Any] = {"batch": batch, "seed": seed, "resolution": res, "data": "random"}
    if calib is not None:
        x = inputs[ad.sample_input]
        if list(calib.shape[1:]) == list(x.shape[1:]):
            n = min(len(calib), max(batch, 1))
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(calib), generator=g)[:n]
            inputs = {k: (v[:n] if v.ndim and v.shape[0] == x.shape[0] else v) for k, v in inputs.items()}
            t = inputs["timestep"]
            inputs[ad.sample_input] = _noised(calib[pick].float(), t.expand(n) if t.ndim == 0 else t, seed)
            desc.update(batch=n, data="calibration images, noised at the inputs' timesteps")
        else:
            desc["data"] = (f"random (calibration images {list(calib.shape[1:])} do not match the model's "
                            f"{ad.sample_input} {list(x.shape[1:])})")
    return inputs, desc


def output_error(y: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    y, ref = y.double(), ref.double()
    mse = float(((y - ref) ** 2).sum()) / max(float((ref**2).sum()), 1e-300)
    peak = max(float(ref.abs().max()), 1e-12)
    return {"rel_mse": mse, "rel_l2": math.sqrt(mse), "rel_max": float((y - ref).abs().max()) / peak}


@torch.no_grad()
def conversion_record(sn: Supernet, source: nn.Module, calib: torch.Tensor | None = None, *,
                      progress: bool = True) -> dict[str, Any]:
    """convert's figures of `sn` against the model it was converted from (layout: the module docstring)."""
    ad = sn.adapter
    inputs, desc = measurement_inputs(sn, source, calib)
    y_src = ad.run(source, inputs)
    model = sn.subnet(sn.full_config())
    full = output_error(ad.run(model, inputs), y_src)
    types: dict[str, Any] = {}
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("conversion error vs the source model", total=len(sn.types))
        for t in sn.types:
            saved = {}
            for m in t.matrices:
                W = layer_weight(sn.tensors, t, ((m["name"], 1.0),), t.factor_rank)
                for p in m["parts"]:
                    a, b = p["rows"]
                    w = model.get_submodule(p["module"]).weight
                    saved[p["module"]] = w.detach().clone()
                    w.copy_(W[a:b].reshape(w.shape))
            types[t.name] = {"factor_rank": t.factor_rank, "exact_top": t.source_top or t.factor_rank >= t.layers
                             * min(t.m1, t.m2), "weight_error": t.reconstruction_error.get(str(t.factor_rank)),
                             "output": output_error(ad.run(model, inputs), y_src)}
            for name, w in saved.items():  # back to the top option before the next type
                model.get_submodule(name).weight.copy_(w)
            bar.advance(task)
        # every type at its factor rank at once: the model without any source weight
        for t in sn.types:
            for m in t.matrices:
                W = layer_weight(sn.tensors, t, ((m["name"], 1.0),), t.factor_rank)
                for p in m["parts"]:
                    a, b = p["rows"]
                    w = model.get_submodule(p["module"]).weight
                    w.copy_(W[a:b].reshape(w.shape))
        factors_only = output_error(ad.run(model, inputs), y_src)
    return {"metric": METRIC, "reference": "source", "inputs": desc, "full_model": full,
            "factors_only": factors_only, "types": types}


def conversion_lines(rec: dict[str, Any]) -> list[str]:
    """What `convert` prints: the full model and every type against the source model."""
    if not rec:
        return []
    full, fo = rec["full_model"], rec["factors_only"]
    when = f", measured {rec['measured']}" if rec.get("measured") else ""
    out = [f"conversion error vs the source model ({rec['inputs']['data']} inputs, batch {rec['inputs']['batch']}"
           f"{when}):",
           f"  full model (a plan with nothing binding): rel. L2 {full['rel_l2']:.2e}, max rel. {full['rel_max']:.2e}",
           f"  factors only (every type at its factor rank): rel. L2 {fo['rel_l2']:.2e}, "
           f"max rel. {fo['rel_max']:.2e}"]
    for name, t in rec["types"].items():
        top = "exact top option" if t["exact_top"] else "NO exact top option"
        we = t["weight_error"]
        out.append(f"  {name}: factor rank {t['factor_rank']}, weight error {we if we is None else f'{we:.2e}'}, "
                   f"output rel. L2 {t['output']['rel_l2']:.2e} ({top})")
    return out
