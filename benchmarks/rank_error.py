"""Error vs rank per type for converted tiny DiT and UNet2DModel backbones.

For each type and rank option: the relative reconstruction error of the stacked weights, the
relative output error of the whole model with only that type truncated, and per-layer SVD (the
baseline FINE must beat) at the same parameter count. Also the whole-model output error at uniform
rank fractions. Prints tables, writes JSON (default benchmarks/results/rank_error.json).

    python benchmarks/rank_error.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import DIT_CFG, UNET_CFG, dit_inputs, make_dit, make_unet, run, unet_inputs  # noqa: E402
from provenance import provenance  # noqa: E402

from fine_deploy.supernet.convert import model_to_supernet, stacked_weights  # noqa: E402
from fine_deploy.supernet.core import SubnetConfig  # noqa: E402
from fine_deploy.supernet.cp import per_layer_svd  # noqa: E402
from fine_deploy.supernet.types import find_types  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bench_backbone(name: str, model, inputs, console: Console, supernets: dict) -> dict:
    t0 = time.perf_counter()
    sn = supernets[name] = model_to_supernet(model)
    fit_s = time.perf_counter() - t0
    ref = run(model, inputs)
    wts = {t.name: t for t in find_types(model)}
    rows = []
    tab = Table(title=f"{name}: error vs rank per type (convert took {fit_s:.1f} s)")
    for col in ("type", "L", "m1×m2", "rank", "shared params", "weight err", "per-layer SVD err", "output err"):
        tab.add_column(col)
    for t in sn.types:
        W = stacked_weights(model, wts[t.name])
        for r in t.rank_options:
            shared = t.params_at(r)["shared_basis"]
            # per-layer SVD with the same parameter budget: L·k·(m1+m2) ≤ shared
            k = max(1, shared // (t.layers * (t.m1 + t.m2)))
            svd_err = rel(per_layer_svd(W, min(k, min(t.m1, t.m2))), W)
            out_err = rel(run(sn.subnet(SubnetConfig(ranks={t.name: r})), inputs), ref)
            row = dict(type=t.name, layers=t.layers, m1=t.m1, m2=t.m2, rank=r, shared_params=shared,
                       weight_err=t.reconstruction_error[str(r)], per_layer_svd_rank=k, per_layer_svd_err=svd_err,
                       output_err=out_err)
            rows.append(row)
            tab.add_row(t.name, str(t.layers), f"{t.m1}×{t.m2}", str(r), str(shared), f"{row['weight_err']:.3g}",
                        f"{svd_err:.3g} (k={k})", f"{out_err:.3g}")
    console.print(tab)
    uniform = []
    for frac in (0.125, 0.25, 0.5, 0.75, 1.0):
        ranks = {t.name: max(1, round(t.max_rank * frac)) for t in sn.types}
        uniform.append({"fraction": frac, "output_err": rel(run(sn.subnet(SubnetConfig(ranks=ranks)), inputs), ref)})
    console.print(f"{name} uniform rank fraction → output error: "
                  + ", ".join(f"{u['fraction']}: {u['output_err']:.3g}" for u in uniform))
    return {"convert_seconds": fit_s, "types": rows, "uniform": uniform}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/rank_error.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    console = Console(width=140)
    supernets: dict = {}  # converted in memory here, never saved: their paths are null
    dit = bench_backbone("DiTTransformer2DModel", make_dit(), dit_inputs(), console, supernets)
    unet = bench_backbone("UNet2DModel", make_unet(), unet_inputs(), console, supernets)
    out = {
        "schema": 1,
        "benchmark": "rank_error",
        "provenance": provenance(args, supernets, dit_config=DIT_CFG, unet_config=UNET_CFG),
        "note": "tiny randomly initialised backbones (tests/conftest.py); random weights share little structure",
        "dit": dit,
        "unet": unet,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
