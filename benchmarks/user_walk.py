"""A new user's walk on this host, with the CLI only: profile -> plan at 5 latency budgets -> export -> time.

Every step is one `fine-deploy` process on a fresh user cache (nothing measured before is reused):
1. `fine-deploy profile --device host` (the LUT of the default supernet's layers, then its whole subnets),
2. `fine-deploy plan --device host --mem 2GB -o full.json` and its export: the full model, timed first so
   that the budgets are fractions of what the full model measures (default 0.45, 0.55, 0.65, 0.75, 0.9:
   the fastest subnet of the default supernet measures ~0.41x the full model, so `plan` refuses 0.4x, saying
   the smallest feasible budget),
3. `fine-deploy plan --device host --mem 2GB --latency B` and `fine-deploy export --format onnx` per budget,
4. every export timed by a plain onnxruntime loop written here (not fine-deploy's runtime): an
   InferenceSession at the plan's stated intra-op threads, random inputs of the manifest's shapes, the median
   of `--runs` wall-clock runs, all models interleaved in turns of 10 consecutive runs (run by run, each
   model's run starts with caches the previous model filled: the full model read 1.25x slower that way than
   alone); and by `fine-deploy bench` on the five, which measures them as their plans state.

Target (issue 15): >= 4 of 5 budgets measured <= 1.05 x budget, median measured/budget >= 0.85.

    python benchmarks/user_walk.py [--fractions 0.45,0.55,0.65,0.75,0.9] [--runs 150] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402
from steps import fine_deploy as cli  # noqa: E402

TARGET_OVER, TARGET_HITS, TARGET_MEDIAN = 1.05, 4, 0.85


def plain_ort_medians(dirs: list[Path], threads: int, runs: int, seed: int = 0, block: int = 10) -> list[float]:
    """Median wall seconds per run of each export, a plain onnxruntime loop, models interleaved in turns of
    `block` consecutive runs (a model's first run after another's meets caches that one filled)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sessions, feeds = [], []
    for d in dirs:
        manifest = json.loads((d / "manifest.json").read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sessions.append(ort.InferenceSession(str(d / manifest["model"]), so, providers=["CPUExecutionProvider"]))
        f = {}
        for spec in manifest["inputs"]:
            shape = spec["shape"]
            if "range" in spec:
                f[spec["name"]] = rng.integers(spec["range"][0], spec["range"][1], size=shape).astype(spec["dtype"])
            else:
                f[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
        feeds.append(f)
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(20):
            s.run(None, f)
    times = [[] for _ in dirs]
    for _ in range(-(-runs // block)):
        for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            for _ in range(block):
                t0 = time.perf_counter()
                s.run(None, f)
                times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="0.45,0.55,0.65,0.75,0.9")
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--mem", default="2GB")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "user_walk.json")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="user-walk-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FINE_DEPLOY_CACHE": str(work / "cache")}
    load = [os.getloadavg()[0]]
    t_start = time.perf_counter()
    steps = {}

    out, steps["profile_s"] = cli(env, "profile", "--device", "host")
    print(out.strip().splitlines()[-1] if out.strip() else "")
    _, steps["plan_full_s"] = cli(env, "plan", "--device", "host", "--mem", args.mem, "-o", str(work / "full.json"))
    _, steps["export_full_s"] = cli(env, "export", "--plan", str(work / "full.json"), "--format", "onnx",
                                    "-o", str(work / "full"))
    full_plan = json.loads((work / "full.json").read_text())
    proto = full_plan["predicted"]["cost_model"]["latency_protocol"]
    threads = int(proto["threads"])
    full_measured = plain_ort_medians([work / "full"], threads, args.runs)[0]
    budgets = [f * full_measured for f in fractions]
    plans = []
    for i, b in enumerate(budgets):
        p, d = work / f"plan{i}.json", work / f"e{i}"
        _, tp = cli(env, "plan", "--device", "host", "--mem", args.mem, "--latency", f"{b * 1e6:.1f}us", "-o", str(p))
        _, te = cli(env, "export", "--plan", str(p), "--format", "onnx", "-o", str(d))
        plans.append((p, d, tp, te))
    load.append(os.getloadavg()[0])
    dirs = [work / "full"] + [d for _, d, _, _ in plans]
    measured = plain_ort_medians(dirs, threads, args.runs, seed=1)
    bench_json = work / "bench.json"
    bench_out, _ = cli(env, "bench", *map(str, dirs), "--runs", str(args.runs), "--json", str(bench_json))
    bench = {m["path"]: m["stats"]["median"] for m in json.loads(bench_json.read_text())["models"]}
    load.append(os.getloadavg()[0])

    rows = []
    for f, b, (p, d, tp, te), m in zip(fractions, budgets, plans, measured[1:], strict=True):
        pl = json.loads(p.read_text())
        rows.append({"fraction": f, "budget_s": b, "predicted_s": pl["predicted"]["latency_s"], "measured_s": m,
                     "measured_over_budget": m / b, "bench_median_s": bench[str(d)],
                     "bench_over_budget": bench[str(d)] / b, "plan_wall_s": tp, "export_wall_s": te,
                     "subnet": pl["subnet"], "kernels": pl["kernels"]})
    ratios = np.array([r["measured_over_budget"] for r in rows])
    hits = int(np.sum(ratios <= TARGET_OVER))
    summary = {"hits": hits, "budgets": len(rows), "median_measured_over_budget": float(np.median(ratios)),
               "max_measured_over_budget": float(ratios.max()),
               "bench_hits": int(sum(r["bench_over_budget"] <= TARGET_OVER for r in rows)),
               "full_model_measured_s": full_measured, "full_model_remeasured_s": measured[0],
               "full_model_predicted_s": full_plan["predicted"]["latency_s"]}
    ok = hits >= TARGET_HITS and summary["median_measured_over_budget"] >= TARGET_MEDIAN

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"user walk: profile -> plan -> export -> plain onnxruntime ({threads} thread, median of "
                        f"{args.runs}, interleaved)")
    for c in ("budget", "× full", "predicted", "measured", "measured/budget", "bench/budget"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(f"{r['budget_s'] * 1e6:.0f} us", f"{r['fraction']:.2f}", f"{r['predicted_s'] * 1e6:.0f} us",
                      f"{r['measured_s'] * 1e6:.0f} us", f"{r['measured_over_budget']:.3f}",
                      f"{r['bench_over_budget']:.3f}")
    Console().print(table)
    print(f"full model: predicted {summary['full_model_predicted_s'] * 1e6:.0f} us, measured "
          f"{full_measured * 1e6:.0f} us (again in the interleaved run: {measured[0] * 1e6:.0f} us)")
    print(f"{hits}/{len(rows)} budgets within {TARGET_OVER}x, median measured/budget "
          f"{summary['median_measured_over_budget']:.3f} -> {'MET' if ok else 'NOT MET'} "
          f"(targets >= {TARGET_HITS}/5, median >= {TARGET_MEDIAN}); load average {load}")

    from fine_deploy.fileio import atomic_write_json

    lut = work / "cache" / "measured" / "host-onnxruntime-cpu.json"

    atomic_write_json(args.json, {
        "benchmark": "user_walk", "schema": 1, "ok": ok,
        "provenance": provenance(vars(args) | {"work": str(work)}, "default", lut if lut.exists() else None),
        "protocol": {"tool": "plain onnxruntime loop in this script", "threads": threads, "runs": args.runs,
                     "statistic": "median wall time (perf_counter) of one run",
                     "order": "interleaved, turns of 10 runs",
                     "warmup": 20, "plan_protocol": proto["description"]},
        "targets": {"over": TARGET_OVER, "hits": TARGET_HITS, "median": TARGET_MEDIAN},
        "steps_wall_s": steps | {"total_s": time.perf_counter() - t_start}, "load_average": load,
        "summary": summary, "rows": rows,
    })
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
