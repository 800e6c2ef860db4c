"""What the benchmarks that walk the user's path share: the CLI run as a user runs it, and `bench`'s statistic."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def fine_deploy(env: dict, *args: str) -> tuple[str, float]:
    """Run the `fine-deploy` console script (a process of its own); its output and wall seconds. Exits on failure."""
    exe = Path(sys.executable).parent / "fine-deploy"
    t0 = time.perf_counter()
    out = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"fine-deploy {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr, time.perf_counter() - t0


def bench_medians(dirs: list[Path]) -> list[float]:
    """`fine-deploy bench`'s median of each export at the protocol plans promise (runtime.timing.PREDICTION:
    1 thread, 150 runs in turns of 10, all exports interleaved), what it does by default for exports of plans."""
    from fine_deploy.bench.run import bench
    from fine_deploy.runtime.timing import PREDICTION

    r = bench(dirs, runs=PREDICTION.samples, warmup=PREDICTION.warmup, threads=PREDICTION.threads,
              block=PREDICTION.runs_per_round, progress=False, show=False, calibrate=False, measure_mem=False)
    return [m.stats["median"] for m in r.models]
