"""How often does `fine-deploy report` cry wolf, and how often does it catch a real slowdown?

Builds two real ONNX models: A (K chained size×size MatMuls) and B (K+1 of them: +10% work, a bit
less in wall time because of fixed per-run overhead). Each comparison is one `bench` call that
times A, A again (a second session of the same file) and B, interleaved run by run; then
`compare` judges A' against A (any "regressed" is a false positive) and B against A (anything
but "regressed" is a miss), on wall time and on process CPU time, paired by round and unpaired.
Prints a table and writes JSON.

    python benchmarks/regression_detector.py                       # the defaults behind the report
    python benchmarks/regression_detector.py --configs all --comparisons 40   # session options / run order
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fine_deploy.bench.run import bench
from fine_deploy.bench.stats import compare
from fine_deploy.bench.synthetic import write_matmul_chain
from fine_deploy.fileio import atomic_write_json

CONFIGS = {
    "interleaved, spinning off": dict(order="interleaved", spinning=False),
    "interleaved, spinning on": dict(order="interleaved", spinning=True),
    "sequential, spinning off": dict(order="sequential", spinning=False),
}


def run_config(
    a: Path, b: Path, comparisons: int, runs: int, threshold: float, threads: int | None, **kw: object
) -> dict:
    out = {}
    samples = []
    t0 = time.perf_counter()
    for _ in range(comparisons):
        r = bench(
            [a, a, b],
            runs=runs,
            warmup=3,
            threads=threads,
            labels=["A", "A'", "B"],
            progress=False,
            show=False,
            calibrate=False,
            **kw,
        )
        samples.append(
            {
                "wall": [np.asarray(m.samples_s) for m in r.models],
                "cpu": [np.asarray(m.cpu_samples_s) for m in r.models],
            }
        )
    elapsed = time.perf_counter() - t0
    for metric in ("wall", "cpu"):
        for method in ("paired", "unpaired"):
            key = f"{metric} time, {method}"
            out[key] = _rates([s[metric] for s in samples], threshold, method == "paired")
            out[key].update(seconds=elapsed, metric=metric, method=method, **{k: v for k, v in kw.items()})
    return out


def _rates(samples: list[list[np.ndarray]], threshold: float, paired: bool) -> dict:
    verdicts_aa, verdicts_ab, ratios_aa, ratios_ab = [], [], [], []
    for i, (A, A2, B) in enumerate(samples):
        aa = compare(A, A2, threshold=threshold, seed=i, paired=paired)
        ab = compare(A, B, threshold=threshold, seed=i, paired=paired)
        verdicts_aa.append(aa.verdict)
        verdicts_ab.append(ab.verdict)
        ratios_aa.append(aa.ratio)
        ratios_ab.append(ab.ratio)
    comparisons = len(samples)
    fp = verdicts_aa.count("regressed")
    det = verdicts_ab.count("regressed")
    return {
        "comparisons": comparisons,
        "runs_per_model": int(samples[0][0].size),
        "false_positives": fp,
        "false_positive_rate": fp / comparisons,
        "detections": det,
        "detection_rate": det / comparisons,
        "aa_verdicts": {v: verdicts_aa.count(v) for v in sorted(set(verdicts_aa))},
        "ab_verdicts": {v: verdicts_ab.count(v) for v in sorted(set(verdicts_ab))},
        "aa_ratio_p50_p99": [float(np.median(ratios_aa)), float(np.percentile(ratios_aa, 99))],
        "ab_ratio_min_p50": [float(np.min(ratios_ab)), float(np.median(ratios_ab))],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comparisons", type=int, default=100)
    ap.add_argument("--runs", type=int, default=60, help="timed runs per model per comparison")
    ap.add_argument("--depth", type=int, default=10, help="MatMuls in A; B has one more (+10%% work)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="0: the runtime's default")
    ap.add_argument("--configs", choices=["default", "all"], default="default")
    ap.add_argument("--json", default="benchmarks/results/regression_detector.json")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    configs = CONFIGS if args.configs == "all" else {k: CONFIGS[k] for k in list(CONFIGS)[:1]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        a = write_matmul_chain(Path(tmp) / "a.onnx", args.depth, args.size, rows=args.size)
        b = write_matmul_chain(Path(tmp) / "b.onnx", args.depth + 1, args.size, rows=args.size, seed=1)
        for name, kw in configs.items():
            res = run_config(a, b, args.comparisons, args.runs, args.threshold, args.threads or None, **kw)
            for method, r in res.items():
                results[f"{name}, {method}"] = r
            print(f"{name}: done in {r['seconds']:.1f} s", file=sys.stderr)

    table = Table(
        title=f"A/A and A/B(+{100 / args.depth:.0f}% work) at threshold {args.threshold:.0%}, "
        f"{args.size}x{args.size} MatMul chain, {args.runs} runs/model"
    )
    for col in (
        "config",
        "comparisons",
        "A/A false pos.",
        "A/B detected",
        "A/A ratio p50/p99",
        "A/B ratio min/p50",
        "seconds",
    ):
        table.add_column(col, justify="left" if col == "config" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            str(r["comparisons"]),
            f"{r['false_positives']} ({r['false_positive_rate']:.1%})",
            f"{r['detections']} ({r['detection_rate']:.1%})",
            "{:.3f} / {:.3f}".format(*r["aa_ratio_p50_p99"]),
            "{:.3f} / {:.3f}".format(*r["ab_ratio_min_p50"]),
            f"{r['seconds']:.1f}",
        )
    Console(width=160).print(table)
    from fine_deploy.runtime import machine_fingerprint

    out = {
        "schema": 1,
        "kind": "fine-deploy/regression-detector",
        "args": vars(args),
        "machine": machine_fingerprint(),
        "results": results,
    }
    atomic_write_json(args.json, out)
    print(f"wrote {args.json}")
    print(json.dumps({k: [v["false_positive_rate"], v["detection_rate"]] for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
