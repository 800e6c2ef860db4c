"""How often does `fine-deploy report` cry wolf, and how often does it catch a real slowdown?

Three real ONNX models: A (K chained size×size MatMuls), B5 (K+1: +5% work) and B10 (K+2: +10% work).
Two modes, both in one run:

separate  the user's CI mode: every measurement is its own `fine-deploy bench` process (a CLI subprocess,
          like a baseline stored from main and a PR's run minutes or days later); then `report` (its API,
          the function the CLI calls) compares the files. First H processes of A make the A/A history
          stored beside the baseline (`report --history`); then per pair i: a fresh baseline process of A,
          and one process each of A, B10 and B5 (in shuffled order), each reported against baseline i.
          A/A "regressed" is a false alarm; B10/B5 anything but "regressed" is a miss; "inconclusive"
          (exit 3) is counted apart. The same files are also judged without history (report's defaults)
          and by the old unpaired wall-time rule, for reference.
inrun     today's interleaved mode: one `bench` call times A, A again, B10 and B5 round by round; the
          paired report judges A' / B10 / B5 against A.

The load average (1/5/15 min) is sampled before every pair and recorded. Prints a table, writes JSON
(git commit, model hashes, arguments, load) and a PNG of the verdict shares.

    python benchmarks/regression_detector.py                     # 100 pairs each + 100 in-run comparisons
    python benchmarks/regression_detector.py --deadline 10:50 --inrun-deadline 10:54   # local times
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from provenance import provenance

from fine_deploy.bench.report import build_report
from fine_deploy.bench.run import bench
from fine_deploy.bench.schema import load_bench
from fine_deploy.bench.stats import compare
from fine_deploy.bench.synthetic import write_matmul_chain
from fine_deploy.fileio import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = {"A/A": 0, "+10%": 2, "+5%": 1}  # extra MatMuls over A's depth
TARGETS = {"A/A false alarms": ("<=", 0.01), "+10% caught": (">=", 0.95), "+5% caught": (">=", 0.80),
           "inconclusive share": ("<=", 0.10)}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _bench_process(model_dir: Path, out: Path, runs: int, threads: int) -> None:
    """One `fine-deploy bench` in a process of its own (this checkout's package)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "fine_deploy.cli", "bench", str(model_dir), "--runs", str(runs),
           "--threads", str(threads), "--json", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def _shares(verdicts: list[str]) -> dict:
    n = len(verdicts)
    counts = {v: verdicts.count(v) for v in ("regressed", "unchanged", "improved", "inconclusive")}
    return {"pairs": n, "verdicts": counts,
            "regressed_rate": counts["regressed"] / n if n else None,
            "inconclusive_rate": counts["inconclusive"] / n if n else None}


def run_separate(dirs: dict[str, Path], work: Path, pairs: int, history: int, runs: int, threads: int,
                 threshold: float, deadline: float | None) -> dict:
    hist_dir = work / "history"
    hist_dir.mkdir(parents=True, exist_ok=True)
    loads: list[list[float]] = [_load()]
    t0 = time.perf_counter()
    for i in range(history):
        _bench_process(dirs["A"], hist_dir / f"a-{i}.json", runs, threads)
    hist = sorted(hist_dir.glob("*.json"))
    rows: dict[str, dict[str, list]] = {c: {"history": [], "default": [], "old_rule": [], "ratio": []}
                                        for c in CONDITIONS}
    rng = random.Random(0)
    done = 0
    for i in range(pairs):
        if deadline is not None and time.time() >= deadline:
            break
        loads.append(_load())
        base = work / f"base-{i}.json"
        _bench_process(dirs["A"], base, runs, threads)
        order = list(CONDITIONS)
        rng.shuffle(order)
        for cond in order:
            cur = work / f"{cond.replace('/', '').replace('%', '').replace('+', 'p')}-{i}.json"
            _bench_process(dirs[cond], cur, runs, threads)
            with_h = build_report(base, cur, threshold, history=hist).comparisons[0]
            default = build_report(base, cur, threshold).comparisons[0]
            b, c = load_bench(base).models[0], load_bench(cur).models[0]
            old = compare(b.samples_s, c.samples_s, threshold=threshold, seed=i)  # the "before"
            r = rows[cond]
            r["history"].append(with_h.verdict)
            r["default"].append(default.verdict)
            r["old_rule"].append(old.verdict)
            r["ratio"].append(with_h.ratio)
        done += 1
        print(f"separate: pair {done}/{pairs} load {loads[-1]}", file=sys.stderr, flush=True)
    loads.append(_load())
    noise = build_report(hist[0], hist[1], threshold, history=hist).comparisons[0].decided_by["noise_model"]
    out = {"pairs_done": done, "pairs_asked": pairs, "history_runs": history, "runs_per_bench": runs,
           "seconds": time.perf_counter() - t0, "noise_model": noise, "load_samples": loads, "conditions": {}}
    for cond, r in rows.items():
        out["conditions"][cond] = {
            "with_history": _shares(r["history"]),
            "report_defaults_no_history": _shares(r["default"]),
            "old_unpaired_wall_rule": _shares(r["old_rule"]),
            "ratio_p1_p50_p99": [float(np.percentile(r["ratio"], q)) for q in (1, 50, 99)] if r["ratio"] else None,
        }
    return out


def run_inrun(models: dict[str, Path], comparisons: int, runs: int, threads: int, threshold: float,
              deadline: float | None) -> dict:
    verdicts: dict[str, list[str]] = {c: [] for c in CONDITIONS}
    loads = [_load()]
    t0 = time.perf_counter()
    done = 0
    for _ in range(comparisons):
        if deadline is not None and time.time() >= deadline:
            break
        loads.append(_load())
        r = bench([models["A"], models["A/A"], models["+10%"], models["+5%"]], runs=runs, warmup=3, threads=threads,
                  labels=["A", "A'", "B10", "B5"], progress=False, show=False, measure_mem=False)
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "run.json"
            atomic_write_json(f, r.to_dict())
            for cond, label in zip(CONDITIONS, ("A'", "B10", "B5"), strict=True):
                verdicts[cond].append(build_report(f"{f}::A", f"{f}::{label}", threshold).comparisons[0].verdict)
        done += 1
    loads.append(_load())
    return {"comparisons_done": done, "comparisons_asked": comparisons, "runs_per_model": runs,
            "seconds": time.perf_counter() - t0, "load_samples": loads,
            "conditions": {c: _shares(v) for c, v in verdicts.items()}}


def _targets(conds: dict, key: str | None) -> dict:
    def get(c: str) -> dict:
        return conds[c][key] if key else conds[c]

    n_all = sum(get(c)["pairs"] for c in CONDITIONS)
    inc = sum(get(c)["verdicts"]["inconclusive"] for c in CONDITIONS)
    got = {"A/A false alarms": get("A/A")["regressed_rate"], "+10% caught": get("+10%")["regressed_rate"],
           "+5% caught": get("+5%")["regressed_rate"], "inconclusive share": inc / n_all if n_all else None}
    out = {}
    for k, v in got.items():
        op, target = TARGETS[k]
        out[k] = {"value": v, "target": f"{op} {target:.0%}",
                  "ok": v is not None and (v <= target if op == "<=" else v >= target)}
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("separate runs, --history", result["separate"]["conditions"], "with_history"),
              ("separate runs, report defaults", result["separate"]["conditions"], "report_defaults_no_history"),
              ("separate runs, old wall rule", result["separate"]["conditions"], "old_unpaired_wall_rule"),
              ("one run, interleaved", result["inrun"]["conditions"], None)]
    colors = {"regressed": "#d62728", "inconclusive": "#bcbd22", "unchanged": "#7f7f7f", "improved": "#2ca02c"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), sharey=True)
    for ax, (title, conds, key) in zip(axes, panels, strict=True):
        bottom = np.zeros(len(CONDITIONS))
        for v, color in colors.items():
            vals = []
            for c in CONDITIONS:
                s = conds[c][key] if key else conds[c]
                vals.append(s["verdicts"][v] / s["pairs"] if s["pairs"] else 0)
            ax.bar(list(CONDITIONS), vals, bottom=bottom, color=color, label=v)
            bottom += np.array(vals)
        ax.axhline(0.01, color="k", lw=0.6, ls=":")
        ax.axhline(0.95, color="k", lw=0.6, ls="--")
        ax.axhline(0.80, color="k", lw=0.6, ls="-.")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("share of pairs")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("report verdicts: A/A, +10% and +5% work (targets: A/A regressed ≤1%, +10% ≥95%, +5% ≥80%)",
                 fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _clock(hhmm: str | None) -> float | None:
    """Today's HH:MM (local time) as a timestamp."""
    if not hhmm:
        return None
    hh, mm = (int(x) for x in hhmm.split(":"))
    return dt.datetime.now().replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100, help="separate-run pairs per condition")
    ap.add_argument("--history", type=int, default=20, help="separate A/A runs stored beside the baseline")
    ap.add_argument("--runs", type=int, default=120, help="timed rounds per separate bench process")
    ap.add_argument("--inrun", type=int, default=100, help="in-run interleaved comparisons")
    ap.add_argument("--inrun-runs", type=int, default=60, help="rounds per in-run comparison")
    ap.add_argument("--depth", type=int, default=20, help="MatMuls in A; +5%% and +10%% add 1 and 2")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deadline", default=None, help="HH:MM (local): start no new separate-run pair after it")
    ap.add_argument("--inrun-deadline", default=None, help="HH:MM (local): start no new in-run comparison after it")
    ap.add_argument("--json", default="benchmarks/results/regression_detector.json")
    ap.add_argument("--png", default="benchmarks/results/regression_detector.png")
    args = ap.parse_args(argv)
    deadline, inrun_deadline = _clock(args.deadline), _clock(args.inrun_deadline)

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dirs, files = {}, {}
        for cond, extra in {"A": 0, **CONDITIONS}.items():
            # A/A's current is A itself; each condition gets a folder so `bench` names it like an export
            if cond == "A/A":
                dirs[cond], files[cond] = dirs["A"], files["A"]
                continue
            name = {"A": "a", "+10%": "b10", "+5%": "b5"}[cond]
            files[cond] = write_matmul_chain(work / name / "model.onnx", args.depth + extra, args.size,
                                             rows=args.size, seed=0)
            dirs[cond] = work / name
        hashes = {c: hashlib.sha256(p.read_bytes()).hexdigest() for c, p in files.items()}
        # the user's mode first: it is what the gate relies on; the in-run mode gets its own deadline
        separate = run_separate(dirs, work / "runs", args.pairs, args.history, args.runs, args.threads,
                                args.threshold, deadline)
        inrun = run_inrun(files, args.inrun, args.inrun_runs, args.threads, args.threshold, inrun_deadline)

    from fine_deploy.runtime import machine_fingerprint

    all_loads = [x[0] for x in separate["load_samples"] + inrun["load_samples"]]
    prov = provenance(args, None, **{f"model {c}": h for c, h in hashes.items()})
    result = {
        "schema": 2,
        "kind": "fine-deploy/regression-detector",
        "provenance": prov,
        "started": started,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": prov["git_commit"],
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "args": vars(args),
        "model_sha256": hashes,
        "machine": machine_fingerprint(),
        "load_1min": {"min": min(all_loads), "mean": float(np.mean(all_loads)), "max": max(all_loads)},
        "targets_separate_with_history": _targets(separate["conditions"], "with_history"),
        "targets_inrun": _targets(inrun["conditions"], None),
        "separate": separate,
        "inrun": inrun,
    }
    atomic_write_json(args.json, result)
    _plot(result, Path(args.png))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"report verdicts at ±{args.threshold:.0%}: {separate['pairs_done']} separate-run pairs, "
                        f"{inrun['comparisons_done']} in-run comparisons; load(1 min) "
                        f"{result['load_1min']['min']}–{result['load_1min']['max']}")
    for col in ("mode", "A/A regressed", "A/A inconcl.", "+10% regressed", "+10% inconcl.", "+5% regressed",
                "+5% inconcl."):
        table.add_column(col, justify="left" if col == "mode" else "right")
    modes = [("separate, --history", separate["conditions"], "with_history"),
             ("separate, defaults", separate["conditions"], "report_defaults_no_history"),
             ("separate, old wall rule", separate["conditions"], "old_unpaired_wall_rule"),
             ("in-run interleaved", inrun["conditions"], None)]
    for name, conds, key in modes:
        cells = []
        for c in CONDITIONS:
            s = conds[c][key] if key else conds[c]
            n = s["pairs"] or 1
            cells += [f"{s['verdicts']['regressed']}/{s['pairs']} ({s['verdicts']['regressed'] / n:.0%})",
                      f"{s['verdicts']['inconclusive']}/{s['pairs']}"]
        table.add_row(name, *cells)
    Console(width=160).print(table)
    print(json.dumps({"separate_with_history": result["targets_separate_with_history"],
                      "inrun": result["targets_inrun"]}, indent=1))
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
