"""inspect: what a supernet holds — types, ranks, widths, depth, parameter counts, fit error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fine_deploy.console import wide_console
from fine_deploy.supernet.core import Supernet, load_supernet


def summary(sn: Supernet) -> dict[str, Any]:
    spec = sn.spec
    types = []
    for t in spec.types:
        types.append(
            {
                "name": t.name,
                "kind": t.kind,
                "layers": t.layers,
                "shape": [t.m1, t.m2],
                "kernel_size": t.kernel_size,
                "max_rank": t.max_rank,
                "factor_rank": t.factor_rank,
                "source_top": t.source_top,
                "rank_options": t.rank_options,
                "params": {str(r): t.params_at(r) for r in t.rank_options},
                "reconstruction_error": t.reconstruction_error,
            }
        )
    dense_params = sum(sn.tensors[f"dense.{n}"].numel() for n in spec.dense)
    typed_dense = sum(t.params_at(t.max_rank)["dense"] for t in spec.types)
    shared_full = sum(t.params_at(t.factor_rank)["shared_basis"] for t in spec.types)
    return {
        "schema": 1,
        "path": str(sn.path) if sn.path else None,
        "content_hash": sn.content_hash,
        "backbone": spec.backbone,
        "types": types,
        "dense_parameters": {"count": len(spec.dense), "params": dense_params},
        "totals": {
            "params_dense_model": typed_dense + dense_params,
            "params_supernet_stored": sum(v.numel() for v in sn.tensors.values()),
            "params_typed_dense": typed_dense,
            "params_typed_shared_basis_at_max_rank": shared_full,
        },
        "widths": {"knobs": spec.widths.get("knobs", {}), "criterion": spec.widths.get("criterion")},
        "depth": spec.depth,
        "sensitivity": spec.sensitivity or {},
        "conversion": spec.conversion or {},
        # which knobs this backbone class offers, and why not the others
        "knobs": sn.adapter.knob_notes(),
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "range": i.range}
                   for i in sn.adapter.inputs(spec.config, tokens=sn.text_tokens)],
        "objective": sn.adapter.objective,
        "pipeline": _pipeline(sn),
    }


def _pipeline(sn: Supernet) -> dict[str, Any]:
    """The pipeline around the denoiser: the components carried in this supernet (with their parameters and
    bytes on disk), or for a denoiser alone the stock class and the components it would need."""
    if not sn.components:
        return {"class": sn.adapter.pipeline, "components": list(sn.adapter.components), "carried": {}}
    carried = {}
    for name, c in sn.components.items():
        files = sn.component_dir(name)
        carried[name] = {"class": c["class"], "role": c["role"], "params": c.get("params"),
                         "bytes": sum((files / f).stat().st_size for f in c["files"] if (files / f).is_file()),
                         "flops_per_call": c.get("flops")}
    return {"class": sn.spec.pipeline["class"], "components": list(carried), "carried": carried,
            "text_tokens": sn.text_tokens, "dropped": sn.spec.pipeline.get("dropped") or []}


def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def render(s: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]{s['backbone']}[/] supernet {s['path'] or ''} (hash {s['content_hash'][:12]})")
    tab = Table(title="types: W_l = U_t·diag(σ_l)·V_tᵀ, at the smallest / middle / largest rank option")
    for col in ("type", "kind", "L", "m1×m2", "n opts", "ranks", "dense", "shared-basis", "rel. err"):
        tab.add_column(col, no_wrap=True)
    for t in s["types"]:
        opts = t["rank_options"]
        shown = [opts[0], opts[len(opts) // 2], opts[-1]] if len(opts) > 2 else opts
        tab.add_row(
            t["name"], t["kind"], str(t["layers"]), f"{t['shape'][0]}×{t['shape'][1]}", str(len(opts)),
            "/".join(str(r) for r in shown),
            _fmt(t["params"][str(opts[-1])]["dense"]),
            "/".join(_fmt(t["params"][str(r)].get("shared_basis", t["params"][str(r)]["dense"])) for r in shown)
            + (" (top: source, dense)" if t["source_top"] else ""),
            "/".join(f"{t['reconstruction_error'].get(str(r), float('nan')):.2g}" for r in shown),
        )
    console.print(tab)
    tot = s["totals"]
    console.print(
        f"dense model {_fmt(tot['params_dense_model'])} params; stored {_fmt(tot['params_supernet_stored'])}; "
        f"typed weights {_fmt(tot['params_typed_dense'])} dense vs "
        f"{_fmt(tot['params_typed_shared_basis_at_max_rank'])} shared-basis at the largest factor rank; "
        f"{s['dense_parameters']['count']} dense tensors ({_fmt(s['dense_parameters']['params'])})"
    )
    knobs = s["widths"]["knobs"]
    console.print(
        "widths: " + (", ".join(f"{k} {v}" for k, v in knobs.items()) if knobs else "none")
        + f"  | depth: {s['depth'].get('options') or 'fixed'}"
        + f"  | sensitivity: {'measured' if s['sensitivity'] else 'not measured yet'}"
    )
    from fine_deploy.supernet.fidelity import conversion_lines

    for line in conversion_lines(s["conversion"]):
        console.print(line)
    for knob, why in s["knobs"].items():
        console.print(f"  {knob}: {why}")
    console.print("inputs: " + ", ".join(f"{i['name']} {i['shape']}" for i in s["inputs"])
                  + f"  | objective: {s['objective']}")
    pipe = s["pipeline"]
    if pipe["carried"]:
        tab = Table(title=f"{pipe['class']}: components carried unchanged beside the denoiser")
        for col in ("component", "class", "role", "params", "bytes", "FLOPs/call"):
            tab.add_column(col, no_wrap=True)
        for name, c in pipe["carried"].items():
            tab.add_row(name, c["class"], c["role"], _fmt(c["params"]) if c["params"] else "-",
                        _fmt(c["bytes"]) + "B", _fmt(c["flops_per_call"]) if c["flops_per_call"] else "-")
        console.print(tab)
        if pipe["dropped"]:
            console.print(f"not carried (optional in {pipe['class']}): {', '.join(pipe['dropped'])}")


def inspect(supernet: str | Path | None = None, *, as_json: bool = False) -> dict[str, Any]:
    s = summary(load_supernet(supernet))
    if as_json:
        print(json.dumps(s, indent=2, sort_keys=True))
    else:
        render(s, wide_console())
    return s
