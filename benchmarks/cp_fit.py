"""Shared-factor (CP / PARAFAC) fit: wall time and error vs rank, against per-layer SVD at equal parameters.

Tensors: "structured" = a shared decaying spectrum + a per-layer low-rank part + 1% noise (what trained
layers of one type look like more than noise does), "gaussian" = pure noise (speed only: nothing to share).
Timing protocol: one fit per case, wall and process CPU time, torch at 2 threads; the machine is shared,
so compare CPU time across runs and repeat before trusting a wall figure.

    python benchmarks/cp_fit.py [--large] [--json benchmarks/results/cp_fit.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from provenance import provenance
from rich.console import Console
from rich.table import Table

from fine_deploy.supernet.cp import fit_shared_factors, per_layer_svd, prefix_errors


def structured(L: int, m1: int, m2: int, shared_rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, V = torch.randn(m1, shared_rank, generator=g), torch.randn(m2, shared_rank, generator=g)
    decay = torch.exp(-torch.arange(shared_rank) / (shared_rank / 4))
    S = decay * (1 + 0.3 * torch.randn(L, shared_rank, generator=g))
    W = torch.einsum("ir,lr,jr->lij", U, S, V)
    own = torch.einsum("lir,ljr->lij", torch.randn(L, m1, 4, generator=g), torch.randn(L, m2, 4, generator=g))
    W = W + 0.2 * own * W.norm() / own.norm()
    return W + 0.01 * torch.randn(W.shape, generator=g) * W.norm() / W.numel() ** 0.5


def case(name: str, W: torch.Tensor, R: int, ranks: list[int]) -> dict:
    L, m1, m2 = W.shape
    t, c = time.perf_counter(), time.process_time()
    f = fit_shared_factors(W, R)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    errs = prefix_errors(W, f, ranks)
    rows = []
    for r, e in zip(ranks, errs, strict=True):
        shared = r * (m1 + m2) + L * r
        k = max(1, shared // (L * (m1 + m2)))
        svd = float((per_layer_svd(W, min(k, m1, m2)) - W).norm() / W.norm())
        rows.append({"rank": r, "shared_params": shared, "err": e, "per_layer_svd_rank": k, "per_layer_svd_err": svd})
    return {"case": name, "L": L, "m1": m1, "m2": m2, "R": R, "fit_wall_s": wall, "fit_cpu_s": cpu, "ranks": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="add the DiT-XL-sized fc1 case (minutes)")
    ap.add_argument("--json", default="benchmarks/results/cp_fit.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cases = [
        ("structured 12x256x1024", structured(12, 256, 1024, 48), 64, [8, 16, 32, 64]),
        ("structured 28x288x1152", structured(28, 288, 1152, 64), 64, [16, 32, 64]),
        ("gaussian 12x256x1024", torch.randn(12, 256, 1024, generator=torch.Generator().manual_seed(0)), 64,
         [16, 32, 64]),
    ]
    if args.large:
        cases.append(("gaussian 28x1152x4608", torch.randn(28, 1152, 4608, generator=torch.Generator().manual_seed(0)),
                      256, [32, 64, 128, 256]))
    results = [case(*c) for c in cases]
    tab = Table(title="shared-factor fit vs per-layer SVD at equal parameter count")
    for col in ("case", "R", "fit wall s", "fit cpu s", "rank", "params", "CP rel. err", "per-layer SVD err (k)"):
        tab.add_column(col)
    for res in results:
        for i, r in enumerate(res["ranks"]):
            first = (res["case"], str(res["R"]), f"{res['fit_wall_s']:.1f}", f"{res['fit_cpu_s']:.1f}")
            head = first if i == 0 else ("",) * 4
            tab.add_row(*head, str(r["rank"]), str(r["shared_params"]), f"{r['err']:.4f}",
                        f"{r['per_layer_svd_err']:.4f} ({r['per_layer_svd_rank']})")
    Console(width=140).print(tab)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    record = {"schema": 1, "benchmark": "cp_fit", "provenance": provenance(args), "cases": results}
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
