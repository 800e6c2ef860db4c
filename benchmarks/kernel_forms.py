"""End-to-end ONNX Runtime latency and weight bytes of one plan exported in each kernel form.

For a mid-size DiT and UNet subnet (ranks at about half of min(m1, m2)), the same plan is exported
all-dense, all-low-rank, all-shared-basis and with the per-layer choice made from a LUT measured here
(`fine_deploy.cost.profiler.profile` on the subnet's own layer shapes). Each layer takes, among the
forms within MARGIN of its fastest LUT entry, the one with the fewest weight bytes (shared-basis, then
low-rank, then dense): crossovers measured on ONNX Runtime CPU wander between repeats, and a layer
timed alone has its weights hot in cache, which under-rates small weights in the whole model.

Timing: ONNX Runtime CPU, 1 intra-op thread, spinning off, the calling thread's CPU clock, warm-up,
the minimum over rounds x runs, variants interleaved round by round; the whole comparison is
repeated REPEATS times and the spread reported. Target: per-layer <= 1.02 x best uniform.

    python benchmarks/kernel_forms.py [--quick] [--json benchmarks/results/kernel_forms.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from provenance import provenance

from fine_deploy.cost.graphs import LayerChoice
from fine_deploy.cost.profiler import profile
from fine_deploy.cost.trace import layer_shapes
from fine_deploy.export import export, uniform_kernels
from fine_deploy.planner.schema import Plan
from fine_deploy.runtime import SessionOptions, open_session
from fine_deploy.runtime.timing import Protocol, measure_interleaved, run_timer
from fine_deploy.supernet.convert import model_to_supernet
from fine_deploy.supernet.core import SubnetConfig

MARGIN = 0.10  # LUT entries within 10% of the fastest count as equally fast
TARGET = 1.02
FORMS = ("dense", "low_rank", "shared_basis")


def models() -> dict:
    from diffusers import DiTTransformer2DModel, UNet2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4,
                                num_layers=6, sample_size=16, patch_size=2, num_embeds_ada_norm=10,
                                norm_num_groups=1).eval()
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128),
                       layers_per_block=2, norm_num_groups=32, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    return {"dit-256x6": dit, "unet-64-128": unet}


def per_layer_choice(sn, config: SubnetConfig, lut_path: Path, quick: bool) -> tuple[dict[str, str], dict]:
    """Kernel form per layer from a LUT measured on this machine for the subnet's own layer shapes."""
    shapes = layer_shapes(sn, config)
    by_key: dict[str, list[int]] = {}
    for _, s in shapes:
        by_key.setdefault(s.key(), [])
        r = config.ranks[s.group]
        if r not in by_key[s.key()]:
            by_key[s.key()].append(r)
    proto = Protocol(rounds=4 if quick else 8, runs_per_round=10 if quick else 20)
    lut = profile("host", lut_path, shapes=[s for _, s in shapes], ranks=by_key, protocol=proto,
                  calibration_subnets=0, memory_subnets=0, resume=False, show_progress=True)
    kernels, why = {}, {}
    for name, s in shapes:
        r = config.ranks[s.group]
        cost = {f: lut.entries[LayerChoice(s, f, None if f == "dense" else r).key()].seconds for f in FORMS}
        fastest = min(cost.values())
        # among forms within the noise margin of the fastest, the one with the fewest weight bytes: an
        # isolated layer runs with its weights hot in cache, so the LUT under-rates small weights end to end
        near = [f for f in ("shared_basis", "low_rank", "dense") if cost[f] <= (1 + MARGIN) * fastest]
        kernels[name] = near[0]
        why[name] = {"shape": s.key(), "rank": r, **{f: cost[f] for f in FORMS}, "chosen": kernels[name]}
    return kernels, why


def time_variants(dirs: dict[str, Path], quick: bool, repeats: int) -> dict[str, list[float]]:
    proto = Protocol(rounds=6 if quick else 15, runs_per_round=10 if quick else 20)
    opts = SessionOptions(threads=1, spinning=False)
    sessions = {k: open_session(d, opts, "onnxruntime-cpu") for k, d in dirs.items()}
    out: dict[str, list[float]] = {k: [] for k in dirs}
    for rep in range(repeats):
        runners = []
        for s in sessions.values():
            feeds = s.make_feeds(seed=rep)
            for k in feeds:
                if k == "class_labels":
                    feeds[k] = feeds[k] % 10  # a legal label (the manifest records the range)
            runners.append(run_timer(lambda s=s, f=feeds: s.run(f), proto.clock))
        for k, t in zip(sessions, measure_interleaved(runners, proto, seed=rep), strict=True):
            out[k].append(t.seconds)
    for s in sessions.values():
        s.close()
    return out


def bench_model(name: str, model, work: Path, quick: bool, repeats: int, supernets: dict) -> dict:
    t0 = time.perf_counter()
    sn = supernets[name] = model_to_supernet(model, max_rank=256, als_iters=3)
    sn_dir = sn.save(work / f"{name}-supernet")
    # the rank option nearest half of min(m1, m2): plans (and export) accept only a type's rank options
    config = SubnetConfig({t.name: min(t.rank_options, key=lambda r, t=t: (abs(r - min(t.m1, t.m2) // 2), r))
                           for t in sn.types})
    chosen, why = per_layer_choice(sn, config, work / f"{name}-lut.json", quick)
    variants = {f: uniform_kernels(sn, config, f) for f in FORMS}
    variants["per_layer"] = chosen
    dirs, weights, parity = {}, {}, {}
    for v, kernels in variants.items():
        plan = Plan(supernet={"path": str(sn_dir), "sha256": sn.content_hash}, subnet=config.to_json(),
                    kernels=kernels, inputs={"batch": 1})
        m = export(plan, "onnx", work / f"{name}-{v}")
        dirs[v] = work / f"{name}-{v}"
        weights[v] = m.weights["onnx_initializers"]["bytes"]
        parity[v] = max(p["rel"] for p in m.parity)
    lat = time_variants(dirs, quick, repeats)
    best_uniform = min(FORMS, key=lambda f: min(lat[f]))
    ratios = [p / u for p, u in zip(lat["per_layer"], lat[best_uniform], strict=True)]
    counts = {f: sum(1 for k in chosen.values() if k == f) for f in FORMS}
    return {"model": name, "layers": len(chosen), "per_layer_counts": counts, "ranks": config.ranks,
            "latency_s": lat, "weight_bytes": weights, "parity_rel": parity, "best_uniform": best_uniform,
            "per_layer_over_best_uniform": {"min": min(ratios), "median": float(np.median(ratios)),
                                            "max": max(ratios)},
            "passed": float(np.median(ratios)) <= TARGET, "lut_choice": why,
            "wall_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "kernel_forms.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results, supernets = [], {}
    with tempfile.TemporaryDirectory(prefix="kernels-bench-") as tmp:
        for name, model in models().items():
            results.append(bench_model(name, model, Path(tmp), args.quick, args.repeats, supernets))
        # saved in the temporary folder only: the paths say where they were, the hashes what they were
        prov = provenance(args, supernets, **{f"lut_{n}": Path(tmp) / f"{n}-lut.json" for n in supernets})
    from fine_deploy.runtime.backends import runtime_versions

    print(f"{'model':<12} {'variant':<13} {'latency ms (min..max of repeats)':<34} {'weight KiB':>10}")
    for r in results:
        for v in (*FORMS, "per_layer"):
            lat = r["latency_s"][v]
            span = f"{min(lat) * 1e3:8.3f} .. {max(lat) * 1e3:8.3f}"
            print(f"{r['model']:<12} {v:<13} {span:<34} {r['weight_bytes'][v] / 1024:>10.1f}")
        q = r["per_layer_over_best_uniform"]
        print(f"{r['model']:<12} per-layer / best uniform ({r['best_uniform']}): median {q['median']:.3f} "
              f"(repeats {q['min']:.3f}..{q['max']:.3f}), target <= {TARGET}: {'PASS' if r['passed'] else 'FAIL'}; "
              f"choice {r['per_layer_counts']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from fine_deploy.fileio import atomic_write_json

    atomic_write_json(args.json, {"schema": 1, "benchmark": "kernel_forms", "provenance": prov,
                                  "quick": args.quick, "repeats": args.repeats,
                                  "margin": MARGIN, "target": TARGET, "versions": runtime_versions(),
                                  "results": results})
    print(f"wrote {args.json}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
